"""Segmentation metrics from one confusion matrix, accumulated on the device.

Rows are ground truth, columns predictions; pixels with the ignore label are left out. Classes
absent from both prediction and ground truth have no IoU (NaN) and are excluded from the means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from atrous.data.base import IGNORE_INDEX


@dataclass
class SegmentationScores:
    """Scores of one confusion matrix; per-class values are NaN for absent classes."""

    iou: list[float]
    class_accuracy: list[float]
    pixel_accuracy: float
    mean_iou: float
    mean_class_accuracy: float
    frequency_weighted_iou: float
    absent_classes: list[int]


class ConfusionMatrix:
    """Accumulates (num_classes × num_classes) pixel counts; ``reduce()`` sums over DDP ranks."""

    def __init__(
        self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu"
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true label maps of the same shape."""
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(prediction.shape)} differs from target "
                f"{tuple(target.shape)}"
            )
        valid = target != self.ignore_index
        target = target[valid].to(torch.int64)
        prediction = prediction[valid].to(torch.int64)
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(
                f"target labels must be in [0, {self.num_classes}) or the ignore label"
            )
        n = self.num_classes
        counts = torch.bincount(target * n + prediction, minlength=n * n)
        self.matrix += counts.view(n, n).to(self.matrix.device)

    def reduce(self) -> None:
        """Sum the matrix over all processes of the default group (no-op when not distributed)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def scores(self) -> SegmentationScores:
        m = self.matrix.to(torch.float64).cpu()
        true_positive = m.diag()
        gt_pixels = m.sum(1)
        predicted = m.sum(0)
        union = gt_pixels + predicted - true_positive
        present = union > 0
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(present, true_positive / union.clamp(min=1), nan)
        class_accuracy = torch.where(gt_pixels > 0, true_positive / gt_pixels.clamp(min=1), nan)
        total = m.sum().clamp(min=1)
        frequency = gt_pixels / total
        return SegmentationScores(
            iou=iou.tolist(),
            class_accuracy=class_accuracy.tolist(),
            pixel_accuracy=(true_positive.sum() / total).item(),
            mean_iou=iou[present].mean().item() if present.any() else float("nan"),
            mean_class_accuracy=class_accuracy[gt_pixels > 0].mean().item()
            if (gt_pixels > 0).any()
            else float("nan"),
            frequency_weighted_iou=(frequency[present] * iou[present]).sum().item(),
            absent_classes=[i for i, p in enumerate(present.tolist()) if not p],
        )


def boundary_band(
    target: torch.Tensor, width: int, ignore_index: int = IGNORE_INDEX, source: str = "void"
) -> torch.Tensor:
    """Pixels within ``width`` (Chebyshev distance) of a boundary seed, as a boolean map.

    The paper's trimap (§4.4, Fig. 5a) dilates PASCAL VOC's ``void`` annotations, which outline
    every object (``source="void"``). Datasets without such outlines can seed the band with label
    edges instead (``source="edges"``: both pixels of every 4-neighbour pair with different labels).
    ``target`` is (H, W) or (N, H, W); the result has the same shape.
    """
    if width < 0:
        raise ValueError(f"trimap band width must be >= 0, got {width}")
    labels = target.unsqueeze(0) if target.ndim == 2 else target
    if source == "void":
        seeds = labels == ignore_index
    elif source == "edges":
        seeds = torch.zeros_like(labels, dtype=torch.bool)
        rows = labels[:, 1:, :] != labels[:, :-1, :]
        cols = labels[:, :, 1:] != labels[:, :, :-1]
        seeds[:, 1:, :] |= rows
        seeds[:, :-1, :] |= rows
        seeds[:, :, 1:] |= cols
        seeds[:, :, :-1] |= cols
    else:
        raise ValueError(f"trimap source must be 'void' or 'edges', got {source!r}")
    band = seeds.unsqueeze(1).float()
    if width > 0:  # a square dilation, as two 1-D max filters
        size = 2 * width + 1
        band = F.max_pool2d(band, (1, size), stride=1, padding=(0, width))
        band = F.max_pool2d(band, (size, 1), stride=1, padding=(width, 0))
    band = band[:, 0] > 0
    return band[0] if target.ndim == 2 else band


class TrimapMeter:
    """One confusion matrix per band width: mIoU near object boundaries (paper §4.4, Fig. 5a)."""

    def __init__(
        self,
        widths: list[int],
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        source: str = "void",
        device: torch.device | str = "cpu",
    ) -> None:
        self.source, self.ignore_index = source, ignore_index
        self.matrices = {
            width: ConfusionMatrix(num_classes, ignore_index, device) for width in widths
        }

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true label maps, counting only pixels inside each band."""
        for width, confusion in self.matrices.items():
            band = boundary_band(target, width, self.ignore_index, self.source)
            confusion.update(prediction[band], target[band])

    def reduce(self) -> None:
        for confusion in self.matrices.values():
            confusion.reduce()

    def scores(self) -> dict[int, SegmentationScores]:
        return {width: confusion.scores() for width, confusion in self.matrices.items()}
