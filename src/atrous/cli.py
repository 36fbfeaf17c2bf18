"""The ``atrous`` command: a thin layer over the library's functions.

atrous models                                  # named configurations
atrous profile                                 # X-65 DeepLabV3+ at 513×513, OS16
atrous profile --model deeplabv3plus_resnet101_beta --output_stride 8 --separable false
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import traceback
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import yaml
from jsonargparse import CLI, ArgumentParser, auto_parser
from jsonargparse.typing import PositiveInt
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from atrous.apps.demo import run_demo
from atrous.apps.evaluate import evaluate_model
from atrous.apps.export import ExportFormat, ExportOptions, ExportPrecision, export_model
from atrous.apps.predict import (
    PredictInputs,
    PredictOutputs,
    PredictSummary,
    load_predictor,
    predict_inputs,
)
from atrous.apps.serve import MAX_UPLOAD_MB, launch
from atrous.convert.dispatch import convert_source
from atrous.data import (
    DataConfig,
    SyntheticScenes,
)
from atrous.data.balance import inverse_log_weights, median_frequency_weights
from atrous.data.check_data import check_data as run_check_data
from atrous.data.check_data import data_options, fixed_options
from atrous.data.checks import DataReport, LabelProblem
from atrous.data.labels import LabelFormat
from atrous.data.labels import import_labels as run_import_labels
from atrous.errors import (
    REPORT_TO,
    AtrousError,
    UsageError,
    missing_dependency,
)
from atrous.evaluation.metrics import SegmentationScores
from atrous.evaluation.protocols import ATROUS, ProtocolName
from atrous.evaluation.report import EvaluationReport
from atrous.export.onnx import ExportCheckError
from atrous.hub.registry import (
    published_table,
)
from atrous.inference.pipeline import PipelineConfig
from atrous.inference.predict import DEMO_MODEL
from atrous.inference.strategies import InferenceConfig, describe_inference
from atrous.models.config import ModelConfig
from atrous.models.profile import profile_model
from atrous.models.zoo import create_model, get_config, list_models
from atrous.training.config import OptimConfig, RunConfig, TrainConfig
from atrous.training.loop import TrainingPreempted
from atrous.training.loop import train as run_training
from atrous.training.losses import LossConfig
from atrous.training.overfit import OverfitFailed, overfit_check

#: ``--runtime``: auto measures the installed runtimes (atrous.inference.runtimes).
Runtime = Literal["auto", "torch", "onnxruntime", "openvino", "tflite"]

console = Console()
errors = Console(stderr=True)  # failures: one line each on stderr


def models(pretrained: bool = False) -> None:
    """List the named model configurations with their parameters and Mult-Adds at 513×513.

    Args:
        pretrained: list the published trained checkpoints instead (atrous.load / --model names).
    """
    if pretrained:  # three columns: the longest name whole within 80 characters
        rows = published_table()
        table = Table(*rows[0])
        for row in rows:
            table.add_row(*row.values())
        console.print(table)
        console.print("Downloaded and converted on first use; then read from the cache offline.")
        return
    table = Table()
    table.add_column("name", no_wrap=True)
    for column in ("decoder", "separable", "params (M)", "Mult-Adds (G)"):
        table.add_column(column, justify="right")
    for name in list_models():
        config = get_config(name)
        with torch.device("meta"):
            model = create_model(name)
        total = profile_model(model, (513, 513)).total
        table.add_row(
            name,
            "yes" if config.decoder else "no",
            "yes" if config.separable else "no",
            f"{total.params / 1e6:.2f}",
            f"{total.mult_adds / 1e9:.2f}",
        )
    console.print(table)
    console.print("Mult-Adds for 21 classes at output stride 16, as PyTorch computes them.")


def profile(
    model: str = "deeplabv3plus_xception65",
    height: PositiveInt = 513,
    width: PositiveInt = 513,
    output_stride: int = 16,
    num_classes: PositiveInt = 21,
    separable: bool | None = None,
) -> None:
    """Count parameters and Multiply-Adds per module group (backbone, ASPP, decoder, classifier).

    Args:
        model: a named configuration (see ``atrous models``).
        height: input height in pixels.
        width: input width in pixels.
        output_stride: 8, 16 or 32.
        num_classes: number of output classes.
        separable: separable ASPP/decoder convs; default: the named configuration's.
    """
    with torch.device("meta"):
        chosen = {} if separable is None else {"separable": separable}
        net = create_model(model, num_classes=num_classes, output_stride=output_stride, **chosen)
    result = profile_model(net, (height, width))
    console.print(
        f"{model}: {height}×{width}, output stride {output_stride}, {num_classes} classes, "
        f"separable={net.config.separable}"
    )
    console.print(Markdown(result.to_markdown()))
    console.print(
        "One Mult-Add = one multiply + one add. 'As TF1 computes' counts each dilated conv on the "
        "grid TensorFlow 1's SpaceToBatch pads it to, as the paper's tables do."
    )


def demo(output_dir: str = "runs/demo", iterations: int | None = None) -> None:
    """Train a small DeepLabV3+ on built-in scenes, evaluate it, write predictions and curves.

    Args:
        output_dir: where checkpoints, curves and predictions go.
        iterations: training steps (default: the demo recipe's).
    """
    result = run_demo(output_dir, iterations)
    scores = result.scores
    table = Table("class", "IoU")
    for name, iou in zip(SyntheticScenes.classes, scores.iou, strict=True):
        table.add_row(name, f"{iou:.3f}")
    console.print(table)
    console.print(
        f"validation mIoU {scores.mean_iou:.4f}, pixel accuracy {scores.pixel_accuracy:.4f} "
        f"({result.seconds / 60:.1f} min)"
    )
    console.print(f"curves:      {result.output_dir / 'curves.png'}")
    console.print(
        f"predictions: {result.predictions[0].parent} (grid.png: image | truth | prediction)"
    )
    console.print(f"checkpoints: {result.output_dir / 'best.pt'}, {result.output_dir / 'last.pt'}")
    console.print(f"model:       {result.output_dir / 'model'} (atrous.load)")
    console.print("next:        atrous predict photos/ · atrous eval · atrous export")


def train(
    model: ModelConfig = ModelConfig(),  # noqa: B008
    data: DataConfig = DataConfig(),  # noqa: B008
    optim: OptimConfig = OptimConfig(),  # noqa: B008
    run: RunConfig = RunConfig(),  # noqa: B008
    loss: LossConfig = LossConfig(),  # noqa: B008
) -> None:
    """Train a model; any field can come from --config YAML files and --section.field flags.

    Args:
        model: the model configuration (see ``atrous models`` for named ones).
        data: dataset, task (multiclass, binary, multilabel) and augmentation.
        optim: optimizer and learning-rate schedule.
        run: iterations, batch, precision, BN mode, logging, output folder.
        loss: loss terms and their weights, class weights, hard-pixel mining, auxiliary head.
    """
    if run.overfit_batch:
        overfit_check(TrainConfig(model, data, optim, run, loss))
        return
    result = run_training(TrainConfig(model, data, optim, run, loss))
    if result.scores is not None and result.iteration == run.iterations:
        which = " (the EMA's)" if run.ema_decay else ""
        console.print(f"final validation mIoU{which} {result.scores.mean_iou:.4f}")
    console.print(f"results in {result.output_dir}")


def check_data(
    data: DataConfig = DataConfig(),  # noqa: B008
    split: Literal["train", "val"] = "train",
    fix: str | None = None,
    chart: str | None = None,
    progress: bool = True,
) -> int:
    """Check every image/mask pair of a dataset, name the label conventions of its masks with
    the option that reads each, and report class frequencies and weights.

    Args:
        data: the dataset, with the options that train on it (--data.dataset folder
            --data.root my_data --data.task binary …).
        split: which of data's splits to check: train (data.train_split) or val.
        fix: write a converted copy of a folder dataset into this new folder (masks of class
            indices, classes.yaml, images copied); the originals are only read.
        chart: write the class-balance bar chart to this PNG file.
        progress: show progress bars.
    """
    result = run_check_data(data, split, fix, chart, progress)
    options = ["atrous", "check-data", *data_options(data)]
    options += ["--split", split] if split != "train" else []
    if result.report is not None:
        _print_class_table(result.report)
        console.print(
            f"{result.report.samples} of {result.samples} samples valid; "
            f"{result.report.ignored} ignored pixels"
        )
        for error in result.report.errors:
            errors.print(f"bad: {error}", style="red", markup=False, soft_wrap=True)
    _print_label_problems(result.diagnosis.problems, options)
    if result.chart is not None:
        console.print(f"class-balance chart: {result.chart}")
    if fix is not None:
        again = " ".join(["atrous", "check-data", *fixed_options(result, fix)])
        console.print(
            f"fixed copy: {result.fixed} image/mask pairs in {fix}; check it with: {again}",
            markup=False,
            soft_wrap=True,
        )
    return 0 if result.ok else 1


def _print_class_table(report: DataReport) -> None:
    """Pixels, share and the two class-weight schemes per class (0: a class never seen; none
    at all when no mask was valid)."""
    table = Table("class", "pixels", "share", "median-freq weight", "inverse-log weight")
    if report.pixels.any():
        median = median_frequency_weights(report.pixels, report.present_pixels)
        log = inverse_log_weights(report.pixels)
        weights = [(f"{m:.3f}", f"{v:.3f}") for m, v in zip(median, log, strict=True)]
    else:
        weights = [("-", "-")] * len(report.classes)
    rows = zip(report.classes, report.pixels, report.frequencies, weights, strict=True)
    for name, pixels, share, (median_weight, log_weight) in rows:
        table.add_row(name, str(int(pixels)), f"{100 * share:.2f}%", median_weight, log_weight)
    console.print(table)


def _print_label_problems(problems: Sequence[LabelProblem], command: list[str]) -> None:
    """Each problem, and for an option that fixes it the command line that tries it."""
    for problem in problems:
        kind, style = ("labels", "bold red") if problem.fatal else ("warning", "yellow")
        kind = "note" if problem.kind == "palette_png" else kind
        console.print(f"{kind}: {problem.message}", style=style, markup=False, soft_wrap=True)
        if problem.fix and problem.fix.startswith("--data."):
            line = " ".join([*command, problem.fix])
            console.print(f"  check again with: {line}", markup=False, soft_wrap=True)
        elif problem.fix == "--fix OUT":
            line = " ".join([*command, problem.fix])
            console.print(f"  write the copy with: {line}", markup=False, soft_wrap=True)


def evaluate(
    model: str = DEMO_MODEL,
    data: DataConfig | None = None,
    split: str = "val",
    inference: InferenceConfig = InferenceConfig(),  # noqa: B008
    score: int = 0,
    protocol: ProtocolName = "atrous",
    trimap: list[int] | None = None,
    trimap_source: Literal["void", "edges"] = "void",
    precision: Literal["fp32", "bf16", "fp16", "int8"] = "fp32",
    device: str = "auto",
    output: str | None = None,
    progress: bool = True,
    fast: bool = False,
    pipeline: PipelineConfig = PipelineConfig(),  # noqa: B008
    runtime: Runtime | None = None,
) -> None:
    """Score a model on a dataset: per-class IoU table, summary, JSON file; works under torchrun.

    Args:
        model: a saved model folder, a training checkpoint (.pt), an exported .onnx file, or a
            published checkpoint (tf:xception65_coco_voc_trainaug; atrous models --pretrained).
        data: the dataset; default: the one the model was trained on (its run's config.yaml, or
            a published checkpoint's).
        split: the split to score.
        inference: output stride, scales (paper: [0.5,0.75,1.0,1.25,1.5,1.75]), flip or tta, window.
        score: published checkpoints: which published score's OS, scales, flip (0: the first).
        protocol: 'atrous' (each image at its size) or 'official' (docs/protocols.md).
        trimap: band widths in pixels for mIoU near boundaries (paper Fig. 5a), e.g. [4,8,16].
        trimap_source: band around 'void' pixels (VOC) or around label 'edges'.
        precision: fp32, bf16 (CPU/GPU), fp16 (CUDA) or int8 (CPU, with --fast).
        device: auto, cpu, cuda, cuda:1, ...
        output: the JSON file (default: eval_<split>.json beside the model).
        progress: show a progress bar.
        fast: run the network optimised for inference (atrous.optimize_for_inference); int8
            calibrates on the split's first 8 images.
        pipeline: images per forward pass (of one size) and decoding processes.
        runtime: run the fast path (fp32 or int8) on this runtime (implies --fast); auto, the
            default of --fast on the CPU, measures the installed ones on the first image's size
            once per model and machine and takes the fastest that passes the check.
    """
    report = evaluate_model(
        model,
        data,
        split,
        inference,
        score,
        protocol,
        trimap or (),
        trimap_source,
        precision,
        device,
        output,
        progress,
        fast,
        pipeline,
        runtime,
    )
    if report is not None:  # rank 0 of a torchrun job prints
        print_evaluation(report)


def print_evaluation(report: EvaluationReport) -> None:
    """The scores, the protocol, the published score and the files written."""
    scores, names, record = report.scores, report.names, report.record
    _print_scores(scores, names, report.task)
    inference = InferenceConfig(**record["inference"])
    measured = record.get("protocol", ATROUS.describe())
    whole = None if measured == ATROUS.describe() else str(measured)
    console.print(
        f"protocol: {describe_inference(inference, whole)}, {record['precision']}, "
        f"{record['images']} images",
        soft_wrap=True,
    )
    published = report.published
    if published is not None:
        console.print(
            f"published: {published.miou:.2f} on {published.split} "
            f"({published.protocol.describe()}); measured here: {_percent(scores.mean_iou)}",
            soft_wrap=True,
        )
    if str(record.get("runtime") or "").startswith("runtime auto"):
        console.print(record["runtime"], soft_wrap=True)
    for width, band in report.trimap.items():
        console.print(f"trimap {width:>3} px: mIoU {_percent(band.mean_iou)}")
    for path in (report.path, report.heatmap):
        if path is not None:
            console.print(f"written: {path}", soft_wrap=True)


def _print_scores(scores: SegmentationScores, names: Sequence[str], task: str) -> None:
    table = Table("class", "IoU", "Dice/F1", "precision", "recall (accuracy)")
    per_class = zip(names, scores.iou, scores.dice, scores.precision, scores.recall, strict=True)
    for name, *values in per_class:
        table.add_row(name, *(_percent(value) for value in values))
    console.print(table)
    console.print(
        f"mIoU {_percent(scores.mean_iou)}  mean Dice/F1 {_percent(scores.mean_dice)}  "
        f"mean precision {_percent(scores.mean_precision)}  "
        f"mean recall (class accuracy) {_percent(scores.mean_recall)}  "
        f"pixel accuracy {_percent(scores.pixel_accuracy)}  "
        f"frequency-weighted IoU {_percent(scores.frequency_weighted_iou)}",
        soft_wrap=True,
    )
    if task == "binary":
        fg = scores.foreground()
        console.print(
            f"foreground ({names[1]}): IoU {_percent(fg.iou)}, Dice {_percent(fg.dice)}, "
            f"F1 {_percent(fg.f1)}, precision {_percent(fg.precision)}, "
            f"recall {_percent(fg.recall)}",
            soft_wrap=True,
        )
    if scores.absent_classes:
        absent = ", ".join(names[i] for i in scores.absent_classes)
        console.print(f"not in the mean (absent from truth and prediction): {absent}")


def predict(
    inputs: list[str],
    model: str = DEMO_MODEL,
    output_dir: str = "predictions",
    inference: InferenceConfig = InferenceConfig(),  # noqa: B008
    precision: Literal["fp32", "bf16", "fp16", "int8"] = "fp32",
    device: str = "auto",
    overlays: bool = True,
    figures: bool = False,
    progress: bool = True,
    fast: bool = False,
    pipeline: PipelineConfig = PipelineConfig(),  # noqa: B008
    save_confidence: bool = False,
    save_entropy: bool = False,
    save_masks: bool = False,
    runtime: Runtime | None = None,
) -> int:
    """Segment images: palette-PNG masks (masks/), colour overlays (overlays/), figures/;
    rasters (GeoTIFF, any band count) window by window to GeoTIFF masks (<stem>.tif); videos
    (.mp4, .mov, .mkv, …): the overlaid video <stem>.mp4.

    Args:
        inputs: image files, folders and glob patterns (any image mode; EXIF rotation applied);
            georeferenced TIFFs, GDAL formats, and any TIFF for a model of other than 3 bands
            are rasters (needs atrous[geo]; windows: --inference.window, default 512); video
            files (needs atrous[video]).
        model: a saved model folder, a training checkpoint (.pt), an exported .onnx file or a
            published checkpoint (tf:xception65_coco_voc_trainaug; atrous models --pretrained)
            (default: the model the last `atrous demo` saved).
        output_dir: where masks/, overlays/ and figures/ go; file stems are kept.
        inference: output stride, scales, flip or tta (hflip, vflip, hvflip, d4), sliding window.
        precision: fp32, bf16 (CPU/GPU), fp16 (CUDA) or int8 (CPU, with --fast).
        device: auto, cpu, cuda, ...
        overlays: write colour overlays.
        figures: also write image | overlay | labels side by side.
        progress: show a progress bar.
        fast: run the network optimised for inference (atrous.optimize_for_inference); int8
            calibrates on the first 8 input images (or a video's first frames).
        pipeline: images (video frames) per forward pass, decoding processes, writing threads.
        save_confidence: also write each pixel's probability of its class (the maximum), from
            the probabilities the mask comes from, as float16 confidence/<stem>.npy (rasters:
            a float32 GeoTIFF confidence/<stem>.tif).
        save_entropy: also write each pixel's entropy of the class probabilities (nats, 0 to
            log C) as float16 entropy/<stem>.npy (rasters: entropy/<stem>.tif).
        save_masks: videos: also write each frame's mask (masks/<stem>/<frame>.png).
        runtime: run the fast path (fp32 or int8) on this runtime (implies --fast); auto, the
            default of --fast on the CPU, measures the installed ones on the first image's size
            once per model and machine and takes the fastest that passes the check.
    """
    found = PredictInputs.find(inputs)  # no image to segment: said before the model loads
    segmenter = load_predictor(model, inference, precision, device, found, fast, runtime)
    if fast or runtime is not None:
        chosen = segmenter.network.report
        console.print(chosen.choice or f"runtime: {chosen.backend}", soft_wrap=True)
    maps = (("confidence",) if save_confidence else ()) + (("entropy",) if save_entropy else ())
    outputs = PredictOutputs(overlays, figures, maps, save_masks)
    summary = predict_inputs(segmenter, found, output_dir, outputs, progress, pipeline)
    return _print_predicted(summary, output_dir)


def _print_predicted(summary: PredictSummary, output_dir: str) -> int:
    """Each video's size, rate and speed, the images segmented and each failure; the exit
    code (1 when any input failed)."""
    for video in summary.videos:
        console.print(
            f"{video.video.stem}: {video.frames} frames of {video.size[1]}×{video.size[0]} at "
            f"{float(video.rate or 0):g} frames/s, segmented at "
            f"{video.frames_per_second:.1f} frames/s; written {video.video}",
            markup=False,
            soft_wrap=True,
        )
    report = summary.report
    if report.segmented or report.failed or not summary.videos:
        console.print(f"{report.segmented} images segmented; results in {output_dir}")
    for _, message in report.failed:
        errors.print(f"error: {message}", style="red", markup=False, soft_wrap=True)
    return 1 if report.failed else 0


def export(
    model: str = DEMO_MODEL,
    output: str = "model.onnx",
    format: ExportFormat = "onnx",
    opset: int = 18,
    check: bool = True,
    precision: ExportPrecision = "fp32",
    calibration: str | None = None,
    size: list[int] | None = None,
) -> None:
    """Export a model for deployment (docs/deployment.md has the table of formats).

    Args:
        model: a saved model folder, a training checkpoint (.pt) or a published checkpoint.
        output: the file to write (default model.onnx; openvino: model.xml, weights in
            model.bin; tflite: model.tflite; coreml: model.mlpackage).
        format: onnx (checked against ONNX Runtime at two sizes), pt2 (torch.export), openvino
            (IR, checked in OpenVINO at f32 at two sizes), tflite (LiteRT at one size, checked in
            its interpreter), coreml (.mlpackage at one size; checked on macOS only) or tensorrt
            (ONNX that TensorRT accepts: int8 symmetric QDQ, checked in ONNX Runtime).
        opset: ONNX opset version (18 to 23).
        check: compare the exported file's outputs with the eager model's (fp32 fails beyond ten
            times the model's own fp32 rounding, at least 1e-4 of the logits' scale).
        precision: fp32; int8 for openvino (NNCF), tflite and tensorrt (QDQ); fp16 for coreml.
        calibration: int8: images to calibrate on (a folder, files, globs; the first 8).
        size: the input's HEIGHT WIDTH: onnx, tensorrt (batch stays free; no Shape nodes;
            default any size); tflite, coreml (default: the model's training crop, else 513 513).
    """
    options = ExportOptions(
        format, opset, check, precision, calibration, tuple(size) if size else None
    )
    summary = export_model(model, output, options)
    console.print(f"written: {summary.path}", soft_wrap=True)
    for line in summary.lines:
        console.print(line, soft_wrap=True)


def convert_weights(
    *,
    source: str,
    kind: Literal["torchvision", "smp", "transformers", "mmseg", "checkpoint", "tf"],
    output: str,
    class_names: list[str] | None = None,
    palette: list[list[int]] | None = None,
    output_stride: int | None = None,
    aspp_rates: list[int] | None = None,
    crop_size: list[int] | None = None,
    dataset: Literal["voc", "cityscapes", "ade20k"] | None = None,
    aux_head: bool = False,
) -> None:
    """Convert a torchvision or smp model, an official TensorFlow DeepLab checkpoint, or an
    atrous training checkpoint into a saved atrous model folder (model.safetensors +
    config.json; nothing is unpickled).

    Args:
        source: torchvision: a weights name such as
            DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1 (downloaded, or read from the torch
            hub cache offline) or a .pth file; smp: a folder or Hub repo id written by smp's
            save_pretrained, or a weights file; transformers: a MobileNetV2ForSemanticSegmentation
            folder or Hub repo id (google/deeplabv3_mobilenet_v2_1.0_513); mmseg: a DeepLabV3+
            R-50/101-D8 checkpoint (.pth, read tensors-only); tf: a model-zoo
            .tar.gz, the folder it extracts to, or a checkpoint prefix (read without
            TensorFlow); checkpoint: an atrous best.pt.
        kind: the library the source comes from.
        output: folder to write the model to (for a TF ImageNet checkpoint: backbone.safetensors
            in it, for --run.backbone_weights).
        class_names: one name per class (torchvision's published weights bring PASCAL VOC's).
        palette: one [r, g, b] colour per class.
        output_stride: smp weights files and mmseg: the output stride they were trained at
            (smp 16, mmseg 8).
        aspp_rates: smp weights files and mmseg: the ASPP rates (12, 24, 36).
        crop_size: tf only: the training crop [height, width] (VOC 513 513, Cityscapes 769 769),
            which sets the image-pooling kernel as in the official code; default: global pooling.
        dataset: tf only: names the classes and colours (ade20k also drops class 0, "other").
        aux_head: torchvision only: keep its auxiliary head (a start for --run.init_from).
    """
    size = tuple(crop_size) if crop_size is not None else None
    options = (class_names, palette, output_stride, aspp_rates, size, dataset, aux_head)
    result = convert_source(source, kind, output, *options)
    console.print(f"written: {result.path}")
    if result.report is not None:
        console.print(result.report, soft_wrap=True)


def import_labels(
    *,
    format: LabelFormat,
    source: str,
    output: str,
    images: str | None = None,
    split: str = "train",
    classes: list[str] | None = None,
    crowd: Literal["ignore", "class"] = "ignore",
    keep_empty: bool = False,
) -> None:
    """Turn an annotation tool's export (COCO, LabelMe, CVAT) into a folder dataset.

    Writes images/, masks/ of class indices (0 background, later annotations on top),
    classes.yaml, and import_<split>.txt listing what could not be imported.

    Args:
        format: the export's format (also spelt --from): coco (a JSON of polygons and RLE),
            labelme (a folder of its JSON files), cvat (annotations.xml, CVAT for images 1.1).
        source: the COCO JSON, the LabelMe folder (or one file), the CVAT XML.
        output: the dataset folder to write (new, or holding other splits of the same classes).
        images: where the image files are (default: COCO the JSON's folder, LabelMe beside
            each JSON or embedded, CVAT images/ beside the XML).
        split: the split folder to write (train, val, …); "" for none.
        classes: the class names in order after background (default: the export's order;
            LabelMe: sorted); annotations of other labels are skipped and listed.
        crowd: COCO iscrowd regions: ignore (label 255 where no other annotation lies) or class.
        keep_empty: write images without any region as all background (default: skip them).
    """
    report = run_import_labels(format, source, output, images, split, classes, crowd, keep_empty)
    folder = Path(output)
    console.print(
        f"{report.written} images imported into {folder} ({len(report.classes)} classes with "
        f"the background, {report.regions} regions painted)",
        markup=False,
        soft_wrap=True,
    )
    for why, count in report.reasons():
        errors.print(f"skipped {count}: {why}", style="yellow", markup=False, soft_wrap=True)
    console.print(f"report: {report.report_file}", markup=False, soft_wrap=True)
    if report.written == 0:
        raise AtrousError(f"nothing imported from {source}; {report.report_file} says why")
    check = ["atrous", "check-data", "--data.dataset", "folder", "--data.root", str(folder)]
    check += ["--data.train_split", split or '""'] if split != "train" else []
    console.print(f"next: {' '.join(check)}", markup=False, soft_wrap=True)


def serve(
    model: str = DEMO_MODEL,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_upload_mb: int = MAX_UPLOAD_MB,
) -> None:
    """A local web page: drop an image, see the overlay, the classes' shares and the mask.

    Args:
        model: a saved model folder, a training checkpoint (.pt) or a published checkpoint
            (tf:xception65_coco_voc_trainaug) (default: the model the last `atrous demo` saved).
        host: address to bind (127.0.0.1: this machine only).
        port: port to listen on.
        max_upload_mb: uploads larger than this are refused.
    """
    launch(model, host, port, max_upload_mb, announce=console.print)


def _percent(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.2f}"


def gather_paths(args: list[str]) -> list[str]:
    """Let ``atrous predict a.jpg b.jpg`` (what a shell glob expands to) fill the one list
    parameter ``inputs``: the subcommand's bare words become one JSON list."""
    if not args or args[0] != "predict":
        return args
    paths, rest, expects_value = [], [args[0]], False
    for token in args[1:]:
        if expects_value:
            rest.append(token)
            expects_value = False
        elif token.startswith("-"):
            rest.append(token)
            expects_value = "=" not in token and token not in ("-h", "--help")
        else:
            paths.append(token)
    return [rest[0], json.dumps(paths), *rest[1:]] if paths else rest


def from_word(args: list[str]) -> list[str]:
    """Let ``atrous import-labels --from coco`` name the format (``from`` is a Python keyword)."""
    if not args or args[0] != "import-labels":
        return args
    return [
        "--format" if a == "--from" else "--format=" + a[7:] if a.startswith("--from=") else a
        for a in args
    ]


def serve_model_word(args: list[str]) -> list[str]:
    """Let ``atrous serve MODEL`` name the model without ``--model``."""
    if len(args) > 1 and args[0] == "serve" and not args[1].startswith("-"):
        return [args[0], "--model", args[1], *args[2:]]
    return args


COMMANDS = {
    "demo": demo,
    "train": train,
    "eval": evaluate,
    "predict": predict,
    "export": export,
    "convert": convert_weights,
    "serve": serve,
    "check-data": check_data,
    "import-labels": import_labels,
    "models": models,
    "profile": profile,
}


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``atrous`` command: the exit status of the contract in docs/errors.md
    (0 done, 1 bad input or failure, 2 usage error)."""
    args = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in args or os.environ.get("ATROUS_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    try:
        args = typed_words(auto_parser(COMMANDS), from_word(args))
        args = serve_model_word(gather_paths(args))
        check_config_files(args)
        Parser.command = args[0] if args and not args[0].startswith("-") else ""
        status = CLI(COMMANDS, args=args, parser_class=Parser, prog="atrous")
    except SystemExit as stop:  # the parser's usage errors (already printed) and --help
        return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
    except TrainingPreempted as stop:  # after the step it was in, with last.pt written
        console.print(str(stop), style="bold yellow", markup=False, soft_wrap=True)
        return stop.exit_code
    except OverfitFailed as failed:  # the pre-flight's verdict, not a crash
        return report_error(str(failed), 1, debug)
    except Exception as error:
        message, code = describe_error(error, args[0] if args else "")
        return report_error(message, code, debug)
    return status if isinstance(status, int) else 0


class Parser(ArgumentParser):
    """The command's parser: a usage error is its message and where to find the options, not
    the whole usage text."""

    command = ""  # the subcommand being parsed, for the tip

    def error(self, message: str, ex: Exception | None = None) -> typing.NoReturn:
        if "Does not validate against any of the Union subtypes" in message:
            reasons = [
                line.strip()[2:]
                for line in message.splitlines()
                if line.strip().startswith("- ") and "NoneType" not in line
            ]
            message = "; ".join(reasons) or message
        sys.stderr.write(
            f"error: {message.strip()}\ntip: atrous {self.command} --help lists the options\n"
        )
        sys.exit(2)


def check_config_files(args: list[str]) -> None:
    """Each ``--config`` file exists and is a YAML mapping; else a UsageError naming the file
    and the line (the parser's own message names neither)."""
    for option, value in itertools.pairwise(args):
        if option != "--config":
            continue
        path = Path(value)
        if not path.is_file():
            raise UsageError(f"--config {value}: file not found")
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or error
            raise UsageError(f"--config {value}:{where}: invalid YAML ({problem})") from None
        if content is not None and not isinstance(content, dict):
            raise UsageError(
                f"--config {value}: holds a {type(content).__name__}, not a mapping of options "
                "(model:, data:, run: …)"
            )


def describe_error(error: Exception, command: str) -> tuple[str, int]:
    """The one line and exit status for ``error``: bad input (an AtrousError, also when the
    parser wrapped it; a file, option or missing package) or, for anything else, a bug."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, AtrousError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, AtrousError):
        return f"error: {cause}", cause.exit_code
    if isinstance(error, ModuleNotFoundError):
        return f"error: {missing_dependency(error.name or str(error), f'atrous {command}')}", 1
    if isinstance(error, ValueError | OSError | ExportCheckError | ImportError):
        return f"error: {error}", 1
    text = (
        f"internal error (a bug): {type(error).__name__}: {error}; please report it to "
        f"{REPORT_TO}; rerun with --debug for the traceback"
    )
    return text, 1


def report_error(message: str, code: int, debug: bool) -> int:
    """Print ``message`` on stderr (after the traceback with --debug) and return ``code``."""
    if debug:
        traceback.print_exc(file=sys.stderr)
    print(message, file=sys.stderr)
    return code


def typed_words(parser: ArgumentParser, args: list[str]) -> list[str]:
    """Options as users type them: a bare boolean flag (``--pretrained``) means true, and a
    list option's several words (``--crop_size 513 513``) are one list."""
    if not args or args[0] not in COMMANDS:
        return args
    actions = {
        option: action
        for action in parser._subcommands_action._name_parser_map[args[0]]._actions
        for option in action.option_strings
    }
    out, index = [args[0]], 1
    while index < len(args):
        token = args[index]
        out.append(token)
        index += 1
        hint = getattr(actions.get(token), "_typehint", None)
        following = args[index] if index < len(args) else None
        if hint is not None and _is_bool(hint) and not _is_bool_word(following):
            out.append("true")
        elif hint is not None and (items := _list_items(hint)) is not None:
            words = list(itertools.takewhile(lambda w: _fits(w, items), args[index:]))
            one = len(words) == 1 and not words[0].startswith("[") and not _is_bool_word(words[0])
            if len(words) > 1 or one:  # one bare word is a list of one (--classes car)
                out.append(json.dumps([yaml.safe_load(word) for word in words]))
                index += len(words)
    return out


def _is_bool(hint: object) -> bool:
    return hint is bool or set(typing.get_args(hint)) == {bool, type(None)}


def _is_bool_word(word: str | None) -> bool:
    """A value the parser reads for a boolean option (anything else follows a bare flag)."""
    return word is not None and word.lower() in ("true", "false", "yes", "no", "null", "none")


def _list_items(hint: object) -> tuple[type, ...] | None:
    """The item types of list[int], list[str], tuple[int, int] (or Optional of one); None for
    other hints."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    for inner in typing.get_args(hint) if union else (hint,):
        items = tuple(a for a in typing.get_args(inner) if a is not Ellipsis)
        if typing.get_origin(inner) in (list, tuple) and items and set(items) <= {int, float, str}:
            return items
    return None


def _fits(word: str, items: tuple[type, ...]) -> bool:
    """``word`` is one more item of a list of ``items`` (numbers: only numbers; not an option)."""
    if word.startswith("--"):
        return False
    if str in items:
        return True
    try:
        float(word)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
