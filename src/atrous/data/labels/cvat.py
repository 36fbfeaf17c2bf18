"""CVAT for images 1.1 (``annotations.xml``): polygons, boxes (rotated too), ellipses and masks
(CVAT's run-length code over the mask's box).

Classes follow the ``<labels>`` of the task or project in their order (labels of points,
polylines, skeletons and tags draw no area and are left out; without ``<labels>``, the order of
first use). Shapes are painted by ``z_order``, then in file order (a later one wins an overlap).
Polygons, boxes and ellipses are rasterised by pycocotools, as CVAT's own mask export does.
Image files are ``name`` under the images folder (default: ``images/`` beside the XML if there
is one, else the XML's folder). Tracks (CVAT for video) are listed as skipped.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from atrous.data.labels.common import ImportReport, Region, Sample, polygons_mask
from atrous.errors import InputError

AREA_SHAPES = ("polygon", "box", "ellipse", "mask")
NO_AREA_TYPES = ("points", "polyline", "skeleton", "tag")
ELLIPSE_POINTS = 72


def read_cvat(path: Path) -> ElementTree.Element:
    """The XML's root, checked to be CVAT's ``<annotations>`` (else an InputError)."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as error:
        raise InputError(f"--source {path}: not a CVAT XML file ({error})") from None
    if root.tag != "annotations":
        raise InputError(
            f"--source {path}: a CVAT for images 1.1 file has <annotations> at its root, "
            f"this one <{root.tag}> (export the task as 'CVAT for images 1.1')"
        )
    return root


def cvat_labels(root: ElementTree.Element) -> list[str]:
    """The label names of the task or project, in their order (area labels only); without a
    ``<labels>`` list, the labels shapes use, in the order of first use."""
    labels = []
    for label in root.iterfind("meta/*/labels/label"):
        if label.findtext("parent") or (label.findtext("type") or "") in NO_AREA_TYPES:
            continue
        labels.append(label.findtext("name") or "")
    if not labels:
        used = (s.get("label", "") for i in root.iter("image") for s in i if s.tag in AREA_SHAPES)
        labels = list(dict.fromkeys(used))
    return [name for name in labels if name]


def points_of(text: str) -> list[float]:
    """``"x0,y0;x1,y1;…"`` → [x0, y0, x1, y1, …]."""
    return [float(v) for pair in text.split(";") if pair for v in pair.split(",")]


def turned(corners: list[tuple[float, float]], degrees: float) -> list[float]:
    """Corners turned ``degrees`` clockwise (image axes, y down) about their centre, flat."""
    cx = sum(x for x, _ in corners) / len(corners)
    cy = sum(y for _, y in corners) / len(corners)
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    flat = []
    for x, y in corners:
        flat += [cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos]
    return flat


def outline(shape: ElementTree.Element) -> list[float]:
    """A polygon, box or ellipse as one polygon's [x0, y0, …] (rotation applied)."""
    attrs = shape.attrib
    rotation = float(attrs.get("rotation", 0))
    if shape.tag == "polygon":
        return points_of(attrs["points"])
    if shape.tag == "box":
        x0, y0, x1, y1 = (float(attrs[k]) for k in ("xtl", "ytl", "xbr", "ybr"))
        return turned([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], rotation)
    cx, cy, rx, ry = (float(attrs[k]) for k in ("cx", "cy", "rx", "ry"))
    steps = [2 * math.pi * i / ELLIPSE_POINTS for i in range(ELLIPSE_POINTS)]
    rim = [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in steps]
    return turned(rim, rotation)


def rle_mask(shape: ElementTree.Element, height: int, width: int) -> np.ndarray:
    """A ``<mask>``: runs alternating from 0 over its (width × height) box, row by row, placed
    at (left, top) in the image."""
    attrs = shape.attrib
    left, top = int(float(attrs["left"])), int(float(attrs["top"]))
    box_w, box_h = int(float(attrs["width"])), int(float(attrs["height"]))
    runs = [int(v) for v in attrs["rle"].replace(" ", "").split(",") if v]
    values = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    if values.size != box_w * box_h:
        raise ValueError(f"its runs cover {values.size} pixels, its box {box_w}×{box_h}")
    patch = values.reshape(box_h, box_w)
    mask = np.zeros((height, width), dtype=bool)
    rows, cols = max(0, top), max(0, left)
    piece = patch[rows - top : height - top, cols - left : width - left]
    mask[rows : rows + piece.shape[0], cols : cols + piece.shape[1]] = piece
    return mask


def shape_mask(shape: ElementTree.Element, height: int, width: int) -> np.ndarray | str:
    """One shape as an (H, W) bool mask, or why it cannot be one."""
    if shape.tag not in AREA_SHAPES:
        return f"<{shape.tag}> covers no area"
    try:
        if shape.tag == "mask":
            return rle_mask(shape, height, width)
        polygon = outline(shape)
    except (KeyError, ValueError) as error:
        return f"<{shape.tag}> cannot be read ({error})"
    if len(polygon) < 6:
        return f"<{shape.tag}> has fewer than 3 points"
    return polygons_mask([polygon], height, width)


def cvat_samples(root: ElementTree.Element, images: Path, report: ImportReport) -> Iterator[Sample]:
    """Each ``<image>`` with its shapes as regions, by z_order then file order."""
    for track in root.iter("track"):
        report.skip(f"track {track.get('id')}", "tracks (CVAT for video) are not read")
    for image in root.iter("image"):
        name = image.get("name", "")
        height, width = int(image.get("height", 0)), int(image.get("width", 0))
        shapes = sorted(image, key=lambda s: int(s.get("z_order", 0) or 0))
        regions = []
        for index, shape in enumerate(shapes):
            what = f"shape {index} <{shape.tag}>"
            mask = shape_mask(shape, height, width)
            if isinstance(mask, str):
                report.skip(f"{name}: {what}", mask)
                continue
            regions.append(Region(shape.get("label", ""), mask, what))
        yield Sample(Path(name).stem, images / name, (height, width), regions, name)


def cvat_images(source: Path) -> Path:
    """Where a CVAT export keeps its images: ``images/`` beside the XML, or the XML's folder."""
    folder = source.parent / "images"
    return folder if folder.is_dir() else source.parent
