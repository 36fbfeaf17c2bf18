"""``atrous predict`` as one library call: :func:`predict_inputs` sends each input to its writer
(pictures → palette-PNG masks and overlays, rasters → GeoTIFF masks window by window, videos →
an overlaid video), so the command line and Python take the same path. The inputs are checked
before the model loads, so a typo costs no loading time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from atrous.errors import UsageError
from atrous.hub.load import load_segmenter
from atrous.inference.fast import CALIBRATION_IMAGES
from atrous.inference.pipeline import PipelineConfig
from atrous.inference.predict import (
    PredictReport,
    Segmenter,
    calibration_images,
    expand_inputs,
    fast_segmenter,
    predict_files,
)
from atrous.inference.raster import predict_rasters, split_rasters
from atrous.inference.regions import MapName
from atrous.inference.strategies import InferenceConfig
from atrous.inference.video import VideoReport, first_frames, is_video, predict_video
from atrous.runtime.distributed import resolve_device


@dataclass(frozen=True)
class PredictOutputs:
    """What to write beside each mask: colour ``overlays``, side-by-side ``figures``, per-pixel
    ``maps`` (``confidence``, ``entropy``) and, for videos, each frame's mask (``frame_masks``)."""

    overlays: bool = True
    figures: bool = False
    maps: tuple[MapName, ...] = ()
    frame_masks: bool = False


@dataclass
class PredictInputs:
    """The inputs of one ``predict`` run, sorted: video files and the rest (image files,
    folders, globs), expanded to ``files``."""

    videos: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @classmethod
    def find(cls, inputs: Sequence[str | Path]) -> PredictInputs:
        """Sort ``inputs``; nothing to segment is an :class:`~atrous.errors.InputError` naming
        them (before any model loads)."""
        videos, others = [], []
        for item in inputs:
            is_clip = is_video(item) and Path(item).is_file()
            (videos if is_clip else others).append(Path(item) if is_clip else item)
        files = expand_inputs(others) if others or not videos else []
        return cls(videos, files)

    def calibration(self, count: int = CALIBRATION_IMAGES) -> list:
        """The first ``count`` readable images (or a video's first frames) for int8."""
        if self.files:
            return calibration_images(self.files, count)
        return first_frames(self.videos[0], count) if self.videos else []


def load_predictor(
    model: str,
    inference: InferenceConfig,
    precision: str,
    device: str,
    inputs: PredictInputs,
    fast: bool = False,
    runtime: str | None = None,
) -> Segmenter:
    """The segmenter of ``model`` as ``predict`` runs it: eager at ``precision``, or with
    ``fast`` (implied by a ``runtime``) on the optimised network, int8 calibrated on the
    inputs' first images; ``runtime`` "auto" measures the installed runtimes."""
    fast = fast or runtime is not None
    if precision == "int8" and not fast:
        raise UsageError("--precision int8 needs --fast true")
    segmenter = load_segmenter(
        model, inference, "fp32" if fast else precision, resolve_device(device)
    )
    if not fast:
        return segmenter
    backend = runtime or "auto"
    return fast_segmenter(segmenter, precision, inputs.calibration(), backend)


@dataclass
class PredictSummary:
    """What a run wrote: images and rasters (``report``) and each video."""

    report: PredictReport
    videos: list[VideoReport] = field(default_factory=list)


def predict_inputs(
    segmenter: Segmenter,
    inputs: PredictInputs,
    output_dir: str | Path,
    outputs: PredictOutputs = PredictOutputs(),
    progress: bool = True,
    pipeline: PipelineConfig = PipelineConfig(),  # noqa: B008
) -> PredictSummary:
    """Segment every input into ``output_dir``: rasters (GeoTIFF, GDAL formats, TIFFs of other
    than three bands) window by window, pictures through the batched pipeline, videos frame by
    frame. A file that cannot be read is reported in the summary; the others still run."""
    rasters, pictures = split_rasters(inputs.files, len(segmenter.mean))
    report = predict_rasters(segmenter, rasters, output_dir, progress, outputs.maps)
    if pictures:
        more = predict_files(
            segmenter,
            pictures,
            output_dir,
            outputs.overlays,
            outputs.figures,
            progress,
            pipeline,
            outputs.maps,
        )
        report.written += more.written
        report.failed += more.failed
        report.segmented += more.segmented
    videos = [
        predict_video(segmenter, video, output_dir, outputs.frame_masks, progress, pipeline)
        for video in inputs.videos
    ]
    return PredictSummary(report, videos)
