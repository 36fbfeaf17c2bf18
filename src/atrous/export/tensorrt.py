"""TensorRT-ready ONNX: a graph NVIDIA TensorRT's ONNX parser accepts, fp32 or int8, checked
here in ONNX Runtime (building the engine needs a GPU: ``benchmarks/gpu_check.py`` does it).

What TensorRT asks of a graph, and how this export meets it:

- int8 as explicit quantisation (QDQ): ``QuantizeLinear``/``DequantizeLinear`` pairs with
  **signed int8, symmetric** scales (every zero point 0; TensorRT refuses uint8 and non-zero
  zero points, which atrous's ONNX Runtime int8 path uses), weights per output channel, biases
  left in float (TensorRT's ``DequantizeLinear`` takes int8 only, not int32 biases);
- operators from :data:`TENSORRT_OPS` only, ``Resize`` in the modes TensorRT implements
  (:func:`tensorrt_problems` names anything else);
- with a ``size``, one input size: the resize sizes folded into constants, no ``Shape`` nodes
  (:func:`~atrous.export.graph.fold_resize_sizes`); without, any size (TensorRT then needs an
  optimisation profile with the range of sizes when it builds the engine).

The fp32 graph passes the ONNX export's check (:func:`~atrous.export.onnx.export_onnx`); the
int8 graph is run on the calibration images and must stay within :data:`INT8_TOLERANCE` of the
eager model's logits (a floor that catches a broken graph, not a claim about accuracy).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torchvision import tv_tensors

from atrous.data.transforms import normalisation
from atrous.errors import UsageError
from atrous.export.graph import copy_metadata, op_types
from atrous.export.onnx import (
    ExportCheckError,
    ExportReport,
    LogitAgreement,
    OnnxNetwork,
    compare_logits,
    export_onnx,
    inference_module,
    require_agreement,
)
from atrous.export.quantize import quantize_qdq

#: Operator types a TensorRT export may contain: those of atrous's graphs (every backbone,
#: ASPP, decoder; QDQ) that TensorRT's ONNX parser implements (its operator matrix, TensorRT
#: 8.6 and 10; LayerNormalization and HardSwish from 8.6).
TENSORRT_OPS = frozenset(
    {
        "Add", "AveragePool", "Cast", "Clip", "Concat", "Constant", "Conv", "DequantizeLinear",
        "Div", "Erf", "Gather", "GlobalAveragePool", "HardSigmoid", "HardSwish", "Identity",
        "LayerNormalization", "MatMul", "MaxPool", "Mul", "Pad", "QuantizeLinear", "ReduceMean",
        "Relu", "Reshape", "Resize", "Shape", "Sigmoid", "Slice", "Sqrt", "Squeeze", "Sub",
        "Tanh", "Transpose", "Unsqueeze",
    }
)  # fmt: skip
#: ``Resize`` attributes TensorRT implements (other values, ``antialias`` and ``axes`` refused).
RESIZE_MODES = {
    "mode": {"nearest", "linear"},
    "coordinate_transformation_mode": {
        "half_pixel",
        "pytorch_half_pixel",
        "tf_half_pixel_for_nn",
        "asymmetric",
        "align_corners",
    },
    "keep_aspect_ratio_policy": {"stretch"},
}
#: The int8 graph's floor on the calibration images: max |Δlogit| at most this share of the
#: eager logits' scale. int8 measured 1-4% on the tiny test models; a graph with one wrong
#: weight or a misplaced scale differs by far more.
INT8_TOLERANCE = 0.15

Precision = Literal["fp32", "int8"]


@dataclass
class TensorRTReport(ExportReport):
    """The ONNX report, plus the precision and the int8 agreement on the calibration images."""

    precision: str = "fp32"
    int8_agreement: LogitAgreement | None = None


def tensorrt_problems(proto: Any, fixed: bool = False) -> list[str]:
    """What TensorRT's parser would refuse in ``proto`` (an ONNX ModelProto), one line each:
    operators outside :data:`TENSORRT_OPS`, ``Resize`` modes it lacks, QDQ zero points that
    are not int8 zeros; with ``fixed``, ``Shape`` nodes (sizes computed at run time)."""
    from onnx import numpy_helper

    problems = [
        f"{count} {op} node(s): TensorRT has no such operator"
        for op, count in sorted(op_types(proto).items())
        if op not in TENSORRT_OPS
    ]
    if fixed and op_types(proto)["Shape"]:
        problems.append("Shape nodes in a fixed-size graph: its sizes are computed at run time")
    tensors = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Resize":
            problems += _resize_problems(node)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = tensors.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            array = numpy_helper.to_array(zero) if zero is not None else None
            if array is None or array.dtype != np.int8 or np.any(array != 0):
                kind = "missing" if array is None else f"{array.dtype} {array.ravel()[:3]}"
                problems.append(f"{node.op_type} {node.name}: zero point {kind}, not int8 0")
    return problems


def _resize_problems(node: Any) -> list[str]:
    from onnx import helper

    problems = []
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        value = value.decode() if isinstance(value, bytes) else value
        allowed = RESIZE_MODES.get(attribute.name)
        refused = attribute.name in ("axes",) or (attribute.name == "antialias" and value)
        if refused or (allowed is not None and value not in allowed):
            problems.append(f"Resize {node.name}: {attribute.name}={value!r} (not in TensorRT)")
    return problems


def require_tensorrt_graph(path: str | Path, fixed: bool = False) -> None:
    """ExportCheckError listing :func:`tensorrt_problems` of the ONNX file, if any."""
    import onnx

    problems = tensorrt_problems(onnx.load(str(path)), fixed)
    if problems:
        raise ExportCheckError(f"{path} is not a TensorRT graph: " + "; ".join(problems))


def calibration_batches(
    model: nn.Module, images: Sequence[np.ndarray], size: tuple[int, int] | None
) -> list[torch.Tensor]:
    """``images`` normalised as the model expects, each (1, 3, H, W), resized to ``size`` when
    the graph takes one size."""
    transform = normalisation(model.config.mean, model.config.std)
    batches = []
    for image in images:
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        batch = transform(tv_tensors.Image(pixels))[None].float()
        if size is not None and tuple(batch.shape[-2:]) != tuple(size):
            batch = nn.functional.interpolate(batch, size=size, mode="bilinear")
        batches.append(batch)
    return batches


def export_tensorrt(
    model: nn.Module,
    path: str | Path,
    *,
    size: tuple[int, int] | None = None,
    precision: Precision = "fp32",
    calibration: Sequence[np.ndarray] = (),
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    tolerance: float | None = None,
) -> TensorRTReport:
    """Write a TensorRT-ready ONNX graph of ``model`` to ``path`` and check it.

    ``size`` fixes height and width (no ``Shape`` nodes); None keeps them free. fp32: the ONNX
    export's own check (``tolerance`` as there). int8: the fp32 graph is quantised with int8
    symmetric QDQ on ``calibration`` ((H, W, 3) uint8 RGB images, resized to ``size``), then
    run on them against the eager model (:data:`INT8_TOLERANCE`). Either graph must pass
    :func:`tensorrt_problems`; a failure is an ExportCheckError and leaves no file at ``path``.
    """
    if precision not in ("fp32", "int8"):
        raise UsageError(f"--precision {precision}: a TensorRT export is fp32 or int8")
    if precision == "int8" and not calibration:
        raise UsageError("--precision int8 needs --calibration DIR: a folder of a few images")
    path = Path(path)
    model = inference_module(model)
    fp32_path = path if precision == "fp32" else path.with_name(f"{path.stem}.fp32.onnx")
    exported = export_onnx(model, fp32_path, class_names, palette, tolerance=tolerance, size=size)
    report = TensorRTReport(path, exported.agreement, exported.tolerance)
    try:
        if precision == "int8":
            batches = calibration_batches(model, calibration, size)
            report.int8_agreement = _int8_graph(model, fp32_path, path, batches)
            report.precision = "int8"
        require_tensorrt_graph(path, fixed=size is not None)
    except ExportCheckError:
        path.unlink(missing_ok=True)
        raise
    finally:
        if fp32_path != path:
            fp32_path.unlink(missing_ok=True)
    return report


def _int8_graph(
    model: nn.Module, source: Path, target: Path, batches: Sequence[torch.Tensor]
) -> LogitAgreement:
    """Quantise ``source`` into ``target`` (int8 symmetric QDQ, the model description kept)
    and check it on ``batches`` (:func:`check_int8`); a failed graph is not left at ``target``."""
    scratch = target.with_name(f".{target.name}.{os.getpid()}.onnx")
    try:
        quantize_qdq(source, scratch, batches, symmetric=True)
        copy_metadata(source, scratch)
        agreement = check_int8(model, scratch, batches)
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
    return agreement


def check_int8(
    model: nn.Module, path: str | Path, batches: Sequence[torch.Tensor]
) -> LogitAgreement:
    """The int8 graph's worst agreement with the eager fp32 ``model`` on ``batches``;
    ExportCheckError beyond :data:`INT8_TOLERANCE` of the logits' scale."""
    network, worst = OnnxNetwork(path), None
    for batch in batches:
        with torch.no_grad():
            agreement = compare_logits(network(batch), model(batch))
        if worst is None or agreement.relative_diff > worst.relative_diff:
            worst = agreement
    require_agreement(worst, INT8_TOLERANCE, "the int8 graph on the calibration images")
    return worst
