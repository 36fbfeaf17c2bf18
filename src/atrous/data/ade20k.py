"""ADE20K (SceneParsing ``ADEChallengeData2016``): 150 classes; label 0 ("other") is ignored.

Layout: ``root/images/{training,validation}/*.jpg`` and ``root/annotations/{...}/*.png``;
``root`` may also be the folder holding ``ADEChallengeData2016``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atrous.data.base import IGNORE_INDEX, FilePairs, require_dir
from atrous.data.io import DataError
from atrous.data.palettes import ADE20K_CLASSES, ADE20K_PALETTE

SPLITS = {
    "train": "training",
    "val": "validation",
    "training": "training",
    "validation": "validation",
}


class ADE20K(FilePairs):
    """ADE20K scene parsing; labels 1–150 become 0–149 ("reduce zero label"), 0 becomes 255."""

    classes = ADE20K_CLASSES
    palette = ADE20K_PALETTE

    def __init__(self, root: str | Path, split: str = "train") -> None:
        root = Path(root)
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        if split not in SPLITS:
            raise ValueError(f"ADE20K split must be one of {sorted(SPLITS)}, got {split!r}")
        folder = SPLITS[split]
        images = require_dir(root / "images" / folder, "ADE20K images")
        labels = require_dir(root / "annotations" / folder, "ADE20K annotations")
        pairs = []
        for image in sorted(images.glob("*.jpg")):
            label = labels / f"{image.stem}.png"
            if not label.is_file():
                raise DataError(f"missing annotation for {image}: expected {label}")
            pairs.append((image, label))
        super().__init__(pairs, f"ADE20K {split} at {root}")

    def map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        raw = super().map_labels(raw, path)
        return np.where(raw == 0, IGNORE_INDEX, raw - 1)
