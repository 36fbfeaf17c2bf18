"""The dataset contract: raw ``(image, mask)`` pairs, checked, as torchvision tv_tensors."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from atrous.data.io import DataError, Palette, read_image, read_mask, read_raw_mask

IGNORE_INDEX = 255

#: What a mask means: ``multiclass`` one class index per pixel; ``binary`` two classes
#: (background 0, foreground 1) read from 0/255 or 0/1 masks; ``multilabel`` K classes that may
#: overlap, a (K, H, W) target of 0/1 per class (the ignore label kept).
Task = Literal["multiclass", "binary", "multilabel"]


def check_pair(
    image: np.ndarray,
    mask: np.ndarray,
    num_classes: int,
    ignore_index: int,
    name: str,
    multilabel: bool = False,
) -> None:
    """Raise a DataError naming ``name`` if the mask does not fit the image or the classes.

    A multilabel mask is (num_classes, H, W) of 0/1 and the ignore label; any other (H, W) of
    class indices and the ignore label.
    """
    if multilabel and (mask.ndim != 3 or mask.shape[0] != num_classes):
        raise DataError(
            f"{name}: a multilabel mask must be ({num_classes} classes, H, W), got {mask.shape}"
        )
    if not multilabel and mask.ndim != 2:
        raise DataError(
            f"{name}: mask must be one channel of class indices, got shape {mask.shape}"
        )
    if image.shape[:2] != mask.shape[-2:]:
        raise DataError(
            f"{name}: mask size {mask.shape[-1]}×{mask.shape[-2]} differs from image size "
            f"{image.shape[1]}×{image.shape[0]}"
        )
    values = np.unique(mask)
    top = 2 if multilabel else num_classes
    bad = values[((values < 0) | (values >= top)) & (values != ignore_index)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8])
        raise DataError(
            f"{name}: label values {shown} are outside [0, {top}) and are not the ignore "
            f"label {ignore_index} (atrous check-data names the option that reads such masks)"
        )


class SegmentationDataset(Dataset, abc.ABC):
    """Image/mask pairs with class names, a palette and an ignore label.

    Subclasses implement :meth:`load` (raw arrays, labels already mapped to train ids) and
    :meth:`name`; ``dataset[i]`` checks the pair and returns ``(tv_tensors.Image uint8 (3, H, W),
    tv_tensors.Mask int64 (H, W))``. Images of other band counts are float32 (C, H, W) on [0, 1];
    multilabel masks are (K, H, W).
    """

    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    task: Task = "multiclass"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image (or (H, W, C) float32) and (H, W) integer mask of class indices
        / ignore label ((K, H, W) of 0/1 / ignore label for multilabel datasets)."""

    @abc.abstractmethod
    def name(self, index: int) -> str:
        """The sample's file name (or id), for messages."""

    def load_mask(self, index: int) -> np.ndarray:
        """The (H, W) mask alone (readers of files skip decoding the image)."""
        return self.load(index)[1]

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, mask = self.load(index)
        multilabel = self.task == "multilabel"
        check_pair(image, mask, self.num_classes, self.ignore_index, self.name(index), multilabel)
        return (
            tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)),
            tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64))),
        )


class FilePairs(SegmentationDataset):
    """A dataset of (image file, mask file) pairs; subclasses map raw mask values to classes."""

    def __init__(self, pairs: list[tuple[Path, ...]], description: str) -> None:
        if not pairs:
            raise DataError(f"{description}: no image/mask pairs found")
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return str(self.pairs[index][0])

    def map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw mask values → class indices (identity by default)."""
        if raw.ndim == 3:
            raise DataError(f"{path}: mask is RGB; this dataset expects class indices")
        return raw

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return read_image(self.pairs[index][0]), self.load_mask(index)

    def load_mask(self, index: int) -> np.ndarray:
        mask_path = self.pairs[index][1]
        return self.map_labels(read_mask(mask_path), mask_path)

    def raw_mask(self, index: int) -> tuple[np.ndarray, Palette | None]:
        """The mask file as stored, before :meth:`map_labels` (see :func:`read_raw_mask`)."""
        return read_raw_mask(self.pairs[index][1])


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else a DataError saying what was expected there."""
    if not path.is_dir():
        raise DataError(f"{what} not found: {path} is not a directory")
    return path


def read_id_list(path: Path) -> list[str]:
    """Ids from a split list file (one per line; VOC/SBD ``ImageSets`` style)."""
    if not path.is_file():
        raise DataError(f"split list not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
