"""LabelMe: one JSON file per image (``shapes``, ``imagePath``, ``imageData``, its size).

Polygons, rectangles and circles (centre and a point on the rim) are drawn as LabelMe's own
converter draws them (Pillow, outline included); ``mask`` shapes are pasted at their box.
Lines and points cover no area and are listed as skipped. Shapes are painted in the file's
order (a later one wins an overlap). The image is the embedded ``imageData`` when present, else
``imagePath`` beside the JSON (or its base name under ``--images``). Classes: the labels found,
sorted by name, unless ``--classes`` names them.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from atrous.data.labels.common import ImportReport, Region, Sample
from atrous.errors import InputError

AREA_SHAPES = ("polygon", "rectangle", "circle", "mask")


def labelme_files(source: Path) -> list[Path]:
    """The JSON files of a LabelMe folder (searched recursively), or the one file named."""
    if source.is_file():
        return [source]
    files = sorted(source.rglob("*.json")) if source.is_dir() else []
    if not files:
        raise InputError(f"--source {source}: no LabelMe .json files there")
    return files


def read_labelme(path: Path) -> dict[str, Any] | str:
    """One LabelMe file as a dict, or why it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"not a JSON file ({error})"
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        return "not a LabelMe file (no 'shapes' list)"
    return data


def labelme_labels(files: list[Path]) -> list[str]:
    """Every label of an area shape, sorted by name (the classes' order without --classes)."""
    labels = set()
    for path in files:
        data = read_labelme(path)
        if isinstance(data, dict):
            labels.update(
                str(shape.get("label", ""))
                for shape in data["shapes"]
                if isinstance(shape, dict) and (shape.get("shape_type") or "polygon") in AREA_SHAPES
            )
    return sorted(labels - {""})


def shape_mask(shape: dict[str, Any], height: int, width: int) -> np.ndarray | str:
    """One shape as an (H, W) bool mask, or why it cannot be one."""
    kind = shape.get("shape_type") or "polygon"
    try:
        points = [(float(x), float(y)) for x, y in shape.get("points", [])]
    except (TypeError, ValueError):
        return "points are not [x, y] pairs"
    if kind not in AREA_SHAPES:
        return f"shape type {kind!r} covers no area"
    if kind == "mask":
        return pasted_mask(shape, points, height, width)
    needed = 3 if kind == "polygon" else 2
    if len(points) < needed:
        return f"a {kind} needs {needed} points, has {len(points)}"
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "polygon":
        draw.polygon(points, outline=1, fill=1)
    elif kind == "rectangle":
        (x0, y0), (x1, y1) = points[:2]
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
    else:
        (cx, cy), (px, py) = points[:2]
        radius = float(np.hypot(px - cx, py - cy))
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=1, fill=1)
    return np.asarray(canvas, dtype=bool)


def pasted_mask(
    shape: dict[str, Any], points: list[tuple[float, float]], height: int, width: int
) -> np.ndarray | str:
    """A ``mask`` shape: a base64 PNG of its box, pasted at the box's top-left point."""
    if not points or not shape.get("mask"):
        return "a mask shape without its mask or box"
    try:
        with Image.open(io.BytesIO(base64.b64decode(shape["mask"]))) as opened:
            patch = np.asarray(opened.convert("L")) > 0
    except (binascii.Error, OSError, UnidentifiedImageError, ValueError):
        return "its mask is not a base64 PNG"
    left, top = (round(v) for v in points[0])
    mask = np.zeros((height, width), dtype=bool)
    rows, cols = max(0, top), max(0, left)
    piece = patch[rows - top : height - top, cols - left : width - left]
    mask[rows : rows + piece.shape[0], cols : cols + piece.shape[1]] = piece
    return mask


def labelme_image(path: Path, data: dict[str, Any], images: Path | None) -> Path | bytes | str:
    """The embedded image bytes, or the image file (found beside the JSON or under ``images``),
    or why neither is there."""
    if data.get("imageData"):
        try:
            return base64.b64decode(data["imageData"])
        except (binascii.Error, ValueError):
            return "imageData is not base64"
    name = data.get("imagePath")
    if not name:
        return "neither imageData nor imagePath"
    name = str(name).replace("\\", "/")  # LabelMe on Windows writes backslashes
    found = images / Path(name).name if images is not None else path.parent / name
    return found


def labelme_samples(
    files: list[Path], images: Path | None, report: ImportReport
) -> Iterator[Sample]:
    """Each readable LabelMe file as a sample, its shapes in file order."""
    for path in files:
        data = read_labelme(path)
        image = labelme_image(path, data, images) if isinstance(data, dict) else data
        if isinstance(data, str) or isinstance(image, str):
            report.skip(str(path), data if isinstance(data, str) else image)
            continue
        try:
            height, width = int(data["imageHeight"]), int(data["imageWidth"])
        except (KeyError, TypeError, ValueError):
            report.skip(str(path), "no imageHeight and imageWidth")
            continue
        regions = []
        for index, shape in enumerate(data["shapes"]):
            what = f"shape {index} ({shape.get('shape_type') or 'polygon'})"
            mask = shape_mask(shape, height, width)
            if isinstance(mask, str):
                report.skip(f"{path}: {what}", mask)
                continue
            regions.append(Region(str(shape.get("label", "")), mask, what))
        yield Sample(path.stem, image, (height, width), regions, str(path))
