"""Your own data: ``images/`` and ``masks/`` with matching file stems, and a ``classes.yaml``.

    my_data/
      classes.yaml            names: [background, cat, dog]
                              palette: [[0, 0, 0], [255, 0, 0], [0, 0, 255]]   # optional
                              ignore_index: 255                                 # optional
      images/train/a.jpg …    (or images/a.jpg … without split folders)
      masks/train/a.png …     one channel of class indices, or RGB colours from the palette

Masks hold class indices 0…N-1 and the ignore label (255 unless set). RGB-coloured masks are
mapped through the palette; a colour that is not in it is an error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from atrous.data.base import IGNORE_INDEX, FilePairs, require_dir
from atrous.data.io import DataError, colours_to_labels
from atrous.data.palettes import voc_palette

IMAGE_SUFFIXES = {".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}


def read_classes_file(path: Path) -> tuple[tuple[str, ...], tuple | None, int]:
    """(names, palette or None, ignore label) from a ``classes.yaml``."""
    if not path.is_file():
        raise DataError(f"class file not found: {path} (needs at least 'names: [...]')")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise DataError(f"cannot parse {path}: {error}") from None
    unknown = set(spec) - {"names", "palette", "ignore_index"}
    if unknown:
        raise DataError(
            f"{path}: unknown keys {sorted(unknown)}; allowed: names, palette, ignore_index"
        )
    names = spec.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: 'names' must be a non-empty list of class names")
    palette = spec.get("palette")
    if palette is not None:
        if len(palette) != len(names) or not all(
            isinstance(c, list) and len(c) == 3 and all(0 <= int(v) <= 255 for v in c)
            for c in palette
        ):
            raise DataError(f"{path}: 'palette' needs one [r, g, b] (0–255) per class name")
        palette = tuple(tuple(int(v) for v in c) for c in palette)
    return tuple(names), palette, int(spec.get("ignore_index", IGNORE_INDEX))


class FolderDataset(FilePairs):
    """Image/mask pairs matched by file stem, described by ``classes.yaml``."""

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        root = Path(root)
        require_dir(root, "dataset folder")
        names, palette, ignore_index = read_classes_file(root / "classes.yaml")
        self.classes = names
        self.has_palette = palette is not None
        self.palette = palette if palette is not None else voc_palette(len(names))
        self.ignore_index = ignore_index
        images = require_dir(root / "images" / (split or ""), "image folder")
        masks = require_dir(root / "masks" / (split or ""), "mask folder")
        mask_files = {p.stem: p for p in masks.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        pairs = []
        for image in sorted(images.iterdir()):
            if image.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if image.stem not in mask_files:
                raise DataError(f"missing mask for image {image}: no {masks}/{image.stem}.png")
            pairs.append((image, mask_files[image.stem]))
        super().__init__(pairs, f"folder dataset {images}")

    def map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if raw.ndim == 2:
            return raw
        if not self.has_palette:
            raise DataError(
                f"{path}: mask is RGB but classes.yaml has no palette to map its colours to classes"
            )
        return colours_to_labels(raw, list(self.palette), self.ignore_index, path)
