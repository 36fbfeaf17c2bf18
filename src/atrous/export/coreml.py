"""Export for Core ML: an ML program (``.mlpackage``) at one fixed input size, converted by
``coremltools`` from a ``torch.export`` program, in fp32 or fp16.

The input ``images`` is a float32 (1, C, H, W) multi-array, RGB on [0, 1] normalised by the
model's mean and std (as every atrous export); the output ``logits`` is (1, num_classes, H, W).
The model description (input size, class names, palette, mean and std, the configuration) is
the package's user-defined metadata entry ``atrous``. Core ML runs only on Apple's systems: there
the export is checked against the eager model; elsewhere the check is skipped and says so.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from atrous.errors import UsageError, missing_dependency
from atrous.export.onnx import (
    ExportReport,
    compare_logits,
    inference_module,
    model_metadata,
    require_agreement,
    rounding_tolerance,
)
from atrous.export.tflite import export_size, random_images
from atrous.models.config import input_channels

Precision = Literal["fp32", "fp16"]
#: Key of the package's user-defined metadata entry that holds the model description (JSON).
METADATA_KEY = "atrous"
#: fp16 is held to this share of the logits' scale (fp16 keeps 11 significant bits, 5e-4 per
#: operation; rounding adds up over a deep network's layers).
FP16_TOLERANCE = 2e-2


@dataclass
class CoremlReport(ExportReport):
    """:class:`ExportReport` of an ``.mlpackage``: its precision, and why the run-time check
    did not run (None when it did, or was not asked for)."""

    precision: str = "fp32"
    skipped: str | None = None
    shapes: dict[str, list[int]] = field(default_factory=dict)

    def describe(self) -> str:
        """One line, as the command prints it."""
        if self.skipped:
            return f"Core ML run-time check skipped: {self.skipped}"
        if not self.agreement:
            return "Core ML run-time check not asked for (--check false)"
        worst = max(self.agreement.values(), key=lambda a: a.relative_diff)
        return f"Core ML {self.precision} vs eager: {worst.describe()}"


def _coremltools() -> Any:
    # torch's compiler stack is imported first: coremltools imports TensorFlow when it is
    # installed, after which importing triton (through torch._dynamo) crashes the process.
    import torch._dynamo  # noqa: F401

    try:
        import coremltools
    except ImportError:
        raise missing_dependency("coremltools", "--format coreml") from None
    return coremltools


def convert_coreml(model: nn.Module, size: tuple[int, int], precision: Precision = "fp32") -> Any:
    """The ``coremltools`` ML program of ``model`` (eval, fp32) at batch 1 and ``size``, from its
    ``torch.export`` program (ATen dialect)."""
    example = torch.zeros(1, input_channels(model), *size)
    program = torch.export.export(model, (example,)).run_decompositions({})
    ct = _coremltools()
    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    return ct.convert(
        program,
        inputs=[ct.TensorType(name="images", shape=tuple(example.shape), dtype=np.float32)],
        outputs=[ct.TensorType(name="logits", dtype=np.float32)],
        convert_to="mlprogram",
        compute_precision=compute,
        minimum_deployment_target=ct.target.iOS16,
    )


def describe_package(program: Any, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` (JSON) and one-line descriptions of the input and output."""
    program.user_defined_metadata[METADATA_KEY] = json.dumps(metadata)
    program.short_description = "DeepLab semantic segmentation (atrous)"
    program.input_description["images"] = metadata["input"]
    program.output_description["logits"] = metadata["output"]


def runtime_unavailable() -> str | None:
    """Why Core ML cannot run here (None on macOS, where it can)."""
    if sys.platform == "darwin":
        return None
    return f"Core ML runs only on macOS, and this is {platform.system() or sys.platform}"


def check_coreml(
    model: nn.Module,
    program: Any,
    precision: Precision = "fp32",
    images: Sequence[torch.Tensor] = (),
    tolerance: float | None = None,
) -> CoremlReport:
    """Run ``program`` (anything with Core ML's ``predict({"images": array})``) against the
    eager fp32 ``model`` on ``images`` (none: random ones at the package's size). fp32 is held to
    :func:`rounding_tolerance`, fp16 to :data:`FP16_TOLERANCE` of the logits' scale (or to
    ``tolerance``); beyond: ExportCheckError."""
    model = inference_module(model)
    report = CoremlReport(Path(), {}, precision=precision)
    if not images:
        shape = json.loads(program.user_defined_metadata[METADATA_KEY])["input_size"]
        images = random_images(input_channels(model), (shape[0], shape[1]))
    for image in images:
        with torch.no_grad():
            reference = model(image)
        output = program.predict({"images": image.numpy().astype(np.float32)})["logits"]
        agreement = compare_logits(torch.as_tensor(np.asarray(output)), reference)
        allowed = tolerance
        if allowed is None:
            exact = rounding_tolerance(model, image, reference)
            allowed = exact if precision == "fp32" else max(FP16_TOLERANCE, exact)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        require_agreement(agreement, allowed, "Core ML output at {}×{}".format(*size))
        report.keep_worst(size, agreement, allowed)
    return report


def export_coreml(
    model: nn.Module,
    path: str | Path,
    size: Sequence[int] | None = None,
    precision: Precision = "fp32",
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    check: bool = True,
    tolerance: float | None = None,
) -> CoremlReport:
    """Export ``model`` (eval mode, fp32, no auxiliary head) to a Core ML ``.mlpackage`` at one
    fixed input size (the model's training crop, else 513×513), batch 1.

    With ``check`` on macOS, the package runs in Core ML on random images and is compared with
    the eager model (:func:`check_coreml`; a failure leaves nothing at ``path``); elsewhere the
    report says the check was skipped and why."""
    path = _package_path(path)
    if precision not in ("fp32", "fp16"):
        raise UsageError(f"--precision {precision}: a Core ML package is fp32 or fp16")
    model = inference_module(model)
    size = export_size(model, size)
    program = convert_coreml(model, size, precision)
    metadata = model_metadata(model, class_names, palette)
    metadata.update(input_size=list(size), layout="NCHW", precision=precision)
    describe_package(program, metadata)
    report = CoremlReport(path, {}, precision=precision, skipped=runtime_unavailable())
    if check and report.skipped is None:
        checked = check_coreml(model, program, precision, tolerance=tolerance)
        report.agreement, report.tolerance = checked.agreement, checked.tolerance
    _save(program, path)
    spec = program.get_spec().description
    report.shapes = {
        feature.name: list(feature.type.multiArrayType.shape)
        for feature in (*spec.input, *spec.output)
    }
    return report


def _package_path(path: str | Path) -> Path:
    """``path`` checked: named ``*.mlpackage``, in a folder that exists."""
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise UsageError(f"--output {path}: a Core ML ML program is a folder named *.mlpackage")
    if not path.parent.is_dir():
        raise UsageError(f"--output {path}: the folder {path.parent} does not exist")
    return path


def _save(program: Any, path: Path) -> None:
    """Save the package beside ``path`` first, then put it in place of any previous one."""
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        program.save(str(staging / path.name))
        if path.exists():
            shutil.rmtree(path)
        (staging / path.name).rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
