"""What a training run records about a saved model: kept in ``config.json`` and shown by its
model card (:mod:`atrous.models.card`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainingSummary:
    """How a saved model was trained and how it scored; kept in ``config.json`` and the card."""

    dataset: str  # the dataset's name in atrous (voc_aug, cityscapes, folder, synthetic, ...)
    train_images: int  # images in the training split
    iterations: int  # optimizer steps
    batch_size: int  # global batch
    crop_size: int  # training crop side in pixels
    optimizer: str  # sgd or adamw
    learning_rate: float  # peak learning rate (poly schedule)
    precision: str  # fp32, bf16 or fp16 autocast
    val_split: str | None = None  # the split validation scored
    val_images: int | None = None  # images in it
    val_miou: float | None = None  # best validation mIoU, whole images, single scale
    class_iou: tuple[float | None, ...] | None = None  # per class at that point (None: absent)
    images_per_s: float | None = None  # training throughput, median over the logged intervals
    latency_ms: float | None = None  # median batch-1 forward at crop size, eval mode
    latency_device: str | None = None  # where the latency was measured

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.class_iou is not None:
            data["class_iou"] = list(self.class_iou)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> TrainingSummary:
        """Read back :meth:`to_dict`; unknown or missing keys are a ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        if unknown := sorted(set(data) - names):
            raise ValueError(f"{source}: unknown training keys {unknown}")
        if missing := sorted(required - set(data)):
            raise ValueError(f"{source}: training summary lacks {missing}")
        values = dict(data)
        if values.get("class_iou") is not None:
            values["class_iou"] = tuple(values["class_iou"])
        return cls(**values)
