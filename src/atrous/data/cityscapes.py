"""Cityscapes fine annotations: labelIds mapped to the 19 evaluated train ids, the rest ignored.

Layout: ``root/leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and
``root/gtFine/{split}/{city}/*_gtFine_labelIds.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atrous.data.base import IGNORE_INDEX, FilePairs, require_dir
from atrous.data.io import DataError
from atrous.data.palettes import CITYSCAPES_CLASSES, CITYSCAPES_LABEL_IDS, CITYSCAPES_PALETTE

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def label_id_lut() -> np.ndarray:
    """256-entry table: labelId → train id, 255 for every id not evaluated."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for train_id, label_id in enumerate(CITYSCAPES_LABEL_IDS):
        lut[label_id] = train_id
    return lut


class Cityscapes(FilePairs):
    """Cityscapes train/val/test with fine annotations: 19 classes."""

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE

    def __init__(self, root: str | Path, split: str = "train") -> None:
        root = Path(root)
        images = require_dir(root / "leftImg8bit" / split, "Cityscapes images")
        labels = require_dir(root / "gtFine" / split, "Cityscapes fine labels")
        pairs = []
        for image in sorted(images.glob(f"*/*{IMAGE_SUFFIX}")):
            stem = image.name[: -len(IMAGE_SUFFIX)]
            label = labels / image.parent.name / f"{stem}{LABEL_SUFFIX}"
            if not label.is_file():
                raise DataError(f"missing label for {image}: expected {label}")
            pairs.append((image, label))
        super().__init__(pairs, f"Cityscapes {split} at {root}")
        self.lut = label_id_lut()

    def map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        raw = super().map_labels(raw, path)
        if raw.min() < 0 or raw.max() > 255:
            raise DataError(f"{path}: labelIds must be in [0, 255]")
        return self.lut[raw]
