"""Export to OpenVINO IR (``model.xml`` + ``model.bin``), fp32 or int8, checked in OpenVINO.

The fp32 IR is converted from the eager model (``openvino.convert_model``) with batch, height
and width free, and saved without fp16 compression; int8 is NNCF post-training quantisation of
that IR, calibrated on the user's images. The model description (configuration, class names,
palette, mean and std: :func:`~atrous.export.onnx.model_metadata`) travels in the IR's
``rt_info`` under ``atrous``, so :class:`OpenvinoNetwork` and ``atrous predict model.xml`` need
no other file.

Precision: OpenVINO's CPU plugin runs **bf16 by default** on CPUs with native bf16 (AVX-512 bf16,
AMX), and f32 elsewhere (:func:`default_inference_precision` reads it). The check and
:class:`OpenvinoNetwork` compile with ``INFERENCE_PRECISION_HINT`` set to ``f32`` unless told
otherwise, so what was checked is what atrous runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torchvision import tv_tensors

from atrous.data.synthetic import render_scene
from atrous.data.transforms import normalisation
from atrous.errors import InputError, UsageError, missing_dependency
from atrous.export.onnx import (
    CHECK_SIZES,
    METADATA_KEY,
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

OpenvinoPrecision = Literal["fp32", "int8"]
#: The precision the check and :class:`OpenvinoNetwork` compile with (OpenVINO's name).
CHECK_PRECISION = "f32"
#: int8 is held to a floor, not to rounding, on real-looking inputs (procedural scenes): at least
#: this share of pixels must keep their class, and max |Δlogit| must stay within this share of
#: the scale. On random noise (outside any calibration's ranges) its agreement is only recorded.
INT8_MIN_ARGMAX_AGREEMENT = 0.85
INT8_MAX_RELATIVE_DIFF = 0.5


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise missing_dependency("openvino", "OpenVINO export and inference") from None
    return openvino


def default_inference_precision(device: str = "CPU") -> str:
    """The precision OpenVINO's ``device`` plugin runs fp32 graphs at when not told
    (``bf16`` on CPUs with native bf16, ``f32`` elsewhere)."""
    return _openvino().Core().get_property(device, "INFERENCE_PRECISION_HINT").get_type_name()


@dataclass
class OpenvinoReport(ExportReport):
    """:class:`ExportReport` of an IR: its weights' precision and the precision it was checked
    at, beside what the plugin would have used by default on this machine; ``by_input``: the
    agreement on each check input (``"scenes 97×129"``)."""

    precision: OpenvinoPrecision = "fp32"
    by_input: dict[str, LogitAgreement] = field(default_factory=dict)
    checked_at: str = CHECK_PRECISION
    plugin_default: str = ""


def export_openvino(
    model: nn.Module,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    precision: OpenvinoPrecision = "fp32",
    calibration: Sequence[torch.Tensor] = (),
    check: bool = True,
    tolerance: float | None = None,
) -> OpenvinoReport:
    """Export ``model`` (eval mode, fp32) to an OpenVINO IR at ``path`` (``.xml``; the weights
    go to the ``.bin`` beside it) with dynamic batch, height and width.

    ``precision="int8"`` quantises with NNCF on ``calibration``: normalised (1, C, H, W) images,
    as the model takes them (:func:`atrous.inference.fast.normalise_images`). With ``check``,
    the IR runs in OpenVINO at f32 on random and on real-looking images (procedural scenes) at
    two sizes against the eager model: fp32 must agree within ``tolerance`` (None: ten times the
    model's own fp32 rounding, :func:`~atrous.export.onnx.rounding_tolerance`); int8 must keep
    :data:`INT8_MIN_ARGMAX_AGREEMENT` of the scenes' pixels and stay within
    :data:`INT8_MAX_RELATIVE_DIFF` of the scale on them (on random images it is recorded only).
    A failed check raises :class:`ExportCheckError` and keeps the IR as ``<name>.failed.xml``/
    ``.bin`` (a file already at ``path`` is left as it was).
    """
    ov = _openvino()
    path = _xml_path(path)
    if precision == "int8" and not calibration:
        raise UsageError("int8 OpenVINO export needs calibration images (--calibration DIR)")
    model = inference_module(model)
    ir = convert(model)
    if precision == "int8":
        ir = quantize(ir, calibration)
    metadata = {**model_metadata(model, class_names, palette), "precision": precision}
    ir.set_rt_info(json.dumps(metadata), [METADATA_KEY])
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent))
    tmp = folder / path.name
    report = OpenvinoReport(path, {}, precision=precision)
    try:
        ov.save_model(ir, tmp, compress_to_fp16=False)
        if check:
            report = check_ir(model, tmp, precision, tolerance=tolerance)
            report.path = path
    except ExportCheckError as error:
        failed = path.with_name(f"{path.stem}.failed.xml")
        _move_ir(tmp, failed)
        raise ExportCheckError(f"{error}; {path} was not written, the IR is in {failed}") from None
    else:
        _move_ir(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return report


def _xml_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".xml":
        raise InputError(f"{path}: an OpenVINO IR is an .xml file (its weights go beside it)")
    return path


def _move_ir(xml: Path, target: Path) -> None:
    """Move an IR's ``.bin`` then its ``.xml`` (a reader finds the ``.bin`` by the name)."""
    os.replace(xml.with_suffix(".bin"), target.with_suffix(".bin"))
    os.replace(xml, target)


def convert(model: nn.Module) -> Any:
    """``model`` as an OpenVINO model with batch, height and width free (traced on one input;
    the traced sizes stay computed from the input's shape)."""
    ov = _openvino()
    channels = input_channels(model)
    example = torch.randn(2, channels, *CHECK_SIZES[0])  # batch 2: a batch of 1 would specialise
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # sizes are kept as shape ops
        # OpenVINO converts a module by tracing it; PyTorch announces tracing's deprecation.
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace", FutureWarning)
        return ov.convert_model(
            model, example_input=example, input=[ov.PartialShape([-1, channels, -1, -1])]
        )


def quantize(ir: Any, calibration: Sequence[torch.Tensor]) -> Any:
    """``ir`` quantised to int8 by NNCF's post-training quantisation on ``calibration``."""
    try:
        import nncf
    except ImportError:
        raise missing_dependency("nncf", "int8 OpenVINO export") from None
    arrays = [np.ascontiguousarray(image.detach().float().cpu().numpy()) for image in calibration]
    dataset = nncf.Dataset(arrays)
    return nncf.quantize(ir, dataset, subset_size=len(arrays))


def check_inputs(
    channels: int, sizes: Sequence[tuple[int, int]], mean: Sequence[float], std: Sequence[float]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Random images, then procedural scenes (3 channels only) normalised by ``mean``/``std``,
    of each size, batch 1 then 2."""
    generator = torch.Generator().manual_seed(0)
    for batch, (height, width) in enumerate(sizes, start=1):
        yield "random", torch.randn(batch, channels, height, width, generator=generator)
        if channels == 3:
            yield "scenes", _scenes(batch, height, width, mean, std)


def _scenes(
    batch: int, height: int, width: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    transform = normalisation(mean, std)
    images = []
    for index in range(batch):
        image, _ = render_scene(7, index, max(height, width))
        pixels = torch.from_numpy(np.ascontiguousarray(image[:height, :width])).permute(2, 0, 1)
        images.append(transform(tv_tensors.Image(pixels)))
    return torch.stack(images)


def check_ir(
    model: nn.Module,
    path: str | Path,
    precision: OpenvinoPrecision = "fp32",
    sizes: Sequence[tuple[int, int]] = CHECK_SIZES,
    tolerance: float | None = None,
) -> OpenvinoReport:
    """Run the IR at ``path`` in OpenVINO (CPU, f32) against the eager fp32 ``model`` on
    :func:`check_inputs`; ExportCheckError beyond the tolerance (fp32) or the int8 floor.
    Reports the worst agreement per size."""
    model = inference_module(model)
    network = OpenvinoNetwork(path)
    report = OpenvinoReport(Path(path), {}, precision=precision)
    report.plugin_default = default_inference_precision()
    config = model.config
    inputs = check_inputs(input_channels(model), sizes, config.mean, config.std)
    for kind, images in inputs:
        size = (images.shape[2], images.shape[3])
        with torch.no_grad():
            reference = model(images)
            agreement = compare_logits(network(images), reference)
        label = f"{kind} {size[0]}×{size[1]}"
        report.by_input[label] = agreement
        what = f"OpenVINO {precision} output on {label}"
        allowed = tolerance
        if precision == "int8":
            allowed = INT8_MAX_RELATIVE_DIFF
            if kind == "scenes":  # noise is outside any calibration's ranges: recorded only
                _require_int8(agreement, what)
        else:
            if allowed is None:
                allowed = rounding_tolerance(model, images, reference)
            require_agreement(agreement, allowed, what)
        report.keep_worst(size, agreement, allowed)
    return report


def _require_int8(agreement: LogitAgreement, what: str) -> None:
    """The int8 floor: most pixels keep their class, no logit moves by half the scale."""
    if (
        agreement.argmax_agreement < INT8_MIN_ARGMAX_AGREEMENT
        or agreement.relative_diff > INT8_MAX_RELATIVE_DIFF
    ):
        raise ExportCheckError(
            f"{what} differs from the eager model: {agreement.describe()} (int8 must keep at "
            f"least {100 * INT8_MIN_ARGMAX_AGREEMENT:.0f}% of pixels' classes and stay within "
            f"{INT8_MAX_RELATIVE_DIFF:g} of the scale)"
        )


class OpenvinoNetwork:
    """An OpenVINO compiled model behaving like the network: (N, C, H, W) tensor → logits.

    ``inference_precision``: the CPU plugin's ``INFERENCE_PRECISION_HINT``; ``"f32"`` by default
    (what the export was checked at), None for the plugin's own default (bf16 on CPUs with
    native bf16). ``config``: further OpenVINO properties (threads, performance hint).
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "CPU",
        inference_precision: str | None = CHECK_PRECISION,
        config: dict[str, Any] | None = None,
    ) -> None:
        ov = _openvino()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no OpenVINO IR at {path}")
        properties = dict(config or {})
        if inference_precision is not None:
            properties["INFERENCE_PRECISION_HINT"] = inference_precision
        core = ov.Core()
        try:
            ir = core.read_model(path)
            self.compiled = core.compile_model(ir, device, properties)
        except Exception as error:
            raise ValueError(f"cannot load OpenVINO IR {path}: {error}") from None
        stored = (
            ir.get_rt_info([METADATA_KEY]).astype(str) if ir.has_rt_info([METADATA_KEY]) else ""
        )
        self.metadata: dict[str, Any] = json.loads(stored or "{}")
        config_dict = self.metadata.get("config", {})
        #: What inference needs to pad inputs to aligned sizes (None: unknown, run as given).
        self.output_stride: int | None = config_dict.get("output_stride")
        self.align_corners: bool = config_dict.get("align_corners", True)
        #: The precision the plugin runs this network at.
        self.inference_precision: str = self.compiled.get_property(
            "INFERENCE_PRECISION_HINT"
        ).get_type_name()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        logits = self.compiled(array)[0]
        return torch.from_numpy(np.array(logits)).to(images.device)
