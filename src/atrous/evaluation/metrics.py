"""Segmentation metrics from confusion counts, accumulated on the device.

Multiclass (and binary, two classes): one (K × K) matrix, rows ground truth, columns predictions.
Multilabel: one 2 × 2 matrix per class (is the label on at this pixel, in truth and prediction).
Pixels with the ignore label are left out. Every per-class score comes from the class's true
positives, false positives and false negatives (``class_scores``), so both kinds share the
formulas. A score whose denominator is zero is NaN and left out of its mean: IoU and Dice of a
class absent from both truth and prediction, precision of a class never predicted, recall of a
class never in the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from atrous.data.base import IGNORE_INDEX


@dataclass(frozen=True)
class ForegroundScores:
    """A binary task's scores of its foreground class (class 1); F1 of a class equals its Dice."""

    iou: float
    dice: float
    f1: float
    precision: float
    recall: float


@dataclass
class SegmentationScores:
    """Scores of one confusion matrix; per-class values are NaN where undefined (see module)."""

    iou: list[float]
    class_accuracy: list[float]
    pixel_accuracy: float
    mean_iou: float
    mean_class_accuracy: float
    frequency_weighted_iou: float
    absent_classes: list[int]
    dice: list[float]  # 2TP / (2TP + FP + FN), the F1 score
    precision: list[float]  # TP / (TP + FP)
    recall: list[float]  # TP / (TP + FN); equals class_accuracy
    mean_dice: float
    mean_precision: float
    mean_recall: float

    def foreground(self) -> ForegroundScores:
        """Class 1's scores, for a binary task (background 0, foreground 1)."""
        if len(self.iou) != 2:
            raise ValueError(
                f"a foreground summary needs a binary task (2 classes), got {len(self.iou)}"
            )
        return ForegroundScores(
            self.iou[1], self.dice[1], self.dice[1], self.precision[1], self.recall[1]
        )


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, NaN where the denominator is zero."""
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), nan)


def _mean(values: torch.Tensor) -> float:
    """Mean over the defined (non-NaN) values; NaN when none is."""
    defined = values[~values.isnan()]
    return defined.mean().item() if defined.numel() else float("nan")


def class_scores(
    true_positive: torch.Tensor,
    false_positive: torch.Tensor,
    false_negative: torch.Tensor,
    correct: torch.Tensor,
    total: torch.Tensor,
) -> SegmentationScores:
    """Per-class scores and their means from (K,) pixel counts.

    ``correct`` / ``total`` is the pixel accuracy (a multiclass matrix's trace over its sum; for
    multilabel, correct decisions over all (pixel, class) decisions). The frequency-weighted IoU
    weighs each class by its share of the truth pixels.
    """
    counts = (true_positive, false_positive, false_negative)
    tp, fp, fn = (c.cpu().to(torch.float64) for c in counts)
    iou = _ratio(tp, tp + fp + fn)
    dice = _ratio(2 * tp, 2 * tp + fp + fn)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    present = tp + fp + fn > 0
    frequency = (tp + fn) / (tp + fn).sum().clamp(min=1)
    return SegmentationScores(
        iou=iou.tolist(),
        class_accuracy=recall.tolist(),
        pixel_accuracy=(correct.cpu().to(torch.float64) / total.cpu().clamp(min=1)).item(),
        mean_iou=_mean(iou),
        mean_class_accuracy=_mean(recall),
        frequency_weighted_iou=(frequency[present] * iou[present]).sum().item(),
        absent_classes=[i for i, p in enumerate(present.tolist()) if not p],
        dice=dice.tolist(),
        precision=precision.tolist(),
        recall=recall.tolist(),
        mean_dice=_mean(dice),
        mean_precision=_mean(precision),
        mean_recall=_mean(recall),
    )


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
        m = self.matrix
        true_positive = m.diag()
        return class_scores(
            true_positive, m.sum(0) - true_positive, m.sum(1) - true_positive, m.trace(), m.sum()
        )


class MultilabelConfusion:
    """One 2 × 2 matrix per class, ``matrix[c, truth, prediction]`` (0 off, 1 on), for
    multilabel tasks whose classes overlap; ``reduce()`` sums over DDP ranks."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        threshold: float = 0.5,
        device: torch.device | str = "cpu",
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.threshold = threshold
        self.matrix = torch.zeros(num_classes, 2, 2, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``prediction`` (N, K, H, W) bool, 0/1 or sigmoid probabilities (on above
        ``threshold``); ``target`` (N, K, H, W) 0/1, the ignore label where a class is unknown."""
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(prediction.shape)} differs from target "
                f"{tuple(target.shape)}"
            )
        if target.ndim < 2 or target.shape[1] != self.num_classes:
            raise ValueError(
                f"multilabel target must be (N, {self.num_classes}, ...), got {tuple(target.shape)}"
            )
        on = self._binarise(prediction)
        valid = target != self.ignore_index
        truth = target[valid].to(torch.int64)
        if truth.numel() and (truth.min() < 0 or truth.max() > 1):
            raise ValueError("multilabel target values must be 0, 1 or the ignore label")
        shape = [1, self.num_classes] + [1] * (target.ndim - 2)
        classes = torch.arange(self.num_classes, device=target.device).view(shape)
        index = classes.expand_as(target)[valid] * 4 + truth * 2 + on[valid].to(torch.int64)
        counts = torch.bincount(index, minlength=4 * self.num_classes)
        self.matrix += counts.view(self.num_classes, 2, 2).to(self.matrix.device)

    def _binarise(self, prediction: torch.Tensor) -> torch.Tensor:
        """Predictions as on/off: bools as they are, 0/1 integers, probabilities thresholded."""
        if prediction.dtype == torch.bool:
            return prediction
        if prediction.numel() and (prediction.min() < 0 or prediction.max() > 1):
            kind = "probabilities in [0, 1] (sigmoid of the logits)"
            raise ValueError(f"multilabel predictions must be 0/1 or {kind}")
        if prediction.is_floating_point():
            return prediction > self.threshold
        return prediction != 0

    def reduce(self) -> None:
        """Sum the matrices over all processes of the default group (no-op when not distributed)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def scores(self) -> SegmentationScores:
        """Scores of each class's positive label; pixel accuracy over (pixel, class) decisions."""
        m = self.matrix
        true_positive = m[:, 1, 1]
        correct = (true_positive + m[:, 0, 0]).sum()
        return class_scores(true_positive, m[:, 0, 1], m[:, 1, 0], correct, m.sum())


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
