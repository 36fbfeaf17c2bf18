"""Evaluation: every image whole, at its own resolution, through one inference strategy, into
confusion matrices (overall, and per trimap band near boundaries)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from atrous.data.base import SegmentationDataset
from atrous.data.transforms import normalisation
from atrous.distributed import DistributedEnv
from atrous.inference import InferenceConfig, Network, segment
from atrous.metrics import ConfusionMatrix, MultilabelConfusion, SegmentationScores, TrimapMeter
from atrous.precision import autocast


@dataclass
class Evaluation:
    """The confusion matrix over a dataset and, when asked for, one per trimap band width."""

    confusion: ConfusionMatrix | MultilabelConfusion
    trimap: TrimapMeter | None = None

    def scores(self) -> SegmentationScores:
        return self.confusion.scores()


@torch.no_grad()
def evaluate_dataset(
    model: Network,
    dataset: SegmentationDataset,
    mean: Sequence[float],
    std: Sequence[float],
    env: DistributedEnv,
    precision: str = "fp32",
    progress: bool = True,
    inference: InferenceConfig | None = None,
    trimap_widths: Sequence[int] = (),
    trimap_source: str = "void",
) -> Evaluation:
    """Score ``model`` over ``dataset``, each image whole at its own size, summed over processes.

    ``inference`` picks the strategy (eval output stride, scales, flip, sliding window). Process
    r evaluates images r, r + world_size, … (no padding, so every image counts once).
    """
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    strategy = inference or InferenceConfig()
    transform = normalisation(mean, std)
    confusion = ConfusionMatrix(dataset.num_classes, dataset.ignore_index, env.device)
    trimap = None
    if trimap_widths:
        trimap = TrimapMeter(
            list(trimap_widths),
            dataset.num_classes,
            dataset.ignore_index,
            trimap_source,
            env.device,
        )
    indices = range(env.rank, len(dataset), env.world_size)
    for index in tqdm(
        indices, desc="evaluate", disable=not (progress and env.is_main), leave=False
    ):
        image, mask = transform(*dataset[index])
        mask = mask.to(env.device)
        with autocast(env.device, precision):
            probabilities = segment(model, image.unsqueeze(0).to(env.device), strategy)
        prediction = probabilities.argmax(1)[0]
        confusion.update(prediction, mask)
        if trimap is not None:
            trimap.update(prediction, mask)
    confusion.reduce()
    if trimap is not None:
        trimap.reduce()
    if was_training:
        model.train()
    return Evaluation(confusion, trimap)


def scores_to_dict(
    scores: SegmentationScores, class_names: Sequence[str], task: str = "multiclass"
) -> dict[str, Any]:
    """JSON-ready scores; undefined values (e.g. IoU of a class in neither prediction nor
    truth) are null. A binary task adds its foreground class's IoU, Dice, F1, precision, recall."""

    def number(value: float) -> float | None:
        return None if math.isnan(value) else value

    per_class = zip(
        class_names,
        scores.iou,
        scores.class_accuracy,
        scores.dice,
        scores.precision,
        scores.recall,
        strict=True,
    )
    result = {
        "mean_iou": number(scores.mean_iou),
        "pixel_accuracy": number(scores.pixel_accuracy),
        "mean_class_accuracy": number(scores.mean_class_accuracy),
        "frequency_weighted_iou": number(scores.frequency_weighted_iou),
        "mean_dice": number(scores.mean_dice),
        "mean_precision": number(scores.mean_precision),
        "mean_recall": number(scores.mean_recall),
        "per_class": {
            name: {
                "iou": number(iou),
                "accuracy": number(accuracy),
                "dice": number(dice),
                "precision": number(precision),
                "recall": number(recall),
            }
            for name, iou, accuracy, dice, precision, recall in per_class
        },
        "absent_classes": [class_names[i] for i in scores.absent_classes],
    }
    if task == "binary":
        foreground = asdict(scores.foreground())
        result["foreground"] = {key: number(value) for key, value in foreground.items()}
    return result
