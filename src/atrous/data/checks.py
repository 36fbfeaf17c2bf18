"""Checking a dataset before training: every pair readable and valid, class frequencies, and the
label conventions that would train the wrong task without an error (0/255 binary masks). The
label doctor (:mod:`atrous.data.doctor`) reads the mask files as stored to name the rest."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from atrous.data.base import IGNORE_INDEX, SegmentationDataset, Task, check_pair
from atrous.data.io import DataError

#: Masks read at training start-up (evenly spaced over the split) to catch label conventions.
LABEL_SAMPLE = 256


@dataclass(frozen=True)
class LabelProblem:
    """Something about the labels that a user must hear; ``fatal``: training would learn the
    wrong task (``atrous check-data`` exits non-zero, training does not start). ``kind`` names
    the convention or check ("binary", "palette_png", "rgb_colours", "reduce_zero_label",
    "out_of_range", "binary_ignore", "empty_class"); ``fix`` is the exact option or classes.yaml
    line that fixes it (the message says it too, for training's error)."""

    message: str
    fatal: bool
    kind: str = ""
    fix: str | None = None


def suggestion(kind: str, text: str, fix: str, fatal: bool = True) -> LabelProblem:
    """A problem whose message ends with the one option that fixes it."""
    return LabelProblem(f"{text}: {fix}", fatal, kind, fix)


@dataclass
class DataReport:
    """Per-class pixel counts, the mask values seen, and one message per bad sample.

    ``present_pixels[c]``: all pixels of the masks in which class c occurs (for median-frequency
    weights, Eigen & Fergus 2015).
    """

    classes: tuple[str, ...]
    pixels: np.ndarray
    ignore_index: int = 255
    ignored: int = 0
    samples: int = 0
    errors: list[str] = field(default_factory=list)
    values: set[int] = field(default_factory=set)  # distinct mask values, valid or not
    masks_read: int = 0
    split_size: int = 0  # samples in the split (masks_read < split_size: a sample was read)
    present_pixels: np.ndarray | None = None  # zeros like ``pixels`` unless given
    task: Task = "multiclass"

    def __post_init__(self) -> None:
        if self.present_pixels is None:
            self.present_pixels = np.zeros_like(self.pixels)

    @property
    def frequencies(self) -> np.ndarray:
        total = self.pixels.sum()
        return self.pixels / total if total else self.pixels.astype(float)

    def add_mask(self, mask: np.ndarray) -> None:
        """Count one mask's pixels per class (values outside the classes: only as seen); a
        multilabel (K, H, W) mask counts each class's 1s."""
        self.masks_read += 1
        values, counts = np.unique(mask, return_counts=True)
        self.values.update(int(v) for v in values)
        if self.task == "multilabel":
            self.ignored += int((mask == self.ignore_index).sum())
            for index, plane in enumerate(mask):
                count = int((plane == 1).sum())
                self.pixels[index] += count
                self.present_pixels[index] += plane.size if count else 0
            return
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            if value == self.ignore_index:
                self.ignored += count
            elif 0 <= value < len(self.classes):
                self.pixels[value] += count
                self.present_pixels[value] += mask.size

    def label_problems(self) -> list[LabelProblem]:
        """Binary masks read the wrong way (fatal) and classes that never occur (warnings)."""
        problems = self._binary_problems()
        names = self.classes
        where = (
            "the split"
            if self.masks_read >= self.split_size
            else (f"the {self.masks_read} masks sampled of {self.split_size}")
        )
        for index in np.flatnonzero(self.pixels == 0) if self.masks_read else ():
            problems.append(
                LabelProblem(
                    f"class {index} {names[index]!r} has no pixels in {where}: check that its "
                    f"masks use the value {index} (class names are listed in index order) or "
                    "that the class belongs in the list",
                    fatal=False,
                    kind="empty_class",
                )
            )
        return problems

    def _binary_problems(self) -> list[LabelProblem]:
        """0/255 masks whose foreground is the ignore label, 0/1 masks with one class named."""
        names, ignore = self.classes, self.ignore_index
        if self.task == "binary" and self.values == {0, ignore}:
            return [
                LabelProblem(
                    f"binary masks read as 0 and the ignore label {ignore} only: classes.yaml's "
                    f"ignore_index {ignore} marks the foreground as unlabelled; remove "
                    "ignore_index from classes.yaml",
                    fatal=True,
                    kind="binary_ignore",
                )
            ]
        if self.task != "multiclass":
            return []
        if self.values == {0, ignore}:
            text = (
                f"every mask holds only 0 and {ignore}, and {ignore} is the ignore label: these "
                "look like binary masks whose foreground would be ignored, so a model would "
                f"learn {names[0]!r} everywhere"
            )
            if ignore != IGNORE_INDEX:  # a binary task ignores a value classes.yaml sets, too
                text += "; store the foreground as 1 or 255 and train them as a binary task"
                return [LabelProblem(text, fatal=True, kind="binary")]
            text += f". Train them as a binary task ({ignore} → class 1, the foreground)"
            return [suggestion("binary", text, "--data.task binary")]
        if len(names) == 1 and self.values == {0, 1}:
            text = (
                f"masks hold 0 and 1 but one class is named ({names[0]!r}): 0 is a class too. "
                f"Train them as a binary task (classes background, {names[0]})"
            )
            return [suggestion("binary", text, "--data.task binary")]
        return []


def _empty_report(dataset: SegmentationDataset) -> DataReport:
    return DataReport(
        dataset.classes,
        np.zeros(dataset.num_classes, dtype=np.int64),
        ignore_index=dataset.ignore_index,
        split_size=len(dataset),
        task=dataset.task,
    )


def check_dataset(dataset: SegmentationDataset, progress: bool = True) -> DataReport:
    """Load and check every sample; collect errors instead of stopping at the first."""
    report = _empty_report(dataset)
    for index in tqdm(range(len(dataset)), desc="check", disable=not progress, leave=False):
        try:
            image, mask = dataset.load(index)
        except DataError as error:
            report.errors.append(str(error))
            continue
        try:
            check_pair(
                image,
                mask,
                dataset.num_classes,
                dataset.ignore_index,
                dataset.name(index),
                multilabel=dataset.task == "multilabel",
            )
        except DataError as error:
            report.errors.append(str(error))
            report.values.update(np.unique(mask).tolist())  # its values still tell a convention
            continue
        report.add_mask(mask)
        report.samples += 1
    return report


def sample_labels(dataset: SegmentationDataset, limit: int = LABEL_SAMPLE) -> DataReport:
    """The masks of up to ``limit`` samples spread evenly over the dataset (masks only, no
    images: seconds even for large datasets). Unreadable masks are left to training to report."""
    report = _empty_report(dataset)
    for index in np.linspace(0, len(dataset) - 1, min(limit, len(dataset)), dtype=int):
        try:
            report.add_mask(dataset.load_mask(int(index)))
        except DataError:
            continue
    return report
