"""The evaluation protocol and its report: ``atrous eval`` as one library call.

:func:`evaluate_model` scores a model on a dataset split with the protocol asked for (or, for a
published checkpoint evaluated with default options, the protocol of its published score),
writes the JSON report (scores, confusion matrix, protocol, published score) and the confusion
heatmap beside it, and returns what it found for the caller to print. The output file is
checked before the run, so a long evaluation never ends in an unwritable path.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from atrous.data import DataConfig, SegmentationDataset, build_dataset
from atrous.errors import InputError, UsageError, require_writable
from atrous.evaluation.evaluate import Evaluation, scores_to_dict
from atrous.evaluation.metrics import ConfusionMatrix, SegmentationScores
from atrous.evaluation.plots import plot_confusion
from atrous.hub.published import PublishedScore, get_published, is_published, resolve_source
from atrous.inference.fast import CALIBRATION_IMAGES
from atrous.inference.pipeline import PipelineConfig
from atrous.inference.predict import (
    Segmenter,
    default_report_path,
    fast_segmenter,
    load_segmenter,
    run_data_config,
)
from atrous.inference.strategies import InferenceConfig
from atrous.runtime.distributed import init_distributed, shutdown_distributed

Precision = Literal["fp32", "bf16", "fp16", "int8"]


@dataclass
class EvaluationReport:
    """What an evaluation found and wrote: ``record`` is the JSON file's content."""

    scores: SegmentationScores
    names: tuple[str, ...]
    task: str
    record: dict[str, object]
    published: PublishedScore | None
    trimap: dict[int, SegmentationScores]
    path: Path
    heatmap: Path | None = None


def evaluate_model(
    model: str,
    data: DataConfig | None = None,
    split: str = "val",
    inference: InferenceConfig | None = None,
    protocol: int = 0,
    trimap: Sequence[int] = (),
    trimap_source: Literal["void", "edges"] = "void",
    precision: Precision = "fp32",
    device: str = "auto",
    output: str | Path | None = None,
    progress: bool = True,
    fast: bool = False,
    pipeline: PipelineConfig | None = None,
) -> EvaluationReport | None:
    """Score ``model`` on ``split`` of ``data`` (default: the dataset it was trained on) and
    write the report to ``output`` (default: eval_<split>.json beside the model); None on the
    processes of a torchrun job other than rank 0. The options are ``atrous eval``'s."""
    if precision == "int8" and not fast:
        raise UsageError("--precision int8 needs --fast true")
    inference, published = published_protocol(model, inference or InferenceConfig(), protocol)
    path = report_path(model, split, output)
    env = init_distributed(device)
    try:
        data = dataclasses.replace(data or training_data(model), val_split=split)
        dataset = build_dataset(data, "val")
        segmenter = evaluation_segmenter(model, inference, precision, fast, dataset, env.device)
        result = segmenter.evaluate(
            dataset, env, progress, tuple(trimap), trimap_source, pipeline or PipelineConfig()
        )
    finally:
        shutdown_distributed()
    if not env.is_main:
        return None
    record = {"model": model, "dataset": dataclasses.asdict(data), "split": split}
    record.update(images=len(dataset), inference=dataclasses.asdict(inference))
    record.update(precision=precision, fast=fast)
    return write_report(
        result, dataset.classes, record, published, trimap_source, path, segmenter.task
    )


def report_path(model: str, split: str, output: str | Path | None) -> Path:
    """The report file, checked writable before the run: its folder must exist."""
    if output is None:
        return default_report_path(resolve_source(model), split)
    return require_writable(output, "--output")


def write_report(
    result: Evaluation,
    names: Sequence[str],
    record: dict[str, object],
    published: PublishedScore | None,
    trimap_source: str,
    path: Path,
    task: str = "multiclass",
) -> EvaluationReport:
    """Write the JSON report and, for a (K × K) confusion matrix, its heatmap beside it
    (``<stem>_confusion.png``)."""
    scores = result.scores()
    bands = result.trimap.scores() if result.trimap is not None else {}
    record["scores"] = scores_to_dict(scores, names, task)
    record["confusion_matrix"] = result.confusion.matrix.tolist()  # [truth][prediction]
    record["published"] = dataclasses.asdict(published) if published is not None else None
    if result.trimap is not None:
        record["trimap"] = {
            "source": trimap_source,
            "mean_iou": {str(w): scores_to_dict(s, names)["mean_iou"] for w, s in bands.items()},
        }
    path.write_text(json.dumps(record, indent=2))
    report = EvaluationReport(scores, tuple(names), task, record, published, bands, path)
    if isinstance(result.confusion, ConfusionMatrix):
        report.heatmap = path.with_name(f"{path.stem}_confusion.png")
        plot_confusion(result.confusion.matrix, names, report.heatmap)
    return report


def evaluation_segmenter(
    model: str,
    inference: InferenceConfig,
    precision: str,
    fast: bool,
    dataset: SegmentationDataset,
    device: torch.device,
) -> Segmenter:
    """The segmenter ``atrous eval`` scores: int8 calibrates on the split's first images."""
    segmenter = load_segmenter(model, inference, "fp32" if fast else precision, device)
    if fast:
        count = min(CALIBRATION_IMAGES, len(dataset))
        segmenter = fast_segmenter(segmenter, precision, [dataset.load(i)[0] for i in range(count)])
    if segmenter.num_classes != dataset.num_classes:
        raise InputError(
            f"the model {model} predicts {segmenter.num_classes} classes, the dataset has "
            f"{dataset.num_classes}; evaluate it on the dataset it was trained on (--data.*)"
        )
    return segmenter


def published_protocol(
    model: str, inference: InferenceConfig, index: int
) -> tuple[InferenceConfig, PublishedScore | None]:
    """For a published checkpoint evaluated with default options: the inference of its
    ``index``-th published score, and that score (to print beside ours)."""
    if not is_published(model):
        return inference, None
    scores = get_published(model).scores
    if not scores:
        return inference, None
    if not 0 <= index < len(scores):
        raise UsageError(
            f"--protocol {index}: {model} has {len(scores)} published scores (0…{len(scores) - 1})"
        )
    score = scores[index]
    if inference != InferenceConfig():  # options given: the user's protocol, for comparison
        return inference, score
    chosen = score.protocol
    return InferenceConfig(chosen.output_stride, chosen.scales, chosen.flip), score


def training_data(model: str) -> DataConfig:
    """The dataset ``model`` was trained on: a published checkpoint's, or its run's."""
    if is_published(model):
        dataset = get_published(model).dataset
        if dataset is None:
            raise UsageError(f"{model} is an ImageNet backbone; there is nothing to evaluate")
        return DataConfig(dataset=dataset)
    return run_data_config(model)
