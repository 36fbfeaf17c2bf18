"""Fast inference: one call from a trained model to the fastest correct way to run it here.

    network = atrous.optimize_for_inference(model, example=(513, 513))          # fp32
    network = atrous.optimize_for_inference(model, precision="int8", calibration=images)
    segmenter.network = network  # segment(), evaluation and prediction take it as it is

Every BatchNorm is folded into the conv before it and the weights move to channels_last; then
the network runs on the fastest correct backend for its precision:

============  =====================================================  ========================
precision     CPU                                                    CUDA
============  =====================================================  ========================
``fp32``      measured: the installed runtimes (PyTorch, ONNX         PyTorch, cudnn autotuned
              Runtime; OpenVINO, LiteRT with their extras)
``bf16``      PyTorch autocast, channels_last                        PyTorch autocast
``fp16``      —                                                      PyTorch autocast
``int8``      measured: ONNX Runtime's static QDQ (per-channel        —
              weights); OpenVINO (NNCF), LiteRT (PT2E) with extras,
              each calibrated on the user's images
============  =====================================================  ========================

On the CPU the runtimes that pass the check are timed on the example's size once per model
configuration, size and machine, and the choice is remembered (:mod:`atrous.inference.runtimes`,
:mod:`atrous.inference.choices`); ``docs/performance.md`` has what each measured on a 2-core
AVX-512 CPU, and ``benchmarks/run.py`` measures it again.

For fp32 on ONNX Runtime with an ``example``, a second graph fixed to the example's size runs
images of that size (the any-size graph measured 7% slower on R-101 at 512×512).
``backend="compile"`` (``torch.compile`` with frozen weights) is there for fp32/bf16: it is
correct, but on the CPU it spends half a minute compiling per input size and gains less than
ONNX Runtime for fp32. Each network is checked on ``example`` against the eager model: fp32 must
agree within ``tolerance`` (max |Δlogit| over the logits' scale: by default ten times the eager
model's own fp32 rounding on the example, its distance from float64, and at least 1e-4;
:func:`~atrous.export.onnx.rounding_tolerance`) or :class:`FastCheckError` is raised; bf16 and
int8 agreement is recorded in ``network.report`` (their accuracy cost on a validation set is
measured by ``benchmarks/miou.py``; int8 runtimes far from the best int8 one are not chosen).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torchvision import tv_tensors

from atrous.data.transforms import normalisation
from atrous.export.onnx import (
    ExportCheckError,
    LogitAgreement,
    OnnxNetwork,
    compare_logits,
    export_onnx,
    require_agreement,
    rounding_tolerance,
)
from atrous.export.quantize import quantize_qdq
from atrous.inference.runtimes import (
    RUNTIMES,
    Network,
    RuntimeChoice,
    Size,
    Trial,
    fastest,
    register_runtime,
    require_runtime,
)
from atrous.models.config import input_channels
from atrous.runtime.precision import autocast

Precision = Literal["fp32", "bf16", "fp16", "int8"]
#: "auto": measured among the installed runtimes on the CPU for fp32 and int8
#: (:mod:`atrous.inference.runtimes`), PyTorch otherwise (:func:`measured`); or one by name.
Backend = Literal["auto", "torch", "compile", "onnxruntime", "openvino", "tflite"]

#: Calibration images used by the CLI for int8 (the first ones given, or of the dataset).
CALIBRATION_IMAGES = 8
#: Input size (H, W) of the agreement check when no example is given.
DEFAULT_EXAMPLE = (129, 129)


class FastCheckError(ExportCheckError):
    """An fp32 fast network's logits differ from the eager model's beyond the tolerance."""


@dataclass(frozen=True)
class FastReport:
    """How a fast network was built and how close it is to the eager fp32 model on the example."""

    backend: str
    precision: str
    example_size: tuple[int, int]
    agreement: LogitAgreement  # with the eager fp32 model on the example
    build_seconds: float
    tolerance: float | None = None  # fp32: the share of the logits' scale it was held to
    choice: str | None = None  # backend "auto" on the CPU: the runtimes measured, the one chosen

    @property
    def max_abs_diff(self) -> float:
        return self.agreement.max_abs_diff

    @property
    def argmax_agreement(self) -> float:
        return self.agreement.argmax_agreement


class FastNetwork:
    """A network built for inference: normalised (N, 3, H, W) images → float32 (N, C, H, W)
    logits on the images' device, usable wherever a network is (``Segmenter.network``,
    :func:`~atrous.inference.strategies.segment`, which pads inputs to sizes aligned with
    ``output_stride``). Its output stride is fixed."""

    def __init__(
        self,
        run: Callable[[torch.Tensor], torch.Tensor],
        report: FastReport,
        output_stride: int | None = None,
        align_corners: bool = True,
    ) -> None:
        self._run = run
        self.report = report
        self.output_stride = output_stride
        self.align_corners = align_corners

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(images)

    def __repr__(self) -> str:
        r = self.report
        return (
            f"FastNetwork({r.precision} on {r.backend}: {r.agreement.describe()} at "
            f"{r.example_size[0]}×{r.example_size[1]})"
        )


class _Uses(TorchDispatchMode):
    """Counts how many operators take each watched tensor (by id) as an input; metadata reads
    (``x.shape``, ``x.dim()``) never reach the dispatcher, so they do not count."""

    def __init__(self, watched: dict[int, Any]) -> None:
        super().__init__()
        self.watched = watched
        self.counts: Counter[int] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for value in tree_leaves((args, kwargs or {})):
            if isinstance(value, torch.Tensor) and id(value) in self.watched:
                self.counts[id(value)] += 1
        return func(*args, **(kwargs or {}))


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` in eval mode with every BatchNorm folded into the conv feeding it.

    Pairs are found by running ``example`` (default: one small random image) once: a BN whose
    input is a conv's output, when nothing else uses that output and neither module runs twice,
    becomes part of the conv's weights and bias and is replaced by ``nn.Identity`` (timm's
    BatchNormAct2d by its ``drop`` and ``act``, which stay). Eval-mode
    logits are unchanged up to float rounding; the copy is for inference only.
    """
    model = copy.deepcopy(model).eval()
    parameter = next(model.parameters())
    if example is None:
        shape = (1, input_channels(model), 65, 65)
        example = torch.randn(*shape, device=parameter.device, dtype=parameter.dtype)
    outputs: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    pairs: list[tuple[nn.Module, nn.Module, int]] = []
    calls: Counter[nn.Module] = Counter()

    def after_conv(conv: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        calls[conv] += 1
        outputs[id(output)] = (conv, output)  # keeps the tensor alive, so ids stay unique

    def before_bn(bn: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        calls[bn] += 1
        if id(inputs[0]) in outputs:
            pairs.append((outputs[id(inputs[0])][0], bn, id(inputs[0])))

    handles = [m.register_forward_hook(after_conv) for m in model.modules() if type(m) is nn.Conv2d]
    handles += [
        m.register_forward_pre_hook(before_bn) for m in model.modules() if _foldable_norm(m)
    ]
    uses = _Uses(outputs)
    try:
        with torch.no_grad(), uses:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    names = {module: name for name, module in model.named_modules(remove_duplicate=False)}
    for conv, bn, key in pairs:
        if uses.counts[key] == 1 and calls[conv] == 1 and calls[bn] == 1:
            _replace(model, names[conv], fuse_conv_bn_eval(conv, bn))
            rest = nn.Sequential(bn.drop, bn.act) if hasattr(bn, "act") else nn.Identity()
            _replace(model, names[bn], rest.eval())
    return model


def _foldable_norm(module: nn.Module) -> bool:
    """A plain BatchNorm2d, or timm's BatchNormAct2d (BN, then its ``drop`` and ``act``, which
    stay after folding)."""
    if type(module) is nn.BatchNorm2d:
        return True
    return isinstance(module, nn.BatchNorm2d) and type(module).__name__ == "BatchNormAct2d"


def normalise_images(
    images: Sequence[np.ndarray | torch.Tensor], mean: Sequence[float], std: Sequence[float]
) -> list[torch.Tensor]:
    """Images → normalised (1, 3, H, W) float tensors, the one way every inference path
    normalises: (H, W, 3) uint8 RGB arrays go through the evaluation's own
    :func:`~atrous.data.transforms.normalisation`; tensors are taken as already normalised."""
    transform = normalisation(mean, std)
    batches = []
    for image in images:
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"expected an (H, W, 3) uint8 RGB image, got shape {image.shape} of "
                    f"{image.dtype}"
                )
            pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
            batches.append(transform(tv_tensors.Image(pixels))[None])
        else:
            tensor = image.detach().float().cpu()
            batches.append(tensor[None] if tensor.ndim == 3 else tensor)
    return batches


def measured(precision: str, device: torch.device) -> bool:
    """Whether ``backend="auto"`` measures the installed runtimes (fp32 and int8 on the CPU) or
    takes PyTorch (bf16, fp16, and every precision on CUDA: the fastest measured there)."""
    return device.type == "cpu" and precision in ("fp32", "int8")


def _check_combination(precision: str, backend: str, device: torch.device) -> None:
    if precision not in ("fp32", "bf16", "fp16", "int8"):
        raise ValueError(f"precision must be fp32, bf16, fp16 or int8, got {precision!r}")
    if backend not in ("auto", "torch", "compile", *RUNTIMES):
        offered = ", ".join(["auto", "compile", *RUNTIMES])
        raise ValueError(f"backend must be one of {offered}, got {backend!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs CUDA; use 'bf16' or 'int8' on the CPU")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("precision 'int8' runs on the CPU; use 'fp16' or 'bf16' on CUDA")
    if backend in ("torch", "compile"):
        if precision == "int8":
            raise ValueError(f"int8 does not run on {backend}; use backend 'auto'")
        return
    if backend != "auto" and (precision not in ("fp32", "int8") or device.type != "cpu"):
        raise ValueError(
            f"the {backend} runtime runs fp32 and int8 on the CPU; use backend 'torch' for "
            f"{precision} on {device.type}"
        )


class _TorchRunner:
    """A BN-folded channels_last module, under autocast for bf16/fp16."""

    def __init__(self, module: nn.Module, device: torch.device, precision: str) -> None:
        self.module, self.device, self.precision = module, device, precision

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            logits = self.module(x)
        return logits.float().contiguous().to(images.device)


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime options that measured fastest here: every graph optimisation, one intra-op
    thread per core (PyTorch's count), spinning threads (the default; turning it off cost 5–15%)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return options


def quantize_onnx(
    source: Path, target: Path, calibration: Sequence[torch.Tensor], input_name: str = "images"
) -> Path:
    """Static int8 QDQ quantisation of an fp32 ONNX file: per-channel int8 weights, uint8
    activations with ranges (min/max) observed on ``calibration`` (normalised image batches)."""
    return quantize_qdq(source, target, calibration, input_name)


def _example_batch(
    example: torch.Tensor | Sequence[int] | None, device: torch.device, channels: int
) -> torch.Tensor:
    if isinstance(example, torch.Tensor):
        if example.ndim != 4 or example.shape[1] != channels:
            raise ValueError(f"example must be (N, {channels}, H, W), got {tuple(example.shape)}")
        return example.detach().float().to(device)
    shape = (1, channels, *(DEFAULT_EXAMPLE if example is None else example))
    generator = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=generator).to(device)


def _network(
    model: nn.Module, trial: Trial, backend: str, workdir: str | Path | None
) -> tuple[Network, RuntimeChoice | None]:
    """The backend's network for ``trial`` (each runtime's files in ``workdir/<runtime>``, or a
    temporary folder); for "auto" on the CPU, the measured choice too."""
    if backend in ("torch", "compile"):
        device = trial.batch.device
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        module = trial.folded
        if backend == "compile":
            module = torch.compile(module, options={"freezing": True})
        return _TorchRunner(module, device, trial.precision), None
    with tempfile.TemporaryDirectory(prefix="atrous-runtimes-") as scratch:
        folder = Path(workdir) if workdir is not None else Path(scratch)
        if backend == "auto":
            return fastest(model, trial, folder)
        return RUNTIMES[backend].network(trial, folder / backend), None


def optimize_for_inference(
    model: nn.Module,
    example: torch.Tensor | Sequence[int] | None = None,
    *,
    precision: Precision = "fp32",
    backend: Backend = "auto",
    calibration: Sequence[np.ndarray | torch.Tensor] | None = None,
    tolerance: float | None = None,
    workdir: str | Path | None = None,
) -> FastNetwork:
    """The fastest correct way to run ``model`` (a DeepLab in any mode; it is not changed).

    Args:
        model: the trained network, on the device it should run on.
        example: a normalised (N, 3, H, W) batch or an (H, W) size like the images to come;
            the fast network is checked on it and, on the CPU, runtimes are timed on it (fp32
            on ONNX Runtime adds a graph fixed to its size; LiteRT's file takes that size only).
        precision: fp32, bf16, fp16 (CUDA) or int8 (CPU).
        backend: auto (fp32 and int8 on the CPU: the installed runtimes that pass the check,
            timed on ``example``'s size, the choice remembered on this machine,
            :mod:`atrous.inference.runtimes`; otherwise PyTorch), torch, compile, or a
            registered runtime by name (onnxruntime, openvino, tflite: fp32 and int8).
        calibration: int8 only: a few of the user's images, (H, W, 3) uint8 RGB arrays or
            normalised tensors, from which activation ranges are set.
        tolerance: fp32 only: the largest max |Δlogit| from the eager model accepted, as a share
            of the logits' scale; None: from the eager model's own fp32 rounding on the example
            (:func:`~atrous.export.onnx.rounding_tolerance`: float64 on its device, TF32 too).
        workdir: keep each runtime's files in ``workdir/<runtime>`` instead of a temporary
            folder (onnxruntime: ``model.onnx``, ``model.int8.onnx`` and the fixed-size
            ``model.<H>x<W>.onnx``, deployable like ``atrous export``'s; openvino: ``model.xml``;
            tflite: ``model.tflite``).
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    if backend not in ("auto", "compile"):
        require_runtime(backend, precision)  # a missing package: the extra that installs it
    if backend == "auto" and not measured(precision, device):
        backend = "torch"
    _check_combination(precision, backend, device)
    if precision == "int8" and not calibration:
        raise ValueError("int8 needs calibration images: pass a few of your own as calibration=")
    trial = _trial(model, example, precision, calibration or (), tolerance)
    run, choice = _network(model, trial, backend, workdir)
    backend = choice.name if choice is not None else backend
    agreement = compare_logits(run(trial.batch), trial.reference)
    allowed = trial.tolerance if precision == "fp32" else None
    if allowed is not None:
        try:
            require_agreement(agreement, allowed, f"the {backend} fp32 network")
        except ExportCheckError as error:
            raise FastCheckError(str(error)) from None
    seconds = time.perf_counter() - start
    report = FastReport(backend, precision, trial.size, agreement, seconds, allowed)
    report = dataclasses.replace(report, choice=choice.describe() if choice else None)
    return FastNetwork(run, report, model.output_stride, model.align_corners)


def _trial(
    model: nn.Module,
    example: torch.Tensor | Sequence[int] | None,
    precision: str,
    calibration: Sequence[np.ndarray | torch.Tensor],
    tolerance: float | None,
) -> Trial:
    """The example batch, the eager fp32 logits on it, the folded model, the normalised
    calibration batches and fp32's tolerance (None: from the model's own rounding)."""
    device = next(model.parameters()).device
    batch = _example_batch(example, device, input_channels(model))
    reference, folded = _reference_and_folded(model, batch)
    if tolerance is None and precision == "fp32":
        tolerance = rounding_tolerance(model, batch, reference)
    batches = []
    if calibration:
        batches = normalise_images(calibration, model.config.mean, model.config.std)
    sized = example is not None
    return Trial(folded, batch, reference, precision, batches, tolerance or 0.0, sized)


def _reference_and_folded(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
    """The eager model's fp32 logits on ``batch`` and its BN-folded channels_last copy (the
    model's own mode is left as it was)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = model(batch).float()
        folded = fold_batchnorm(model).requires_grad_(False)
    finally:
        model.train(was_training)
    return reference, folded.to(memory_format=torch.channels_last)


class _SizeDispatch:
    """A graph made for one image size, and the any-size graph for the others."""

    def __init__(self, size: tuple[int, int], fixed: Network, general: Network) -> None:
        self.size, self.fixed, self.general = size, fixed, general

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        network = self.fixed if tuple(images.shape[-2:]) == self.size else self.general
        return network(images)


def _onnxruntime(
    folded: nn.Module,
    precision: str,
    calibration: Sequence[torch.Tensor],
    folder: Path,
    size: tuple[int, int] | None,
) -> OnnxNetwork | _SizeDispatch:
    """Export the folded model (checked at two sizes), quantise it for int8 on ``calibration``
    (normalised batches), open a session.

    For fp32 with a ``size``, also a graph fixed to that size (``model.<H>x<W>.onnx``, checked
    at two batch sizes), which runs images of exactly that size.
    """
    folder.mkdir(parents=True, exist_ok=True)
    folded = copy.deepcopy(folded).to(memory_format=torch.contiguous_format)
    path = export_onnx(folded, folder / "model.onnx").path
    if precision == "int8":
        path = quantize_onnx(path, folder / "model.int8.onnx", calibration)
    general = OnnxNetwork(path, options=session_options())
    if precision != "fp32" or size is None:
        return general
    fixed_path = folder / f"model.{size[0]}x{size[1]}.onnx"
    export_onnx(folded, fixed_path, size=size)
    return _SizeDispatch(size, OnnxNetwork(fixed_path, options=session_options()), general)


def _torch_network(folded: nn.Module, size: Size, folder: Path) -> _TorchRunner:
    """PyTorch eager on a channels_last copy of the folded module (the CPU; other runtimes
    may change the folded module's memory format as they export it)."""
    module = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    return _TorchRunner(module, torch.device("cpu"), "fp32")


def _onnxruntime_network(folded: nn.Module, size: Size, folder: Path) -> Network:
    """ONNX Runtime on the any-size graph and, given a ``size``, one fixed to it."""
    return _onnxruntime(folded, "fp32", (), folder, size)


def _onnxruntime_int8_network(
    folded: nn.Module, size: Size, folder: Path, calibration: Sequence[torch.Tensor]
) -> OnnxNetwork:
    """ONNX Runtime on the static QDQ int8 graph (per-channel weights), any size."""
    return _onnxruntime(folded, "int8", calibration, folder, None)


def _openvino_network(folded: nn.Module, size: Size, folder: Path) -> Network:
    """OpenVINO on the folded model's any-size IR, compiled at f32 (the plugin's bf16 default
    would fail the fp32 check on CPUs with native bf16)."""
    return _openvino_ir(folded, folder, "fp32", ())


def _openvino_int8_network(
    folded: nn.Module, size: Size, folder: Path, calibration: Sequence[torch.Tensor]
) -> Network:
    """OpenVINO on the NNCF int8 IR (post-training quantisation on ``calibration``), any size."""
    return _openvino_ir(folded, folder, "int8", calibration)


def _openvino_ir(
    folded: nn.Module, folder: Path, precision: str, calibration: Sequence[torch.Tensor]
) -> Network:
    from atrous.export.openvino import OpenvinoNetwork, export_openvino

    folded = copy.deepcopy(folded).to(memory_format=torch.contiguous_format)
    path = folder / "model.xml"
    export_openvino(folded, path, precision=precision, calibration=calibration, check=False)
    return OpenvinoNetwork(path)


def _tflite_network(folded: nn.Module, size: Size, folder: Path) -> _SizeDispatch:
    """LiteRT (XNNPACK) on a .tflite file of the folded model at ``size`` (a LiteRT graph takes
    one size); images of other sizes run on PyTorch."""
    return _tflite_file(folded, size, folder, "fp32", ())


def _tflite_int8_network(
    folded: nn.Module, size: Size, folder: Path, calibration: Sequence[torch.Tensor]
) -> _SizeDispatch:
    """LiteRT on an int8 .tflite file at ``size`` (PT2E, calibrated on ``calibration``);
    images of other sizes run on PyTorch in fp32."""
    return _tflite_file(folded, size, folder, "int8", calibration)


def _tflite_file(
    folded: nn.Module,
    size: Size,
    folder: Path,
    precision: str,
    calibration: Sequence[torch.Tensor],
) -> _SizeDispatch:
    from atrous.export.tflite import TfliteNetwork, export_tflite

    if size is None:
        raise ValueError("a LiteRT file takes one input size: give an example")

    module = copy.deepcopy(folded).to(memory_format=torch.contiguous_format)
    path = folder / f"model.{precision}.tflite"
    export_tflite(module, path, size, precision, calibration, check=False)
    return _SizeDispatch(size, TfliteNetwork(path), _torch_network(folded, size, folder))


register_runtime("torch", "torch", _torch_network)
register_runtime("onnxruntime", "onnxruntime", _onnxruntime_network, _onnxruntime_int8_network)
register_runtime("openvino", "openvino", _openvino_network, _openvino_int8_network)
# LiteRT: litert_torch converts, ai_edge_litert (its dependency) runs.
register_runtime("tflite", "litert_torch", _tflite_network, _tflite_int8_network)
