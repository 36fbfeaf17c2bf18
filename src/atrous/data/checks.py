"""Checking a whole dataset before training: every pair readable and valid, class frequencies."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from atrous.data.base import SegmentationDataset, check_pair
from atrous.data.io import DataError


@dataclass
class DataReport:
    """Per-class pixel counts and one message per bad sample."""

    classes: tuple[str, ...]
    pixels: np.ndarray
    ignored: int = 0
    samples: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def frequencies(self) -> np.ndarray:
        total = self.pixels.sum()
        return self.pixels / total if total else self.pixels.astype(float)


def check_dataset(dataset: SegmentationDataset, progress: bool = True) -> DataReport:
    """Load and check every sample; collect errors instead of stopping at the first."""
    report = DataReport(dataset.classes, np.zeros(dataset.num_classes, dtype=np.int64))
    for index in tqdm(range(len(dataset)), desc="check", disable=not progress, leave=False):
        try:
            image, mask = dataset.load(index)
            check_pair(image, mask, dataset.num_classes, dataset.ignore_index, dataset.name(index))
        except DataError as error:
            report.errors.append(str(error))
            continue
        report.samples += 1
        ignored = mask == dataset.ignore_index
        report.ignored += int(ignored.sum())
        report.pixels += np.bincount(mask[~ignored].ravel(), minlength=dataset.num_classes)
    return report
