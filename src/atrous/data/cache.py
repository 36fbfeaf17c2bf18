"""Decode once: keep each decoded image/mask pair as raw arrays on disk, so later epochs (and every
data-loading worker) read them back without decoding JPEG/PNG or re-mapping labels again."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from atrous.data.base import SegmentationDataset


def dataset_fingerprint(dataset: SegmentationDataset) -> str:
    """A short id of what the dataset yields: its reader and settings (scalar attributes such as
    a scene size or seed), classes, samples and, for files, their sizes and modification times.
    A cache folder can hold several datasets and splits, and a changed file is decoded again."""
    digest = hashlib.sha256(type(dataset).__qualname__.encode())
    attributes = getattr(dataset, "__dict__", {})
    settings = {k: v for k, v in attributes.items() if isinstance(v, (bool, int, float, str))}
    digest.update(repr(sorted(settings.items())).encode())
    digest.update("\0".join(dataset.classes).encode())
    for index in range(len(dataset)):
        digest.update(b"\0" + dataset.name(index).encode())
    for files in getattr(dataset, "pairs", ()):
        for path in files:
            if isinstance(path, (str, os.PathLike)):
                stat = Path(path).stat()
                digest.update(f"\0{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _save_atomically(path: Path, array: np.ndarray) -> None:
    descriptor, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.save(handle, array)
        os.chmod(partial, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


class DecodedCache(SegmentationDataset):
    """``dataset`` whose pairs are decoded on first access and read back raw afterwards.

    Files live in ``folder/<fingerprint>/`` (about H·W·4 bytes per pair) and are written
    atomically, so concurrent workers and processes can share the folder and a killed run
    leaves no half-written array behind. Samples are still checked on every access.
    """

    def __init__(self, dataset: SegmentationDataset, folder: str | Path) -> None:
        self.dataset = dataset
        self.classes = dataset.classes
        self.palette = dataset.palette
        self.ignore_index = dataset.ignore_index
        self.task = dataset.task
        self.folder = Path(folder) / dataset_fingerprint(dataset)
        self.folder.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.dataset)

    def name(self, index: int) -> str:
        return self.dataset.name(index)

    def load_mask(self, index: int) -> np.ndarray:
        mask_path = self.folder / f"{index:07d}.mask.npy"
        return np.load(mask_path) if mask_path.is_file() else self.dataset.load_mask(index)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path = self.folder / f"{index:07d}.image.npy"
        mask_path = self.folder / f"{index:07d}.mask.npy"
        if image_path.is_file() and mask_path.is_file():
            return np.load(image_path), np.load(mask_path)
        image, mask = self.dataset.load(index)
        if mask.min(initial=0) >= 0 and mask.max(initial=0) <= 255:
            mask = mask.astype(np.uint8)  # a quarter of int64's bytes; checked on access anyway
        _save_atomically(image_path, np.ascontiguousarray(image))
        _save_atomically(mask_path, mask)
        return image, mask
