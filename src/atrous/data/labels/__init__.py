"""Labels from annotation tools (COCO, LabelMe, CVAT) turned into the folder layout atrous
trains on: ``images/<split>/``, ``masks/<split>/`` of class indices and ``classes.yaml``
(``atrous import-labels``). The rules every format shares are in :mod:`.common`; each format's
module states how it orders classes and overlaps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from atrous.data.labels.coco import CrowdRule, coco_categories, coco_samples, read_coco
from atrous.data.labels.common import ImportReport, class_names, write_dataset
from atrous.data.labels.cvat import cvat_images, cvat_labels, cvat_samples, read_cvat
from atrous.data.labels.labelme import labelme_files, labelme_labels, labelme_samples
from atrous.errors import UsageError

LabelFormat = Literal["coco", "labelme", "cvat"]


def import_labels(
    kind: LabelFormat,
    source: str | Path,
    output: str | Path,
    images: str | Path | None = None,
    split: str = "train",
    classes: Sequence[str] | None = None,
    crowd: CrowdRule = "ignore",
    keep_empty: bool = False,
) -> ImportReport:
    """Import ``source`` (a COCO JSON, a LabelMe folder or file, a CVAT XML) into ``output``;
    the report lists what was written and what was skipped, and is written beside it."""
    source, output = Path(source), Path(output)
    if not source.exists():
        raise UsageError(f"--source {source}: no such file or folder")
    if kind != "labelme" and not source.is_file():
        raise UsageError(f"--source {source}: name the export's {kind.upper()} file")
    folder = Path(images) if images is not None else None
    if folder is not None and not folder.is_dir():
        raise UsageError(f"--images {folder}: no such folder")
    report = ImportReport(output, split)
    if kind == "coco":
        data = read_coco(source)
        names = class_names(coco_categories(data)[1], classes)
        samples = coco_samples(data, folder or source.parent, report, crowd)
    elif kind == "labelme":
        files = labelme_files(source)
        names = class_names(labelme_labels(files), classes)
        samples = labelme_samples(files, folder, report)
    else:
        root = read_cvat(source)
        names = class_names(cvat_labels(root), classes)
        samples = cvat_samples(root, folder or cvat_images(source), report)
    output.mkdir(parents=True, exist_ok=True)
    return write_dataset(samples, names, output, split, report, keep_empty)
