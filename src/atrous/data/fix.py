"""``atrous check-data --fix OUT``: a converted copy of a folder dataset that reads as a plain
multiclass one, with the label doctor's conventions applied (:mod:`atrous.data.doctor`).

The masks are read the way the doctor's options would read them (binary threshold, RGB colours
through the colours found, zero label reduced), labels beyond the class names become the ignore
label, and each is written as a palette PNG of class indices (``masks/<split>/<stem>.png``);
``classes.yaml`` gets the names and palette. Every split under ``images/`` is converted. Images
are copied, not linked: links fail on some filesystems and would let edits reach the original.
The originals are only read; OUT must be new (or empty) and outside ``images/`` and ``masks/``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import yaml

from atrous.data.doctor import Diagnosis, png_colours
from atrous.data.folder import (
    BINARY_NAMES,
    BINARY_PALETTE,
    FolderDataset,
    MaskReading,
    folder_pairs,
)
from atrous.data.io import DataError, Palette, read_mask
from atrous.data.palettes import voc_palette
from atrous.data.visualize import palette_image


def fixed_labels(
    dataset: FolderDataset, diagnosis: Diagnosis
) -> tuple[tuple[str, ...], Palette, MaskReading]:
    """The converted dataset's class names and palette, and how to read the original masks."""
    if dataset.task == "multilabel":
        raise DataError("--fix converts multiclass and binary datasets, not multilabel ones")
    kinds = {p.kind for p in diagnosis.problems if p.fix is not None}  # suggestions
    names, palette, reading = dataset.classes, dataset.palette, dataset.reading
    raw = diagnosis.raw
    if "binary" in kinds:
        if len(names) != 2:  # one name is the foreground's; more cannot be binary
            names = (BINARY_NAMES[0], names[0]) if len(names) == 1 else BINARY_NAMES
            palette = BINARY_PALETTE
        palette = palette if dataset.has_palette else BINARY_PALETTE
        ignore = None if reading.binary_ignore == 255 else reading.binary_ignore
        reading = dataclasses.replace(reading, binary=True, binary_ignore=ignore)
    if "rgb_colours" in kinds and raw is not None and not raw.too_many_colours:
        colours = tuple(sorted(raw.colours))
        names = names + tuple(f"class_{i}" for i in range(len(names), len(colours)))
        spare = [c for c in voc_palette(256) if c not in colours]
        palette = colours + tuple(spare[: len(names) - len(colours)])
        reading = dataclasses.replace(reading, palette=colours)
    if "palette_png" in kinds and raw is not None and raw.png_palette is not None:
        palette = tuple(tuple(c) for c in png_colours(raw.png_palette, palette))
    if "reduce_zero_label" in kinds:
        reading = dataclasses.replace(reading, reduce_zero_label=True)
    return names, palette, reading


def write_fixed(dataset: FolderDataset, diagnosis: Diagnosis, out: str | Path) -> int:
    """Write the converted copy of ``dataset`` (all its splits) to ``out``; the number of
    image/mask pairs written."""
    out = Path(out)
    _check_output(dataset.root, out)
    names, palette, reading = fixed_labels(dataset, diagnosis)
    ignore = reading.ignore_index
    if len(names) > 255 or ignore > 255:
        raise DataError("--fix writes 8-bit masks: up to 255 classes and an ignore label ≤ 255")
    written = 0
    for split in _splits(dataset):
        images, masks = dataset.root / "images" / split, dataset.root / "masks" / split
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
        for image, mask in folder_pairs(images, masks):
            labels = reading.apply(read_mask(mask), mask)
            labels = np.where((labels >= 0) & (labels < len(names)), labels, ignore)
            shutil.copy2(image, out / "images" / split / image.name)
            palette_image(labels, palette).save(out / "masks" / split / f"{mask.stem}.png")
            written += 1
    spec = {"names": list(names), "palette": [list(c) for c in palette]}
    if ignore != 255:
        spec["ignore_index"] = ignore
    (out / "classes.yaml").write_text(
        yaml.safe_dump(spec, default_flow_style=None, sort_keys=False)
    )
    return written


def _splits(dataset: FolderDataset) -> list[str]:
    """Every split folder under images/ that masks/ has too ("" for a dataset without splits)."""
    if not dataset.split:
        return [""]
    images = dataset.root / "images"
    return [
        d.name
        for d in sorted(images.iterdir())
        if d.is_dir() and (dataset.root / "masks" / d.name).is_dir()
    ]


def _check_output(root: Path, out: Path) -> None:
    """Refuse an OUT that holds files or lies inside the dataset's images/ or masks/."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--fix {out}: the folder exists and is not empty; name a new one")
    for inside in (root / "images", root / "masks"):
        if out.resolve().is_relative_to(inside.resolve()):
            raise DataError(f"--fix {out} is inside {inside}; name a folder outside the dataset's")
