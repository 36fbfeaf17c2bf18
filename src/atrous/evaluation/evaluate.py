"""Evaluation: every image whole, at its own resolution, through one inference strategy, into
confusion matrices (overall, and per trimap band near boundaries)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from atrous.data import DataConfig
from atrous.data.base import SegmentationDataset
from atrous.data.transforms import normalisation
from atrous.evaluation.metrics import (
    ConfusionMatrix,
    MultilabelConfusion,
    SegmentationScores,
    TrimapMeter,
)
from atrous.evaluation.protocols import ATROUS, EvalProtocol, prepare_pair, protocol_probabilities
from atrous.inference.pipeline import PipelineConfig, batches_by_size, decoded_items
from atrous.inference.predict import Segmenter
from atrous.inference.strategies import InferenceConfig, Network
from atrous.runtime.distributed import DistributedEnv
from atrous.runtime.precision import autocast


@dataclass
class Evaluation:
    """The confusion matrix over a dataset and, when asked for, one per trimap band width."""

    confusion: ConfusionMatrix | MultilabelConfusion
    trimap: TrimapMeter | None = None

    def scores(self) -> SegmentationScores:
        return self.confusion.scores()

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true label maps."""
        self.confusion.update(prediction, target)
        if self.trimap is not None:
            self.trimap.update(prediction, target)

    def reduce(self) -> None:
        """Sum every matrix over the processes."""
        self.confusion.reduce()
        if self.trimap is not None:
            self.trimap.reduce()


@dataclass
class Sample:
    """One validation pair after normalisation, with its index in the dataset."""

    index: int
    image: torch.Tensor  # (3, H, W) normalised
    mask: torch.Tensor  # (H, W) labels

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.image.shape[-2:])


class NormalisedPairs(Dataset):
    """``dataset``'s pairs at ``indices``, normalised as evaluation normalises (in loader
    workers when there are some); under a published source's ``protocol``, also resized or
    padded as that source evaluates."""

    def __init__(
        self,
        dataset: SegmentationDataset,
        indices: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        protocol: EvalProtocol = ATROUS,
    ) -> None:
        self.dataset, self.indices = dataset, list(indices)
        self.mean, self.std, self.protocol = mean, std, protocol
        self.transform = normalisation(mean, std)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Sample:
        index = self.indices[position]
        if self.protocol != ATROUS:
            image, mask = (t.as_subclass(torch.Tensor) for t in self.dataset[index])
            ignore = self.dataset.ignore_index
            image, mask = prepare_pair(image, mask, self.protocol, self.mean, self.std, ignore)
            return Sample(index, image, mask)
        image, mask = self.transform(*self.dataset[index])
        return Sample(index, image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor))


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
    pipeline: PipelineConfig = PipelineConfig(workers=0, batch_size=1),  # noqa: B008
    multilabel: bool = False,
    protocol: EvalProtocol = ATROUS,
) -> Evaluation:
    """Score ``model`` over ``dataset``, each image whole at its own size, summed over processes.

    ``inference`` picks the strategy (eval output stride, scales, flip, sliding window). Process
    r evaluates images r, r + world_size, … (no padding, so every image counts once).
    ``pipeline`` decodes in loader workers and batches images of one size (the same scores).
    A ``multilabel`` model's classes are scored one by one (sigmoid above 0.5 against (K, H, W)
    targets). ``protocol``: atrous's own, or a published source's (:mod:`.protocols`).
    """
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    strategy = inference or InferenceConfig()
    evaluation = _empty_evaluation(dataset, trimap_widths, trimap_source, env.device, multilabel)
    indices = range(env.rank, len(dataset), env.world_size)
    pairs = NormalisedPairs(dataset, indices, mean, std, protocol)
    items = decoded_items(pairs, pipeline.workers)
    show = progress and env.is_main
    with tqdm(total=len(pairs), desc="evaluate", disable=not show, leave=False) as bar:
        for batch in batches_by_size(
            items, pipeline.batch_size, attrgetter("size"), pipeline.max_pending
        ):
            images = torch.stack([sample.image for sample in batch]).to(env.device)
            masks = torch.stack([sample.mask for sample in batch]).to(env.device)
            with autocast(env.device, precision):
                probabilities = protocol_probabilities(
                    model, images, protocol, strategy, multilabel
                )
            chosen = probabilities > 0.5 if multilabel else probabilities.argmax(1)
            evaluation.update(chosen, masks)
            bar.update(len(batch))
    evaluation.reduce()
    if was_training:
        model.train()
    return evaluation


def _empty_evaluation(
    dataset: SegmentationDataset,
    trimap_widths: Sequence[int],
    trimap_source: str,
    device: torch.device,
    multilabel: bool,
) -> Evaluation:
    classes, ignore = dataset.num_classes, dataset.ignore_index
    if multilabel:
        if trimap_widths:
            raise ValueError("trimap scores need one class per pixel; this model is multilabel")
        return Evaluation(MultilabelConfusion(classes, ignore, device=device))
    trimap = None
    if trimap_widths:
        trimap = TrimapMeter(list(trimap_widths), classes, ignore, trimap_source, device)
    return Evaluation(ConfusionMatrix(classes, ignore, device), trimap)


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


def evaluate_segmenter(
    segmenter: Segmenter,
    dataset: SegmentationDataset,
    env: DistributedEnv,
    progress: bool = True,
    trimap: Sequence[int] = (),
    trimap_source: str = "void",
    pipeline: PipelineConfig = PipelineConfig(),  # noqa: B008
    protocol: EvalProtocol = ATROUS,
) -> Evaluation:
    """Confusion matrices of ``segmenter`` over ``dataset`` (split over ``env``'s processes),
    with the same normalisation, precision and inference it gives every image; ``protocol``:
    atrous's own or a published source's."""
    return evaluate_dataset(
        segmenter.network,
        dataset,
        segmenter.mean,
        segmenter.std,
        env,
        segmenter.precision,
        progress,
        segmenter.inference,
        trimap,
        trimap_source,
        pipeline,
        segmenter.multilabel,
        protocol,
    )


def run_data_config(model: str | Path) -> DataConfig:
    """The dataset a model was trained on, from its run's ``config.yaml`` (beside a checkpoint
    or beside the saved ``model/`` folder that training writes)."""
    path = Path(model)
    for candidate in (path.parent / "config.yaml", path / "config.yaml"):
        if candidate.is_file():
            run = yaml.safe_load(candidate.read_text())
            data = run.get("data") if isinstance(run, dict) else None
            return DataConfig(**(data or {}))
    raise ValueError(
        f"cannot tell which dataset {path} was trained on (no config.yaml beside it); "
        "name one with --data.dataset and --data.root"
    )


def default_report_path(model: str | Path, split: str) -> Path:
    """``eval_<split>.json`` in the model's folder (its run folder for a checkpoint file)."""
    path = Path(model)
    return (path if path.is_dir() else path.parent) / f"eval_{split}.json"
