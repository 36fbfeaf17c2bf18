"""Your own data: ``images/`` and ``masks/`` with matching file stems, and a ``classes.yaml``.

    my_data/
      classes.yaml            names: [background, cat, dog]
                              palette: [[0, 0, 0], [255, 0, 0], [0, 0, 255]]   # optional
                              ignore_index: 255                                 # optional
      images/train/a.jpg …    (or images/a.jpg … without split folders)
      masks/train/a.png …     one channel of class indices, or RGB colours from the palette

Masks hold class indices 0…N-1 and the ignore label (255 unless set). RGB-coloured masks are
mapped through the palette; a colour that is not in it is an error naming the file. Without a
palette, RGB masks whose three channels are equal (grey saved as RGB) are read as their values.

Other conventions, one option each (``atrous check-data`` names the one a dataset needs):

- ``task="binary"``: masks of 0/255 or 0/1 become background 0 / foreground 1. A mask whose
  values are all ≤ 1 is taken as it is; otherwise values ≥ 128 are the foreground (anti-aliased
  or JPEG edges split at mid-grey). Only an ``ignore_index`` that classes.yaml sets marks
  unlabelled pixels (e.g. 0/1 masks with 255 borders); without one, 255 is the foreground.
  classes.yaml may name the two classes, only the foreground (``names: [road]`` → background,
  road) or be left out (background, foreground).
- ``task="multilabel"``: classes that may overlap, one 0/255 (or 0/1) mask per class at
  ``masks/<split>/<class name>/<stem>.png``; a missing file means the class is absent from that
  image. The target is (K, H, W) of 0/1 (same threshold and ignore rule as binary).
- ``reduce_zero_label=True``: 0 means unlabelled (→ ignore) and 1…N are the N classes (→ 0…N-1),
  as ADE20K stores them.
- ``in_channels`` ≠ 3 (RGB + NIR, multispectral): images are read as float32 (H, W, C) on [0, 1]
  (:func:`~atrous.data.io.read_bands`: multi-band TIFF through tifffile).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from atrous.data.base import IGNORE_INDEX, FilePairs, Task, require_dir
from atrous.data.io import (
    DataError,
    Palette,
    colours_to_labels,
    grey_if_equal,
    read_bands,
    read_image,
    read_mask,
)
from atrous.data.palettes import voc_palette

IMAGE_SUFFIXES = {".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
BINARY_NAMES = ("background", "foreground")
BINARY_PALETTE = ((0, 0, 0), (255, 255, 255))


def read_classes_file(path: Path) -> tuple[tuple[str, ...], Palette | None, int | None]:
    """(names, palette or None, ignore label or None when not set) from a ``classes.yaml``."""
    if not path.is_file():
        raise DataError(f"class file not found: {path} (needs at least 'names: [...]')")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or error
        raise DataError(f"{path}: invalid YAML{where} ({problem})") from None
    if not isinstance(spec, dict):
        raise DataError(f"{path}: holds a {type(spec).__name__}, not names: [...] and palette:")
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
        palette = read_palette(path, palette, names)
    ignore = spec.get("ignore_index")
    return tuple(names), palette, None if ignore is None else int(ignore)


def read_palette(path: Path, palette: object, names: list[str]) -> Palette:
    """classes.yaml's ``palette``: one [r, g, b] (0–255) per class name; a bad entry is a
    DataError naming it (index, class and value)."""
    if not isinstance(palette, list) or len(palette) != len(names):
        raise DataError(f"{path}: 'palette' needs one [r, g, b] (0–255) per class name")
    for index, colour in enumerate(palette):
        if not (
            isinstance(colour, list)
            and len(colour) == 3
            and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in colour
            )
        ):
            raise DataError(
                f"{path}: palette entry {index} (class {names[index]!r}) is {colour!r}; a colour "
                "is [r, g, b] with values 0–255, e.g. [255, 0, 0] for red"
            )
    return tuple(tuple(c) for c in palette)


def folder_classes(
    root: Path, task: Task = "multiclass"
) -> tuple[tuple[str, ...], Palette | None, int | None]:
    """A folder dataset's (names, palette or None, ignore label or None) for ``task``: binary
    datasets name the foreground alone or need no classes.yaml at all."""
    path = root / "classes.yaml"
    if task != "binary":
        return read_classes_file(path)
    if not path.is_file():
        return BINARY_NAMES, None, None
    names, palette, ignore = read_classes_file(path)
    if len(names) > 2:
        raise DataError(
            f"{path}: a binary task has two classes; name the foreground alone or "
            f"[background, foreground], not {len(names)} classes"
        )
    if len(names) == 1:
        names = (BINARY_NAMES[0], names[0])
        palette = None if palette is None else (BINARY_PALETTE[0], palette[0])
    return names, palette, ignore


def default_palette(task: Task, num_classes: int) -> Palette:
    """Colours of a folder dataset whose classes.yaml gives none (binary: black and white)."""
    return BINARY_PALETTE if task == "binary" else voc_palette(num_classes)


def binary_labels(mask: np.ndarray, ignore: int | None) -> np.ndarray:
    """0/255 or 0/1 values → 0/1 (the module docstring's threshold rule); ``ignore`` kept."""
    ignored = mask == ignore if ignore is not None else np.zeros(mask.shape, dtype=bool)
    labels = mask if mask[~ignored].max(initial=0) <= 1 else mask >= 128
    labels = labels.astype(np.int64)
    if ignore is not None:
        labels[ignored] = ignore
    return labels


def reduce_zero_label(labels: np.ndarray, ignore_index: int) -> np.ndarray:
    """0 (unlabelled) → ``ignore_index``, v → v − 1; the ignore label itself is kept."""
    keep = (labels == 0) | (labels == ignore_index)
    return np.where(keep, ignore_index, labels - 1)


@dataclass(frozen=True)
class MaskReading:
    """How a folder dataset turns one mask file's values into labels: the one place for the
    conventions, shared by the reader and ``atrous check-data --fix``."""

    ignore_index: int = IGNORE_INDEX
    palette: Palette | None = None  # RGB masks' colours, in class order
    binary: bool = False  # 0/255 or 0/1 → 0/1 (binary tasks and each multilabel class)
    binary_ignore: int | None = None  # binary: the value classes.yaml marks as unlabelled
    reduce_zero_label: bool = False

    def apply(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """(H, W) values or (H, W, 3) colours → (H, W) labels; bad files raise a DataError."""
        labels = grey_if_equal(raw) if self.palette is None else raw
        if labels.ndim == 3:
            if self.palette is None:
                raise DataError(
                    f"{path}: mask is RGB but classes.yaml has no palette to map its colours "
                    "to classes"
                )
            if self.reduce_zero_label:
                raise DataError(
                    f"{path}: reduce_zero_label applies to masks of values, not RGB colours"
                )
            labels = colours_to_labels(labels, list(self.palette), self.ignore_index, path)
        if self.binary:
            labels = binary_labels(labels, self.binary_ignore)
        if self.reduce_zero_label:
            labels = reduce_zero_label(labels, self.ignore_index)
        return labels


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` (by suffix), sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def folder_pairs(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs matched by file stem; an image without a mask is a DataError."""
    mask_files = {p.stem: p for p in image_files(masks)}
    per_class = any(p.is_dir() for p in masks.iterdir())
    hint = " (masks in one folder per class are read with task multilabel)" if per_class else ""
    pairs = []
    for image in image_files(images):
        if image.stem not in mask_files:
            raise DataError(f"missing mask for image {image}: no {masks}/{image.stem}.png{hint}")
        pairs.append((image, mask_files[image.stem]))
    return pairs


def multilabel_pairs(
    images: Path, masks: Path, names: tuple[str, ...]
) -> list[tuple[Path | None, ...]]:
    """(image, mask of class 0 or None, …) from ``masks/<class name>/<stem>.png``."""
    folders = {p.name: p for p in masks.iterdir() if p.is_dir()}
    unknown = sorted(set(folders) - set(names))
    if unknown:
        raise DataError(f"{masks}: folders {unknown} are not class names in classes.yaml {names}")
    if not folders:
        raise DataError(
            f"{masks}: multilabel masks go in one folder per class, <class name>/<stem>.png; "
            f"none found for the classes {list(names)}"
        )
    by_class = [{p.stem: p for p in image_files(folders[n])} if n in folders else {} for n in names]
    return [
        (image, *(stems.get(image.stem) for stems in by_class)) for image in image_files(images)
    ]


class FolderDataset(FilePairs):
    """Image/mask pairs matched by file stem, described by ``classes.yaml`` (module docstring:
    the layout, ``task``, ``reduce_zero_label`` and ``in_channels``); ``classes`` (names,
    palette, ignore label) stands in for a classes.yaml not yet written (``check-data --fix``)."""

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        task: Task = "multiclass",
        reduce_zero_label: bool = False,
        in_channels: int = 3,
        classes: tuple[tuple[str, ...], Palette | None, int | None] | None = None,
    ) -> None:
        root = Path(root)
        require_dir(root, "dataset folder")
        if reduce_zero_label and task != "multiclass":
            raise ValueError(f"reduce_zero_label applies to multiclass masks, not task {task!r}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        names, palette, ignore = classes or folder_classes(root, task)
        self.root, self.split = root, split
        self.task, self.in_channels = task, in_channels
        self.reduce_zero_label = reduce_zero_label  # a scalar: part of the cache fingerprint
        self.classes = names
        self.has_palette = palette is not None
        self.palette = palette if palette is not None else default_palette(task, len(names))
        self.ignore_index = IGNORE_INDEX if ignore is None else ignore
        self.reading = MaskReading(
            self.ignore_index, palette, task != "multiclass", ignore, reduce_zero_label
        )
        images = require_dir(root / "images" / (split or ""), "image folder")
        masks = require_dir(root / "masks" / (split or ""), "mask folder")
        if task == "multilabel":
            pairs = multilabel_pairs(images, masks, names)
        else:
            pairs = folder_pairs(images, masks)
        super().__init__(pairs, f"folder dataset {images}")

    def map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return self.reading.apply(raw, path)

    def load_image(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8, or (H, W, in_channels) float32 on [0, 1] when in_channels ≠ 3."""
        path = self.pairs[index][0]
        return read_image(path) if self.in_channels == 3 else read_bands(path, self.in_channels)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.load_image(index), self.load_mask(index)

    def load_mask(self, index: int) -> np.ndarray:
        if self.task != "multilabel":
            return super().load_mask(index)
        image, *paths = self.pairs[index]
        planes = {p: self.map_labels(read_mask(p), p) for p in paths if p is not None}
        first = next(iter(planes), None)
        for path, plane in planes.items():
            if plane.shape != planes[first].shape:
                height, width = plane.shape
                raise DataError(
                    f"class masks of {image} differ in size: {path} is {width}×{height}, "
                    f"{first} is {planes[first].shape[1]}×{planes[first].shape[0]}"
                )
        # A sample that no class mask covers: the image gives the size.
        shape = planes[first].shape if planes else self.load_image(index).shape[:2]
        dtype = np.uint8 if self.ignore_index <= 255 else np.int64
        empty = np.zeros(shape, dtype)
        return np.stack([empty if p is None else planes[p].astype(dtype) for p in paths])
