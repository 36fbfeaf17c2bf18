"""Export for deployment: ONNX with dynamic batch, height and width (or one fixed size), checked
in ONNX Runtime; and ``torch.export`` programs.

The ONNX file carries what a runtime needs besides the graph in its metadata (``atrous``: JSON
with the model configuration, class names, palette and input normalisation), so ``atrous
predict --onnx model.onnx`` and the snippet in ``docs/deployment.md`` need no other file.
Exports are for inference: a model's auxiliary training head is never part of them.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atrous.errors import AtrousError, UsageError
from atrous.export.graph import fold_resize_sizes
from atrous.models.config import input_channels
from atrous.models.saved import SavedModel

#: Key of the ONNX metadata entry that holds the model description.
METADATA_KEY = "atrous"
#: Input sizes of the parity check: two, neither a multiple of 16 nor square.
CHECK_SIZES = ((97, 129), (161, 113))
#: The least tolerance, as a share of the reference logits' scale (max |logit|, at least 1): fp32
#: rounding in another runtime measured 1e-6 to 2e-5 of it on AVX-512 (untrained ResNet-101 with
#: ±200 logits, random MobileNetV2 with ±17).
RELATIVE_TOLERANCE = 1e-4
#: How many times the eager model's own fp32 rounding (its distance from float64 on the same
#: input) another fp32 network of it may differ from it: kernels differ per CPU and runtime (an
#: AVX2 ONNX Runtime measured 9.6e-4 of the scale from eager fp32 on an untrained R-101 whose eager
#: fp32 was 3-8e-4 from float64).
ROUNDING_MARGIN = 10.0
#: Opsets the exporter writes: its operators are implemented from 18 (an older one is converted,
#: or silently left at 18, depending on the model) up to the newest it knows.
OPSETS = range(18, 24)


#: Batch, height and width are free in the exported graph.
_DYNAMIC = (
    {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC},
)
#: Only the batch is free (a graph for one image size).
_DYNAMIC_BATCH = ({0: torch.export.Dim.DYNAMIC},)


def inference_module(model: nn.Module) -> nn.Module:
    """``model`` in eval mode and fp32, without its auxiliary training head (if it has one)."""
    model = model.eval().float()
    return model.without_aux_head() if isinstance(model, SavedModel) else model


class ExportCheckError(AtrousError, RuntimeError):
    """The exported graph's outputs differ from the eager model's beyond the tolerance."""


class UnsupportedOpset(UsageError, ValueError):
    """An ONNX opset the exporter cannot write."""


def check_opset(opset: int) -> None:
    """Refuse an opset outside :data:`OPSETS`, naming the range (never write another one)."""
    if opset not in OPSETS:
        raise UnsupportedOpset(
            f"--opset {opset} is not supported: the exporter writes opsets {OPSETS.start} to "
            f"{OPSETS.stop - 1} (ONNX Runtime 1.14 and newer read opset 18)"
        )


@dataclass(frozen=True)
class LogitAgreement:
    """How close one network's logits are to a reference's, judged on the reference's scale."""

    max_abs_diff: float  # max |logit − reference logit|
    scale: float  # max |reference logit|
    argmax_agreement: float  # share of pixels where both predict the same class

    @property
    def relative_diff(self) -> float:
        """max |Δlogit| over the logits' scale (at least 1, so near-zero logits are not
        judged on noise)."""
        return self.max_abs_diff / max(self.scale, 1.0)

    def describe(self) -> str:
        return (
            f"max |Δlogit| {self.max_abs_diff:.3g} = {self.relative_diff:.2g} of the logits' "
            f"scale {self.scale:.3g}, argmax agreement {100 * self.argmax_agreement:.2f}%"
        )


def compare_logits(logits: torch.Tensor, reference: torch.Tensor) -> LogitAgreement:
    """(N, C, H, W) ``logits`` against ``reference`` of the same shape."""
    logits, reference = logits.float(), reference.float()
    return LogitAgreement(
        (logits - reference).abs().max().item(),
        reference.abs().max().item(),
        (logits.argmax(1) == reference.argmax(1)).float().mean().item(),
    )


def float64_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model``'s logits on ``images`` computed in float64 on their device (a copy; TF32 and
    reduced-precision kernels do not apply to float64): the exact answer fp32 approximates."""
    exact = copy.deepcopy(model).eval().double()
    with torch.no_grad():
        return exact(images.double())


def rounding_tolerance(
    model: nn.Module,
    images: torch.Tensor,
    reference: torch.Tensor,
    floor: float = RELATIVE_TOLERANCE,
    margin: float = ROUNDING_MARGIN,
) -> float:
    """The tolerance an fp32 network of ``model`` is held to on ``images``: ``margin`` times
    how far the eager fp32 logits (``reference``) are from float64 ones, as a share of the
    logits' scale, and at least ``floor``. A deep, large-logit model rounds more, and so may
    differ more; a wrong graph differs by far more than rounding."""
    exact = float64_logits(model, images.to(reference.device))
    scale = max(exact.abs().max().item(), 1.0)
    rounding = (reference.double() - exact).abs().max().item() / scale
    return max(floor, margin * rounding)


def require_agreement(agreement: LogitAgreement, tolerance: float, what: str) -> None:
    """Raise ExportCheckError naming ``what`` unless the relative difference is within
    ``tolerance``."""
    if not agreement.relative_diff <= tolerance:
        raise ExportCheckError(
            f"{what} differs from the eager model: {agreement.describe()} (tolerance "
            f"{tolerance:g} of the scale)"
        )


@dataclass
class ExportReport:
    """Where the file went and how close its outputs are to the eager model's, per size, with
    the tolerance each was held to (a share of the logits' scale)."""

    path: Path
    agreement: dict[tuple[int, int], LogitAgreement]
    tolerance: dict[tuple[int, int], float] = field(default_factory=dict)

    def keep_worst(self, size: tuple[int, int], agreement: LogitAgreement, allowed: float) -> None:
        """Record ``agreement`` at ``size`` (held to ``allowed``) unless one further from the
        eager model is already recorded there: the report states each size's worst input."""
        seen = self.agreement.get(size)
        if seen is None or agreement.relative_diff > seen.relative_diff:
            self.agreement[size], self.tolerance[size] = agreement, allowed


def model_metadata(
    model: nn.Module,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """What a runtime needs to use the exported graph: classes, colours, normalisation."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("the model has no .config; build it with atrous.create_model/build_model")
    class_names = class_names or getattr(model, "class_names", None)
    palette = palette or getattr(model, "palette", None)
    bands = "RGB" if config.in_channels == 3 else f"{config.in_channels} bands"
    return {
        "config": config.to_dict(),
        "num_classes": config.num_classes,
        "class_names": list(class_names) if class_names else None,
        "palette": [list(c) for c in palette] if palette else None,
        "mean": list(config.mean),
        "std": list(config.std),
        "input": f"float32 (N, {config.in_channels}, H, W), {bands} on [0, 1] normalised by "
        "mean/std",
        "output": "float32 (N, num_classes, H, W) logits",
    }


def _write_atomically(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_onnx(
    model: nn.Module,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    opset: int = 18,
    check: bool = True,
    tolerance: float | None = None,
    size: tuple[int, int] | None = None,
) -> ExportReport:
    """Export ``model`` (eval mode, fp32) to ONNX with dynamic batch, height and width.

    ``size`` fixes height and width instead (batch stays free): ONNX Runtime plans such a graph
    better (the any-size graph measured 7% slower on DeepLabV3+ ResNet-101 at 512×512,
    ``docs/performance.md``), and its resize sizes are constants
    (:func:`~atrous.export.graph.fold_resize_sizes`: no ``Shape`` nodes). ``opset`` must be one
    of :data:`OPSETS` (UnsupportedOpset).
    With ``check``, the file is run in ONNX Runtime on random images at two sizes (or two batch
    sizes at ``size``) and compared with the eager model; a max |Δlogit| above the tolerance
    times the logits' scale (:class:`LogitAgreement`) is an :class:`ExportCheckError`, and the
    graph is kept as ``<name>.failed.onnx`` instead (a file already at ``path`` is left as it
    was). ``tolerance`` None: derived from the model's own fp32 rounding on each check input
    (:func:`rounding_tolerance`); a number: that share of the scale.
    """
    import onnx

    check_opset(opset)
    path = Path(path)
    model = inference_module(model)
    sizes = CHECK_SIZES if size is None else (tuple(size), tuple(size))
    proto = _onnx_proto(model, sizes[0], opset, size is not None)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(model_metadata(model, class_names, palette))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(proto, tmp)
        report = ExportReport(path, {})
        if check:
            checked = check_graph(model, tmp, sizes, tolerance)
            report.agreement, report.tolerance = checked.agreement, checked.tolerance
    except ExportCheckError as error:
        failed = path.with_name(f"{path.stem}.failed{path.suffix or '.onnx'}")
        os.replace(tmp, failed)
        message = f"{error}; {path} was not written, the graph is in {failed}"
        raise ExportCheckError(message) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return report


def _onnx_proto(model: nn.Module, size: Sequence[int], opset: int, fixed: bool) -> Any:
    """The exported graph; an opset the exporter did not write as asked is UnsupportedOpset."""
    example = torch.randn(2, input_channels(model), *size)  # batch 2: a batch of 1 would specialise
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=_DYNAMIC_BATCH if fixed else _DYNAMIC,
        verbose=False,
    )
    proto = program.model_proto
    if fixed:  # height and width are constants: so are the resize sizes
        fold_resize_sizes(proto)
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise UnsupportedOpset(
            f"--opset {opset}: the exporter wrote opset {written} for this model instead; "
            f"choose another of {OPSETS.start} to {OPSETS.stop - 1}"
        )
    return proto


def check_graph(
    model: nn.Module,
    path: str | Path,
    sizes: Sequence[tuple[int, int]] = CHECK_SIZES,
    tolerance: float | None = None,
) -> ExportReport:
    """Run the ONNX graph at ``path`` in ONNX Runtime against the eager fp32 ``model`` on random
    images of each size (batch 1, then 2); ExportCheckError beyond the tolerance (None: derived
    per input, :func:`rounding_tolerance`). Reports the worst agreement per size."""
    model = inference_module(model)
    report = ExportReport(Path(path), {})
    network = OnnxNetwork(path)
    channels = input_channels(model)
    generator = torch.Generator().manual_seed(0)
    for batch, (height, width) in enumerate(sizes, start=1):
        images = torch.randn(batch, channels, height, width, generator=generator)
        with torch.no_grad():
            reference = model(images)
            agreement = compare_logits(network(images), reference)
        allowed = tolerance
        if allowed is None:
            allowed = rounding_tolerance(model, images, reference)
        require_agreement(agreement, allowed, f"ONNX output at {height}×{width}")
        report.keep_worst((height, width), agreement, allowed)
    return report


def export_program(model: nn.Module, path: str | Path) -> Path:
    """Save a ``torch.export`` program (``.pt2``) with dynamic batch, height and width."""
    path = Path(path)
    model = inference_module(model)
    example = torch.randn(2, input_channels(model), *CHECK_SIZES[0])  # batch 2: 1 would specialise
    program = torch.export.export(model, (example,), dynamic_shapes=_DYNAMIC)
    _write_atomically(path, lambda tmp: torch.export.save(program, tmp))
    return path


class OnnxNetwork:
    """An ONNX Runtime session behaving like the network: (N, C, H, W) tensor → logits tensor."""

    def __init__(
        self, path: str | Path, providers: Sequence[str] | None = None, options: Any = None
    ) -> None:
        """``options``: an ``onnxruntime.SessionOptions`` (threads, optimisation level)."""
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at {path}")
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as error:
            raise ValueError(f"cannot load ONNX model {path}: {error}") from None
        self.input_name = self.session.get_inputs()[0].name
        custom = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = json.loads(custom.get(METADATA_KEY, "{}"))
        config = self.metadata.get("config", {})
        #: What inference needs to pad inputs to aligned sizes (None: unknown, run as given).
        self.output_stride: int | None = config.get("output_stride")
        self.align_corners: bool = config.get("align_corners", True)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().numpy()
        (logits,) = self.session.run(None, {self.input_name: np.ascontiguousarray(array)})
        return torch.from_numpy(logits).to(images.device)
