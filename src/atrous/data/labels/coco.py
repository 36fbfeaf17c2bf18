"""COCO instance annotations (``instances_*.json`` and what CVAT, Label Studio, Roboflow … export
as COCO): polygons, uncompressed RLE and compressed RLE, decoded by ``pycocotools``.

Classes follow the ``categories`` list in its order. An image's annotations are painted in file
order (a later one wins an overlap), crowd regions (``iscrowd: 1``, loose outlines around a
group) first, beneath the others: with ``crowd="ignore"`` (the default) their pixels that no
other annotation covers get the ignore label, with ``crowd="class"`` their category. Image
files are found at ``file_name`` under the images folder (default: the JSON's folder), or by
their base name there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from atrous.data.labels.common import ImportReport, Region, Sample, polygons_mask
from atrous.errors import InputError, missing_dependency

CrowdRule = Literal["ignore", "class"]


def read_coco(path: Path) -> dict[str, Any]:
    """The export as a dict, with its three lists checked (else an InputError naming the file)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"--source {path}: not a COCO JSON file ({error})") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise InputError(
            f"--source {path}: a COCO file has the lists 'images', 'annotations' and "
            "'categories'; this one does not (is it a LabelMe or CVAT export? see --from)"
        )
    return data


def coco_categories(data: dict[str, Any]) -> tuple[dict[int, str], list[str]]:
    """Category id → name, and the names in the file's order."""
    names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    return names, [str(c["name"]) for c in data["categories"]]


def segmentation_mask(segmentation: Any, height: int, width: int) -> np.ndarray | str:
    """One annotation's ``segmentation`` as an (H, W) bool mask, or why it cannot be read."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        raise missing_dependency("pycocotools", "atrous import-labels --from coco") from None
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        if not polygons:
            return "no polygon with 3 points or more (a box-only annotation?)"
        return polygons_mask(polygons, height, width)
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        return "segmentation is neither polygons nor RLE"
    if list(segmentation.get("size", ())) != [height, width]:
        return f"RLE size {segmentation.get('size')} differs from the image's [{height}, {width}]"
    counts = segmentation["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        text = counts.encode() if isinstance(counts, str) else counts
        rle = {"size": [height, width], "counts": text}
    return coco_mask.decode(rle).astype(bool)


def coco_samples(
    data: dict[str, Any], images: Path, report: ImportReport, crowd: CrowdRule = "ignore"
) -> Iterator[Sample]:
    """The export's images with their regions (crowd first), in the file's image order."""
    categories, _ = coco_categories(data)
    by_image: dict[int, list[dict]] = {int(entry["id"]): [] for entry in data["images"]}
    for index, annotation in enumerate(data["annotations"]):
        image_id = annotation.get("image_id")
        if image_id not in by_image:
            report.skip(f"annotation {annotation.get('id', index)}", f"no image {image_id}")
            continue
        by_image[image_id].append(annotation)
    for entry in data["images"]:
        height, width = int(entry["height"]), int(entry["width"])
        name = str(entry["file_name"])
        annotations = sorted(by_image[int(entry["id"])], key=lambda a: not a.get("iscrowd"))
        regions = []
        for annotation in annotations:
            what = f"annotation {annotation.get('id')}"
            label = categories.get(annotation.get("category_id"))
            if label is None:
                report.skip(f"{name}: {what}", f"unknown category {annotation.get('category_id')}")
                continue
            mask = segmentation_mask(annotation.get("segmentation"), height, width)
            if isinstance(mask, str):
                report.skip(f"{name}: {what}", mask)
                continue
            ignore = bool(annotation.get("iscrowd")) and crowd == "ignore"
            regions.append(Region(label, mask, what, ignore))
        yield Sample(Path(name).stem, image_path(images, name), (height, width), regions, name)


def image_path(images: Path, name: str) -> Path:
    """``name`` under ``images``, or its base name there when the export kept a folder."""
    path = images / name
    return path if path.is_file() else images / Path(name).name
