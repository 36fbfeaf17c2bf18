"""``atrous eval`` as one library call: :func:`evaluate_model` scores a model named as any
command names one (a folder, a checkpoint, an ``.onnx`` file, a published checkpoint) on a
dataset split, with the protocol asked for or, for a published checkpoint evaluated with default
options, the protocol of its published score, and writes the report
(:mod:`atrous.evaluation.report`). The output file is checked before the run, so a long
evaluation never ends in an unwritable path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from atrous.data import DataConfig, SegmentationDataset, build_dataset
from atrous.errors import InputError, UsageError, require_writable
from atrous.evaluation.evaluate import default_report_path, evaluate_segmenter, run_data_config
from atrous.evaluation.protocols import ATROUS, EvalProtocol, ProtocolName
from atrous.evaluation.report import EvaluationReport, write_report
from atrous.hub.load import load_segmenter
from atrous.hub.published import fetch
from atrous.hub.registry import PublishedScore, get_published, is_published, published_entry
from atrous.inference.fast import CALIBRATION_IMAGES
from atrous.inference.pipeline import PipelineConfig
from atrous.inference.predict import Segmenter, fast_segmenter
from atrous.inference.strategies import InferenceConfig
from atrous.runtime.distributed import init_distributed, shutdown_distributed

Precision = Literal["fp32", "bf16", "fp16", "int8"]


def evaluate_model(
    model: str,
    data: DataConfig | None = None,
    split: str = "val",
    inference: InferenceConfig | None = None,
    score: int = 0,
    protocol: ProtocolName = "atrous",
    trimap: Sequence[int] = (),
    trimap_source: Literal["void", "edges"] = "void",
    precision: Precision = "fp32",
    device: str = "auto",
    output: str | Path | None = None,
    progress: bool = True,
    fast: bool = False,
    pipeline: PipelineConfig | None = None,
    runtime: str | None = None,
) -> EvaluationReport | None:
    """Score ``model`` on ``split`` of ``data`` (default: the dataset it was trained on) and
    write the report to ``output`` (default: eval_<split>.json beside the model); None on the
    processes of a torchrun job other than rank 0. The options are ``atrous eval``'s (a
    ``runtime`` implies ``fast``; auto measures, :mod:`atrous.inference.runtimes`)."""
    fast = fast or runtime is not None
    if precision == "int8" and not fast:
        raise UsageError("--precision int8 needs --fast true")
    inference, published = published_protocol(model, inference or InferenceConfig(), score)
    measured = evaluation_protocol(model, protocol)
    path = report_path(model, split, output)
    env = init_distributed(device)
    try:
        data = dataclasses.replace(data or training_data(model), val_split=split)
        dataset = build_dataset(data, "val")
        segmenter = evaluation_segmenter(
            model, inference, precision, fast, dataset, env.device, runtime
        )
        pipeline = pipeline or PipelineConfig()
        result = evaluate_segmenter(
            segmenter, dataset, env, progress, tuple(trimap), trimap_source, pipeline, measured
        )
    finally:
        shutdown_distributed()
    if not env.is_main:
        return None
    record = {"model": model, "dataset": dataclasses.asdict(data), "split": split}
    record.update(images=len(dataset), inference=dataclasses.asdict(inference))
    record.update(precision=precision, fast=fast, protocol=measured.describe())
    fast_report = getattr(segmenter.network, "report", None)
    record["runtime"] = fast_report and (fast_report.choice or fast_report.backend)
    record["published"] = dataclasses.asdict(published) if published is not None else None
    report = write_report(result, dataset.classes, record, trimap_source, path, segmenter.task)
    report.published = published
    return report


def report_path(model: str, split: str, output: str | Path | None) -> Path:
    """The report file, checked writable before the run: its folder must exist."""
    if output is None:
        folder = fetch(model) if is_published(model) else Path(model)  # published: its cache
        return default_report_path(folder, split)
    return require_writable(output, "--output")


def evaluation_segmenter(
    model: str,
    inference: InferenceConfig,
    precision: str,
    fast: bool,
    dataset: SegmentationDataset,
    device: torch.device,
    runtime: str | None = None,
) -> Segmenter:
    """The segmenter ``atrous eval`` scores: int8 calibrates on the split's first images."""
    segmenter = load_segmenter(model, inference, "fp32" if fast else precision, device)
    if fast:
        count = min(CALIBRATION_IMAGES, len(dataset))
        images = [dataset.load(i)[0] for i in range(count)]
        segmenter = fast_segmenter(segmenter, precision, images, runtime or "auto")
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
            f"--score {index}: {model} has {len(scores)} published scores (0…{len(scores) - 1})"
        )
    score = scores[index]
    if inference != InferenceConfig():  # options given: the user's protocol, for comparison
        return inference, score
    chosen = score.protocol
    return InferenceConfig(chosen.output_stride, chosen.scales, chosen.flip), score


def evaluation_protocol(model: str, name: ProtocolName) -> EvalProtocol:
    """``--protocol``: atrous's own, or the one the model's published figures were made with."""
    if name == "atrous":
        return ATROUS
    entry = published_entry(model)
    if entry is None:
        raise UsageError(
            f"--protocol official needs a published checkpoint (atrous models --pretrained) or a "
            f"folder fetched from one; {model} is neither: evaluate it with --protocol atrous"
        )
    return entry.measured_with


def training_data(model: str) -> DataConfig:
    """The dataset ``model`` was trained on: a published checkpoint's, or its run's."""
    if is_published(model):
        dataset = get_published(model).dataset
        if dataset is None:
            raise UsageError(f"{model} is an ImageNet backbone; there is nothing to evaluate")
        return DataConfig(dataset=dataset)
    return run_data_config(model)
