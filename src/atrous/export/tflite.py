"""Export for LiteRT (TensorFlow Lite): a ``.tflite`` file at one fixed input size, converted by
``litert-torch`` in fp32 or int8, and checked in the LiteRT interpreter against the eager model.

int8 is litert-torch's PT2E flow: static quantisation with symmetric per-channel int8 weights,
calibrated on the user's images (normalised as the model expects and resized to the export size);
the file then takes and returns int8 tensors (their scale and zero point are in the file, and
:class:`TfliteNetwork` applies them). The layout stays PyTorch's: input (1, C, H, W), output
(1, num_classes, H, W) (the converter inserts the transposes to LiteRT's NHWC kernels inside the
graph). The model description (input size, layout, class names, palette, mean and std, the model
configuration) is a metadata entry named ``atrous`` inside the file (:func:`read_metadata`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from atrous.errors import UsageError, missing_dependency
from atrous.export.onnx import (
    ExportCheckError,
    ExportReport,
    LogitAgreement,
    compare_logits,
    inference_module,
    model_metadata,
    require_agreement,
    rounding_tolerance,
)
from atrous.models.config import input_channels

Precision = Literal["fp32", "int8"]
#: Name of the file's metadata entry that holds the model description (JSON).
METADATA_NAME = "atrous"
#: The input size when neither the caller nor the model (its training crop) names one.
DEFAULT_SIZE = (513, 513)
#: The int8 floor: root-mean-square |Δlogit| over the root-mean-square of the eager logits. A
#: correct int8 file measured 0.012 (tiny random MobileNetV2 at 65×65) and 0.082 (random-weight
#: MobileNetV2 at 513×513, logits ±149, calibrated and checked on built-in scenes: argmax
#: agreement 99.95%); a graph that computes something else (another model, one class's bias moved
#: by half the logits' scale) measured 0.4 to 0.8.
INT8_TOLERANCE = 0.2
#: How many images the check runs (batch 1 each: the file's batch is fixed).
CHECK_IMAGES = 2


@dataclass
class TfliteReport(ExportReport):
    """:class:`ExportReport` of a ``.tflite`` file: its precision and, for int8, the worst
    relative root-mean-square difference from the eager logits (held to the int8 floor)."""

    precision: str = "fp32"
    relative_rms: float | None = None

    def describe(self) -> list[str]:
        """One line per checked size, as the command prints them."""
        lines = []
        for (height, width), agreement in self.agreement.items():
            text = f"LiteRT {self.precision} vs eager at {height}×{width}: {agreement.describe()}"
            if self.relative_rms is not None:
                text += f", rms |Δlogit| {self.relative_rms:.3g} of the logits' rms"
            lines.append(text)
        return lines


def export_size(model: nn.Module, size: Sequence[int] | None = None) -> tuple[int, int]:
    """The fixed input size of the file: ``size``, else the model's training crop
    (``image_pool_crop_size``), else 513×513. A size below 1 is a UsageError."""
    config = getattr(model, "config", None)
    chosen = size or getattr(config, "image_pool_crop_size", None) or DEFAULT_SIZE
    if len(chosen) != 2 or min(chosen) < 1:
        raise UsageError(f"--size takes a height and a width of at least 1, got {list(chosen)}")
    return int(chosen[0]), int(chosen[1])


def fit_calibration(images: Sequence[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
    """Normalised (1, C, h, w) images resized (bilinear) to the export ``size``: a fixed-size
    file sees every image at that size, so int8 ranges are calibrated there."""
    fitted = []
    for image in images:
        batch = image.float()[None] if image.ndim == 3 else image.float()
        if tuple(batch.shape[-2:]) != size:
            batch = F.interpolate(batch, size=size, mode="bilinear", align_corners=False)
        fitted.extend(batch.split(1))
    return fitted


def _litert_torch() -> Any:
    try:
        import litert_torch
    except ImportError:
        raise missing_dependency("litert_torch", "--format tflite") from None
    return litert_torch


def _quantised(
    model: nn.Module, example: torch.Tensor, calibration: Sequence[torch.Tensor]
) -> tuple[Any, nn.Module]:
    """PT2E static int8 (symmetric, per-channel weights): the exported program with observers,
    run on the calibration images, then converted to quantise/dequantise pairs."""
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e import quantize_pt2e

    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(config)
    graph = torch.export.export(model, (example,)).module()
    graph = quantize_pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for image in calibration:
            graph(image)
    return quantizer, quantize_pt2e.convert_pt2e(graph, fold_quantize=False)


def convert_tflite(
    model: nn.Module,
    size: tuple[int, int],
    precision: Precision = "fp32",
    calibration: Sequence[torch.Tensor] = (),
) -> bytes:
    """The ``.tflite`` flatbuffer of ``model`` (eval, fp32) at batch 1 and ``size``; int8
    calibrates on ``calibration`` (normalised images at ``size``)."""
    litert_torch = _litert_torch()
    example = torch.zeros(1, input_channels(model), *size)
    if precision == "fp32":
        return litert_torch.convert(model, (example,)).model_content()
    from litert_torch.quantize.quant_config import QuantConfig

    quantizer, graph = _quantised(model, example, calibration)
    config = QuantConfig(pt2e_quantizer=quantizer)
    return litert_torch.convert(graph, (example,), quant_config=config).model_content()


def with_metadata(content: bytes, metadata: dict[str, Any]) -> bytes:
    """``content`` (a ``.tflite`` flatbuffer) with ``metadata`` as JSON in its metadata entry
    :data:`METADATA_NAME` (replacing one already there)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(tree.buffers) - 1
    kept = [m for m in tree.metadata or [] if m.name != METADATA_NAME.encode()]
    tree.metadata = [*kept, entry]
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The model description stored in the ``.tflite`` file at ``path`` ({} when none)."""
    from ai_edge_litert import schema_py_generated as schema

    content = Path(path).read_bytes()
    model = schema.Model.GetRootAs(content, 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if entry.Name() == METADATA_NAME.encode():
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            return json.loads(bytes(data).decode())
    return {}


class TfliteNetwork:
    """A ``.tflite`` file in the LiteRT interpreter (its default CPU delegate, XNNPACK) behaving
    like the network: (N, C, H, W) float tensor → (N, num_classes, H, W) logits. Batch items
    run one at a time (the file's batch is 1); int8 inputs and outputs are quantised and
    dequantised with the file's own parameters; an NHWC file is transposed explicitly."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise missing_dependency("ai_edge_litert", "running a .tflite file") from None
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no .tflite file at {path}")
        self.interpreter = Interpreter(
            model_path=str(path), num_threads=threads or torch.get_num_threads()
        )
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.metadata = read_metadata(path)
        self.channels_last = self.metadata.get("layout", "NCHW") == "NHWC"

    def _one(self, image: np.ndarray) -> np.ndarray:
        if self.channels_last:
            image = image.transpose(0, 2, 3, 1)
        scale, zero = self.input["quantization"]
        if self.input["dtype"] != np.float32:
            limits = np.iinfo(self.input["dtype"])
            quantised = np.round(image / scale) + zero
            image = np.clip(quantised, limits.min, limits.max).astype(self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(image))
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self.output["index"])
        scale, zero = self.output["quantization"]
        if logits.dtype != np.float32:
            logits = (logits.astype(np.float32) - zero) * scale
        return logits.transpose(0, 3, 1, 2) if self.channels_last else logits

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().numpy()
        logits = np.concatenate([self._one(array[i : i + 1]) for i in range(len(array))])
        return torch.from_numpy(logits).to(images.device)


def random_images(channels: int, size: tuple[int, int]) -> list[torch.Tensor]:
    """:data:`CHECK_IMAGES` random normal (1, ``channels``, H, W) images (seeded)."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(1, channels, *size, generator=generator) for _ in range(CHECK_IMAGES)]


def relative_rms(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Root-mean-square |logits − reference| over the root-mean-square of ``reference``."""
    difference = (logits.float() - reference.float()).square().mean().sqrt()
    return (difference / reference.float().square().mean().sqrt().clamp_min(1e-12)).item()


def check_tflite(
    model: nn.Module,
    path: str | Path,
    precision: Precision = "fp32",
    images: Sequence[torch.Tensor] = (),
    tolerance: float | None = None,
) -> TfliteReport:
    """Run the ``.tflite`` file at ``path`` in the LiteRT interpreter against the eager fp32
    ``model`` on ``images`` (batch 1 each; none: :func:`random_images` at the file's size).
    fp32 is held to :func:`rounding_tolerance` of each input (or ``tolerance``), int8 to
    :data:`INT8_TOLERANCE` (or ``tolerance``) of :func:`relative_rms`; beyond: ExportCheckError."""
    model = inference_module(model)
    network = TfliteNetwork(path)
    report = TfliteReport(Path(path), {}, precision=precision)
    if not images:
        shape = network.metadata.get("input_size") or network.input["shape"][-2:]
        images = random_images(input_channels(model), (int(shape[0]), int(shape[1])))
    for image in images:
        with torch.no_grad():
            reference = model(image)
        logits = network(image)
        agreement = compare_logits(logits, reference)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        if precision == "int8":
            allowed = INT8_TOLERANCE if tolerance is None else tolerance
            rms = relative_rms(logits, reference)
            _require_int8(rms, allowed, agreement, size)
            report.relative_rms = max(report.relative_rms or 0.0, rms)
        else:
            allowed = tolerance
            if allowed is None:
                allowed = rounding_tolerance(model, image, reference)
            require_agreement(agreement, allowed, "LiteRT output at {}×{}".format(*size))
        report.keep_worst(size, agreement, allowed)
    return report


def _require_int8(
    rms: float, allowed: float, agreement: LogitAgreement, size: tuple[int, int]
) -> None:
    if not rms <= allowed:
        raise ExportCheckError(
            f"int8 LiteRT output at {size[0]}×{size[1]} differs from the eager model: rms "
            f"|Δlogit| {rms:.3g} of the logits' rms (floor {allowed:g}); {agreement.describe()}"
        )


def export_tflite(
    model: nn.Module,
    path: str | Path,
    size: Sequence[int] | None = None,
    precision: Precision = "fp32",
    calibration: Sequence[torch.Tensor] = (),
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    check: bool = True,
    tolerance: float | None = None,
) -> TfliteReport:
    """Export ``model`` (eval mode, fp32, no auxiliary head) to a ``.tflite`` file at one fixed
    input size (:func:`export_size`), batch 1.

    int8 needs ``calibration``: normalised (1, C, h, w) images (``normalise_images`` with the
    model's mean and std), resized to the size. With ``check``, the file runs in the LiteRT
    interpreter and is compared with the eager model (:func:`check_tflite`) on random images
    and the first calibration images (int8: those only, as random noise lies outside the
    calibrated ranges); on failure it is kept as ``<name>.failed.tflite`` and a file already at
    ``path`` is left as it was (ExportCheckError).
    """
    if precision not in ("fp32", "int8"):
        raise UsageError(f"--precision {precision}: a .tflite file is fp32 or int8")
    if precision == "int8" and not calibration:
        raise UsageError("--precision int8 needs calibration images: --calibration DIR")
    path, model = Path(path), inference_module(model)
    size = export_size(model, size)
    calibration = fit_calibration(calibration, size)
    content = convert_tflite(model, size, precision, calibration)
    metadata = model_metadata(model, class_names, palette)
    metadata.update(input_size=list(size), layout="NCHW", precision=precision)
    images = calibration[:CHECK_IMAGES]  # int8: real-looking inputs only (random: off-range)
    if precision == "fp32":
        images = [*random_images(input_channels(model), size), *images]
    content = with_metadata(content, metadata)
    return _write_checked(model, path, content, precision, images if check else None, tolerance)


def _write_checked(
    model: nn.Module,
    path: Path,
    content: bytes,
    precision: Precision,
    images: Sequence[torch.Tensor] | None,
    tolerance: float | None,
) -> TfliteReport:
    """Write ``content`` to ``path`` through a temporary file, checked first unless ``images``
    is None (an empty list: random images)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tflite", dir=path.parent)
    with os.fdopen(fd, "wb") as file:
        file.write(content)
    try:
        report = TfliteReport(path, {}, precision=precision)
        if images is not None:
            report = check_tflite(model, tmp, precision, images, tolerance)
            report.path = path
    except ExportCheckError as error:
        failed = path.with_name(f"{path.stem}.failed.tflite")
        os.replace(tmp, failed)
        raise ExportCheckError(
            f"{error}; {path} was not written, the file is in {failed}"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return report
