"""Datasets (VOC/SBD, Cityscapes, ADE20K, your own folders, built-in scenes) and transforms."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from atrous.data.ade20k import ADE20K
from atrous.data.base import IGNORE_INDEX, SegmentationDataset, Task, check_pair
from atrous.data.cache import DecodedCache
from atrous.data.cityscapes import Cityscapes
from atrous.data.folder import FolderDataset, folder_classes
from atrous.data.io import DataError, read_image, read_mask
from atrous.data.synthetic import SyntheticScenes
from atrous.data.transforms import RandomScale, normalisation, training_transform
from atrous.data.voc import VOCAugSegmentation, VOCSegmentation
from atrous.errors import UsageError, require_at_least

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
    # What the masks mean (folder datasets): multiclass (class indices), binary (0/255 or 0/1
    # masks → background 0 / foreground 1), multilabel (one 0/255 mask per class, classes may
    # overlap: masks/<split>/<class name>/<stem>.png).
    task: Task = "multiclass"
    reduce_zero_label: bool = False  # folder masks: 0 = unlabelled → ignore, 1..N → 0..N-1
    in_channels: int = 3  # image bands; not 3: folder dataset, float images (multi-band TIFF)

    def __post_init__(self) -> None:
        require_at_least("data", 1, crop_size=self.crop_size, in_channels=self.in_channels)
        require_at_least("data", 0, workers=self.workers, color_jitter=self.color_jitter)
        sizes = {"synthetic_train": self.synthetic_train, "synthetic_val": self.synthetic_val}
        require_at_least("data", 1, synthetic_size=self.synthetic_size, **sizes)
        require_at_least("data", 0, scale_step=self.scale_step)
        if not 0 < self.scale_min <= self.scale_max:
            raise UsageError(
                f"data.scale_min and data.scale_max need 0 < scale_min ≤ scale_max, got "
                f"{self.scale_min} and {self.scale_max}"
            )


def build_dataset(config: DataConfig, split: Literal["train", "val"]) -> SegmentationDataset:
    """The dataset of ``config`` for the training or the validation split (decoded once into
    ``config.cache_dir`` when that is set)."""
    dataset = _read_dataset(config, split)
    return DecodedCache(dataset, config.cache_dir) if config.cache_dir else dataset


def _read_dataset(config: DataConfig, split: Literal["train", "val"]) -> SegmentationDataset:
    name = config.dataset
    split_name = config.train_split if split == "train" else config.val_split
    _check_folder_options(config)
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
        return FolderDataset(
            config.root,
            split_name or None,
            task=config.task,
            reduce_zero_label=config.reduce_zero_label,
            in_channels=config.in_channels,
        )
    raise ValueError(
        f"unknown dataset {name!r}; available: synthetic, voc, voc_aug, cityscapes, ade20k, folder"
    )


def _check_folder_options(config: DataConfig) -> None:
    """The label and band options are the folder dataset's (ADE20K always reduces zero)."""
    if config.dataset == "folder":
        return
    if config.task != "multiclass":
        raise ValueError(
            f"data.task {config.task!r} needs dataset 'folder', not {config.dataset!r}"
        )
    if config.in_channels != 3:
        raise ValueError(
            f"data.in_channels {config.in_channels} needs dataset 'folder' (multi-band TIFF "
            f"images); {config.dataset!r} is RGB"
        )
    if config.reduce_zero_label and config.dataset != "ade20k":
        raise ValueError(
            f"data.reduce_zero_label is for dataset 'folder' (ade20k always reduces); "
            f"{config.dataset!r} has its own label mapping"
        )


def dataset_labels(
    config: DataConfig,
) -> tuple[tuple[str, ...] | None, tuple[tuple[int, int, int], ...] | None]:
    """Class names and palette of ``config``'s dataset, without reading its images.

    A folder dataset's come from its ``classes.yaml`` (read for ``config.task``: a binary one may
    have none); (None, None) when that is not at hand.
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
    root = Path(config.root or ".")
    if config.dataset == "folder" and (
        config.task == "binary" or (root / "classes.yaml").is_file()
    ):
        names, palette, _ = folder_classes(root, config.task)
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
    "Task",
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
