"""``atrous check-data`` as one library call: check a dataset read with the same
:class:`~atrous.data.DataConfig` that trains it, name its label conventions, and write a fixed
copy on request. Each suggestion is an option of that DataConfig (``--data.task binary``), a
classes.yaml line, or ``--fix OUT``, so the command it names accepts it as printed.

A folder dataset without classes.yaml is diagnosed from its mask files: RGB colour masks get
the colours found (pixels each) and a ``--fix`` that writes index masks and a classes.yaml
naming those colours; 0/255 masks get ``--data.task binary``; other values the names line.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from atrous.data import DataConfig, FolderDataset, build_dataset
from atrous.data.chart import plot_class_balance
from atrous.data.checks import DataReport, LabelProblem, check_dataset, suggestion
from atrous.data.doctor import Diagnosis, RawLabels, label_doctor
from atrous.data.fix import write_fixed
from atrous.data.folder import folder_pairs
from atrous.data.io import DataError, read_raw_mask
from atrous.errors import UsageError

#: Colours listed in the diagnosis of RGB masks without classes.yaml (the rest counted).
SHOWN_COLOURS = 12


@dataclass
class DataCheck:
    """What ``check_data`` found: the report (None when no class could be named), the label
    diagnosis, and what it wrote (chart, fixed copy)."""

    config: DataConfig
    split: Literal["train", "val"]
    report: DataReport | None
    diagnosis: Diagnosis
    samples: int
    chart: Path | None = None
    fixed: int | None = None  # image/mask pairs written by --fix

    @property
    def ok(self) -> bool:
        """No bad sample and no fatal label problem (the command exits 0)."""
        problems = self.diagnosis.problems
        errors = self.report is None or bool(self.report.errors)
        return not errors and not any(p.fatal for p in problems)


def check_data(
    config: DataConfig,
    split: Literal["train", "val"] = "train",
    fix: str | Path | None = None,
    chart: str | Path | None = None,
    progress: bool = True,
) -> DataCheck:
    """Check every image/mask pair of ``config``'s ``split`` split; with ``fix``, write a
    converted copy of a folder dataset there; with ``chart``, the class-balance chart."""
    if fix is not None and config.dataset != "folder":
        raise UsageError("--fix converts folder datasets (--data.dataset folder)")
    name = config.train_split if split == "train" else config.val_split
    data, first = _dataset(config, split, name)
    if data is None:
        return DataCheck(config, split, None, Diagnosis(first.problems, first.raw), first.raw.masks)
    report = check_dataset(data, progress)
    diagnosis = label_doctor(data, report, progress)
    if first is not None:  # the diagnosis without classes.yaml replaces the doctor's colours one
        kinds = {p.kind for p in first.problems}
        rest = [p for p in diagnosis.problems if p.kind not in kinds]
        diagnosis = Diagnosis(first.problems + rest, diagnosis.raw)
    result = DataCheck(config, split, report, diagnosis, len(data))
    if chart is not None:
        plot_class_balance(report.classes, report.pixels, Path(chart), f"class balance: {name}")
        result.chart = Path(chart)
    if fix is not None:
        if not isinstance(data, FolderDataset):
            raise UsageError("--fix converts folder datasets (--data.dataset folder)")
        result.fixed = write_fixed(data, diagnosis, fix)
    return result


def _dataset(
    config: DataConfig, split: Literal["train", "val"], name: str
) -> tuple[FolderDataset | None, Diagnosis | None]:
    """The dataset to check, and for a folder dataset without classes.yaml the diagnosis of its
    mask files (with no dataset when they do not name their classes)."""
    root = Path(config.root or ".")
    if config.dataset != "folder" or config.task != "multiclass" or config.root is None:
        return build_dataset(config, split), None
    if (root / "classes.yaml").is_file():
        return build_dataset(config, split), None
    raw = raw_labels(root, name)
    problem, names = unnamed_classes(root / "classes.yaml", raw)
    diagnosis = Diagnosis([problem], raw)
    if names is None:
        return None, diagnosis
    options = {"reduce_zero_label": config.reduce_zero_label, "in_channels": config.in_channels}
    classes = (names, tuple(sorted(raw.colours)), None)  # read through the colours found
    data = FolderDataset(root, name or None, classes=classes, **options)
    return data, diagnosis


def raw_labels(root: Path, split: str) -> RawLabels:
    """The mask files of a folder dataset as stored, RGB masks counted as colours."""
    images, masks = root / "images" / split, root / "masks" / split
    for folder, what in ((images, "image folder"), (masks, "mask folder")):
        if not folder.is_dir():
            raise DataError(f"{what} not found: {folder} is not a directory")
    raw = RawLabels(rgb_as_values=False)
    for _, mask in folder_pairs(images, masks):
        raw.add(*read_raw_mask(mask))
    return raw


def unnamed_classes(path: Path, raw: RawLabels) -> tuple[LabelProblem, tuple[str, ...] | None]:
    """The problem of a missing classes.yaml, told from the masks, and the class names their
    colours give (None when they are not colours)."""
    if raw.colour_masks and not raw.too_many_colours:
        colours = sorted(raw.colours)
        shown = ", ".join(f"{c}: {raw.colours[c]} px" for c in colours[:SHOWN_COLOURS])
        more = f" and {len(colours) - SHOWN_COLOURS} more" if len(colours) > SHOWN_COLOURS else ""
        text = (
            f"{path} not found and {raw.colour_masks} of {raw.masks} masks are RGB colours: "
            f"{len(colours)} colours found ({shown}{more}). Write a copy of index masks and a "
            "classes.yaml naming these colours (then rename the classes there)"
        )
        names = tuple("colour_{}_{}_{}".format(*c) for c in colours)
        return suggestion("rgb_colours", text, "--fix OUT"), names
    if raw.colour_masks:
        text = (
            f"{path} not found and the masks are RGB with more than 256 colours (JPEG-"
            "compressed?): a mask needs one exact colour per class. Save the masks as PNG"
        )
        return LabelProblem(text, fatal=True, kind="rgb_colours"), None
    values = sorted(raw.grey)
    if {0, 255} <= set(values) and max(values) == 255:
        text = f"{path} not found and the masks hold 0 and 255: binary masks"
        return suggestion("binary", text, "--data.task binary"), None
    counts = ", ".join(f"{v}: {raw.grey[v]} px" for v in values[:SHOWN_COLOURS])
    names = ", ".join(f"class_{i}" for i in range(max(values, default=0) + 1))
    text = (
        f"{path} not found; the masks hold the values {counts}. Write it with one name per "
        "class, in the order of the values"
    )
    return suggestion("no_classes", text, f"names: [{names}]"), None


def data_options(config: DataConfig) -> list[str]:
    """The ``--data.*`` options that give ``config`` (its fields that differ from the
    defaults), for a command line that can be pasted back."""
    options = []
    default = DataConfig()
    for field in dataclasses.fields(DataConfig):
        value = getattr(config, field.name)
        if value == getattr(default, field.name):
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        options += [f"--data.{field.name}", shlex.quote(text) if text else "''"]
    return options


def fixed_options(check: DataCheck, fix: str | Path) -> list[str]:
    """The check-data options that check the copy ``--fix`` wrote (a plain multiclass one)."""
    copy = dataclasses.replace(
        check.config, root=str(fix), task="multiclass", reduce_zero_label=False
    )
    return data_options(copy) + (["--split", "val"] if check.split == "val" else [])
