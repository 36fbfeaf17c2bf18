"""``atrous export`` as one library call: :func:`export_model` writes a model named as any
command names one in the format asked for, runs that format's built-in check and returns what
the check measured. Options a format cannot honour are refused before the model loads
(:func:`check_export_options`); the table of formats is docs/deployment.md's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from atrous.errors import InputError, UsageError, require_writable
from atrous.export.onnx import export_onnx, export_program
from atrous.hub.load import load_segmenter
from atrous.inference.fast import normalise_images
from atrous.inference.predict import Segmenter, calibration_images

ExportFormat = Literal["onnx", "pt2", "openvino", "tflite", "coreml", "tensorrt"]
ExportPrecision = Literal["fp32", "fp16", "int8"]

#: The precisions each format writes (the first is the default).
PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32",),
    "pt2": ("fp32",),
    "openvino": ("fp32", "int8"),
    "tflite": ("fp32", "int8"),
    "coreml": ("fp32", "fp16"),
    "tensorrt": ("fp32", "int8"),
}
#: Formats whose input can be fixed to one size with ``--size`` (tflite and coreml always are).
SIZED = {"onnx", "tensorrt", "tflite", "coreml"}
#: The output's name when ``--output`` is left at its default (model.onnx).
DEFAULT_OUTPUTS = {"openvino": "model.xml", "tflite": "model.tflite", "coreml": "model.mlpackage"}
#: The ending a format's output must have (an OpenVINO IR is NAME.xml with NAME.bin beside).
SUFFIXES = {"openvino": ".xml"}


@dataclass(frozen=True)
class ExportOptions:
    """How to export: the format, ONNX opset, whether to check the file against the eager
    model, its precision, int8 calibration images (files, folders, globs) and a fixed size."""

    format: str = "onnx"
    opset: int = 18
    check: bool = True
    precision: str = "fp32"
    calibration: str | None = None
    size: tuple[int, int] | None = None


@dataclass
class ExportSummary:
    """The file written and one line per check made (what was compared, what it measured)."""

    path: Path
    lines: list[str] = field(default_factory=list)


def output_path(output: str, format: str) -> str:
    """``output``, or the format's own default name when it is left at ``model.onnx``."""
    return DEFAULT_OUTPUTS.get(format, output) if output == "model.onnx" else output


def check_export_options(options: ExportOptions) -> None:
    """Refuse options the format cannot honour, naming the option and what it takes."""
    allowed = PRECISIONS[options.format]
    if options.precision not in allowed:
        raise UsageError(
            f"--precision {options.precision}: --format {options.format} writes "
            f"{' or '.join(allowed)}"
        )
    if options.precision == "int8" and not options.calibration:
        raise UsageError("--precision int8 needs --calibration DIR (a few images to calibrate on)")
    if options.calibration and options.precision != "int8":
        raise UsageError("--calibration: only an int8 export (--precision int8) calibrates")
    if options.size is not None:
        if options.format not in SIZED:
            raise UsageError(
                f"--size: --format {options.format} does not take one (sized: "
                f"{', '.join(sorted(SIZED))})"
            )
        if len(options.size) != 2 or min(options.size) < 1:
            raise UsageError(f"--size {list(options.size)}: give a height and a width, each ≥ 1")


def export_model(model: str, output: str, options: ExportOptions) -> ExportSummary:
    """Export ``model`` (a folder, a checkpoint, a published name) to ``output`` as
    ``options`` say; a failed check raises :class:`~atrous.export.onnx.ExportCheckError`."""
    check_export_options(options)
    output = output_path(output, options.format)
    suffix = SUFFIXES.get(options.format)
    if suffix and Path(output).suffix != suffix:
        raise UsageError(f"--output {output}: --format {options.format} writes NAME{suffix}")
    if options.format != "coreml":  # a .mlpackage is a folder: export_coreml checks it
        require_writable(output, "--output")
    images = _calibration(options.calibration)
    segmenter = load_segmenter(model)
    return EXPORTERS[options.format](segmenter, output, options, images)


def _calibration(source: str | None) -> list:
    """The calibration images (the first 8 readable ones), or none without a source."""
    if source is None:
        return []
    try:
        images = calibration_images([source])
    except InputError as error:
        raise InputError(f"--calibration {source}: {error}") from None
    if not images:
        raise UsageError(f"--calibration {source}: no readable image there")
    return images


def _onnx(segmenter: Segmenter, output: str, options: ExportOptions, images: list) -> ExportSummary:
    """ONNX, dynamic or at a fixed size, checked in ONNX Runtime at two sizes."""
    names = (segmenter.class_names, segmenter.palette)
    report = export_onnx(
        segmenter.network, output, *names, options.opset, options.check, size=options.size
    )
    return ExportSummary(report.path, _onnx_lines(report))


def _onnx_lines(report: object) -> list[str]:
    """ONNX Runtime's agreement at each size checked (and int8's, when quantised)."""
    lines = [
        f"ONNX Runtime vs eager at {height}×{width}: {agreement.describe()}"
        for (height, width), agreement in report.agreement.items()
    ]
    if getattr(report, "int8_agreement", None) is not None:
        lines.append(f"int8 on the calibration images: {report.int8_agreement.describe()}")
    return lines


def _pt2(segmenter: Segmenter, output: str, options: ExportOptions, images: list) -> ExportSummary:
    """A ``torch.export`` program (dynamic height and width)."""
    return ExportSummary(Path(export_program(segmenter.network, output)))


def _tensorrt(
    segmenter: Segmenter, output: str, options: ExportOptions, images: list
) -> ExportSummary:
    """ONNX that TensorRT accepts (int8: symmetric QDQ), checked in ONNX Runtime."""
    from atrous.export.tensorrt import export_tensorrt

    report = export_tensorrt(
        segmenter.network,
        output,
        size=options.size,
        precision=options.precision,
        calibration=images,
        class_names=segmenter.class_names,
        palette=segmenter.palette,
    )
    return ExportSummary(report.path, _onnx_lines(report))


def _openvino(
    segmenter: Segmenter, output: str, options: ExportOptions, images: list
) -> ExportSummary:
    """An OpenVINO IR (fp32, or int8 through NNCF), checked in OpenVINO compiled at f32."""
    from atrous.export.openvino import export_openvino

    report = export_openvino(
        segmenter.network,
        output,
        segmenter.class_names,
        segmenter.palette,
        options.precision,
        normalise_images(images, segmenter.mean, segmenter.std),
        options.check,
    )
    lines = [f"weights: {report.path.with_suffix('.bin')}"]
    lines += [
        f"OpenVINO {options.precision} vs eager on {label}: {agreement.describe()}"
        for label, agreement in report.by_input.items()
    ]
    if options.check:
        lines.append(
            f"checked at {report.checked_at} (OpenVINO's CPU default here: "
            f"{report.plugin_default}; atrous predict runs it at {report.checked_at})"
        )
    return ExportSummary(report.path, lines)


def _tflite(
    segmenter: Segmenter, output: str, options: ExportOptions, images: list
) -> ExportSummary:
    """LiteRT at one size (fp32, or int8 calibrated), checked in the LiteRT interpreter."""
    from atrous.export.tflite import export_tflite

    normalised = normalise_images(images, segmenter.mean, segmenter.std)
    names = (segmenter.class_names, segmenter.palette)
    report = export_tflite(
        segmenter.network,
        output,
        options.size,
        options.precision,
        normalised,
        *names,
        check=options.check,
    )
    return ExportSummary(report.path, list(report.describe()))


def _coreml(
    segmenter: Segmenter, output: str, options: ExportOptions, images: list
) -> ExportSummary:
    """A Core ML package at one size (fp32 or fp16); its run-time check needs macOS."""
    from atrous.export.coreml import export_coreml

    names = (segmenter.class_names, segmenter.palette)
    report = export_coreml(
        segmenter.network, output, options.size, options.precision, *names, check=options.check
    )
    return ExportSummary(report.path, [report.describe()])


Exporter = Callable[[Segmenter, str, ExportOptions, list], ExportSummary]
#: The writer of each format.
EXPORTERS: dict[str, Exporter] = {
    "onnx": _onnx,
    "pt2": _pt2,
    "openvino": _openvino,
    "tflite": _tflite,
    "coreml": _coreml,
    "tensorrt": _tensorrt,
}
