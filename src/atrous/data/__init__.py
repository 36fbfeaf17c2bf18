"""Datasets (VOC/SBD, Cityscapes, ADE20K, your own folders, built-in scenes) and transforms."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from atrous.data.ade20k import ADE20K
from atrous.data.base import IGNORE_INDEX, SegmentationDataset, check_pair
from atrous.data.cache import DecodedCache
from atrous.data.cityscapes import Cityscapes
from atrous.data.folder import FolderDataset, read_classes_file
from atrous.data.io import DataError, read_image, read_mask
from atrous.data.synthetic import SyntheticScenes
from atrous.data.transforms import RandomScale, normalisation, training_transform
from atrous.data.voc import VOCAugSegmentation, VOCSegmentation

DatasetName = Literal["synthetic", "voc", "voc_aug", "cityscapes", "ade20k", "folder"]


@dataclass
class DataConfig:
    """Which dataset to read and how to augment it (defaults: the paper's VOC recipe)."""

    dataset: DatasetName = "synthetic"  # which reader; "folder" is your own data
    root: str | None = None  # dataset folder (VOC2012, Cityscapes, ADE20K or your own)
    sbd_root: str | None = None  # SBD folder, for dataset "voc_aug" (trainaug)
    train_split: str = "train"  # split trained on ("voc_aug" ignores it: always trainaug)
    val_split: str = "val"  # split validated on
    crop_size: int = 513  # training crop (16k+1 aligns feature grids with pixel corners)
    scale_min: float = 0.5  # random scale range and step (paper: 0.5–2.0, step 0.25)
    scale_max: float = 2.0
    scale_step: float = 0.25  # 0: uniform in [scale_min, scale_max]
    flip: bool = True  # random left-right flip
    color_jitter: float = 0.0  # photometric jitter strength (0: off, as in the paper)
    workers: int = 2  # data-loading processes per training process
    synthetic_train: int = 2000  # built-in scenes: training images
    synthetic_val: int = 200  # built-in scenes: validation images
    synthetic_size: int = 128  # built-in scenes: side in pixels
    cache_dir: str | None = None  # decode once: keep decoded pairs here as raw arrays


def build_dataset(config: DataConfig, split: Literal["train", "val"]) -> SegmentationDataset:
    """The dataset of ``config`` for the training or the validation split (decoded once into
    ``config.cache_dir`` when that is set)."""
    dataset = _read_dataset(config, split)
    return DecodedCache(dataset, config.cache_dir) if config.cache_dir else dataset


def _read_dataset(config: DataConfig, split: Literal["train", "val"]) -> SegmentationDataset:
    name = config.dataset
    split_name = config.train_split if split == "train" else config.val_split
    if name == "synthetic":
        length = config.synthetic_train if split == "train" else config.synthetic_val
        # Disjoint seeds keep validation scenes out of training.
        return SyntheticScenes(length, config.synthetic_size, seed=1 if split == "train" else 2)
    if config.root is None:
        raise ValueError(f"dataset {name!r} needs data.root (the dataset folder)")
    if name == "voc":
        return VOCSegmentation(config.root, split_name)
    if name == "voc_aug":
        if split == "val":
            return VOCSegmentation(config.root, split_name)
        if config.sbd_root is None:
            raise ValueError("dataset 'voc_aug' needs data.sbd_root (the SBD folder)")
        return VOCAugSegmentation(config.root, config.sbd_root)
    if name == "cityscapes":
        return Cityscapes(config.root, split_name)
    if name == "ade20k":
        return ADE20K(config.root, split_name)
    if name == "folder":
        return FolderDataset(config.root, split_name or None)
    raise ValueError(
        f"unknown dataset {name!r}; available: synthetic, voc, voc_aug, cityscapes, ade20k, folder"
    )


def dataset_labels(
    config: DataConfig,
) -> tuple[tuple[str, ...] | None, tuple[tuple[int, int, int], ...] | None]:
    """Class names and palette of ``config``'s dataset, without reading its images.

    A folder dataset's come from its ``classes.yaml``; (None, None) when that is not at hand.
    """
    fixed = {
        "synthetic": SyntheticScenes,
        "voc": VOCSegmentation,
        "voc_aug": VOCSegmentation,
        "cityscapes": Cityscapes,
        "ade20k": ADE20K,
    }
    if config.dataset in fixed:
        reader = fixed[config.dataset]
        return reader.classes, reader.palette
    classes_file = Path(config.root or ".") / "classes.yaml"
    if config.dataset == "folder" and classes_file.is_file():
        names, palette, _ = read_classes_file(classes_file)
        return names, palette
    return None, None


__all__ = [
    "ADE20K",
    "IGNORE_INDEX",
    "Cityscapes",
    "DataConfig",
    "DataError",
    "DecodedCache",
    "FolderDataset",
    "RandomScale",
    "SegmentationDataset",
    "SyntheticScenes",
    "VOCAugSegmentation",
    "VOCSegmentation",
    "build_dataset",
    "check_pair",
    "dataset_labels",
    "normalisation",
    "read_image",
    "read_mask",
    "training_transform",
]
