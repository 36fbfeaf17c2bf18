"""Fast inference: one call from a trained model to the fastest correct way to run it here.

    network = atrous.optimize_for_inference(model, example=(513, 513))          # fp32
    network = atrous.optimize_for_inference(model, precision="int8", calibration=images)
    segmenter.network = network  # segment(), evaluation and prediction take it as it is

Every BatchNorm is folded into the conv before it and the weights move to channels_last; then
the network runs on the backend that measured fastest and correct for its precision
(``docs/performance.md``, 2-core AVX-512 CPU; ``benchmarks/run.py`` measures it again):

============  =====================================================  ========================
precision     CPU                                                    CUDA
============  =====================================================  ========================
``fp32``      ONNX Runtime on our own export                         PyTorch, cudnn autotuned
``bf16``      PyTorch autocast, channels_last                        PyTorch autocast
``fp16``      —                                                      PyTorch autocast
``int8``      ONNX Runtime, static QDQ quantisation (per-channel      —
              weights, calibrated on the user's images)
============  =====================================================  ========================

For fp32 on ONNX Runtime with an ``example``, a second graph fixed to the example's size runs
images of that size (the any-size graph measured 7% slower on R-101 at 512×512).
``backend="compile"`` (``torch.compile`` with frozen weights) is there for fp32/bf16: it is
correct, but on the CPU it spends half a minute compiling per input size and gains less than
ONNX Runtime for fp32. Each network is checked on ``example`` against the eager model: fp32 must
agree within ``tolerance`` (max |Δlogit| over the logits' scale: by default ten times the eager
model's own fp32 rounding on the example, its distance from float64, and at least 1e-4;
:func:`~atrous.export.onnx.rounding_tolerance`) or :class:`FastCheckError` is raised; bf16 and
int8 agreement is recorded in ``network.report`` (their accuracy cost on a validation set is
measured by ``benchmarks/miou.py``).
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
    fastest,
    register_runtime,
    require_runtime,
)
from atrous.models.config import input_channels
from atrous.runtime.precision import autocast

Precision = Literal["fp32", "bf16", "fp16", "int8"]
#: "auto": the rule of :func:`choose_backend`; "fastest": measured among the installed runtimes
#: (:mod:`atrous.inference.runtimes`, fp32 on the CPU); or one by name.
Backend = Literal["auto", "fastest", "torch", "compile", "onnxruntime", "openvino", "tflite"]

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
    choice: str | None = None  # backend "fastest": the runtimes measured and the one chosen

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


def choose_backend(precision: Precision, device: torch.device) -> str:
    """The backend ``backend="auto"`` uses: the fastest correct one measured for each case."""
    if device.type == "cpu" and precision in ("fp32", "int8"):
        return "onnxruntime"
    return "torch"


def _check_combination(precision: str, backend: str, device: torch.device) -> None:
    if precision not in ("fp32", "bf16", "fp16", "int8"):
        raise ValueError(f"precision must be fp32, bf16, fp16 or int8, got {precision!r}")
    if backend not in ("fastest", "torch", "compile", *RUNTIMES):
        offered = ", ".join(["auto", "fastest", "compile", *RUNTIMES])
        raise ValueError(f"backend must be one of {offered}, got {backend!r}")
    if backend not in ("fastest", "torch", "compile", "onnxruntime") and (
        precision != "fp32" or device.type != "cpu"
    ):
        raise ValueError(f"the {backend} runtime runs fp32 on the CPU; use backend 'auto'")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs CUDA; use 'bf16' or 'int8' on the CPU")
    if precision == "int8" and backend != "onnxruntime":
        raise ValueError("int8 runs on ONNX Runtime (backend 'onnxruntime' or 'auto')")
    if backend == "onnxruntime" and (device.type != "cpu" or precision in ("bf16", "fp16")):
        raise ValueError(
            "the onnxruntime backend runs fp32 and int8 on the CPU; use backend 'torch' for "
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


@dataclass
class _Build:
    """What every backend is built from: the model, its folded copy, the example batch and the
    eager logits on it."""

    model: nn.Module
    folded: nn.Module
    batch: torch.Tensor
    reference: torch.Tensor
    precision: str
    calibration: Sequence[np.ndarray | torch.Tensor]
    workdir: str | Path | None

    def network(
        self, backend: str, allowed: float | None, tolerance: float | None, fixed: bool
    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], RuntimeChoice | None]:
        """The backend's network (``fixed``: onnxruntime adds a graph of the example's size);
        for "fastest", the measured choice too."""
        size = tuple(self.batch.shape[-2:])
        folder = Path(self.workdir) if self.workdir is not None else None
        if backend == "fastest":
            with tempfile.TemporaryDirectory(prefix="atrous-runtimes-") as scratch:
                folder = folder or Path(scratch)
                args = (self.model, self.folded, self.batch, self.reference, allowed, folder)
                return fastest(*args)
        if backend == "onnxruntime":
            fixed_size = size if fixed else None
            args = (self.folded, self.precision, self.calibration, tolerance, folder, fixed_size)
            return _onnxruntime(*args), None
        device = self.batch.device
        if backend in ("torch", "compile"):
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = True
            module = self.folded
            if backend == "compile":
                module = torch.compile(module, options={"freezing": True})
            return _TorchRunner(module, device, self.precision), None
        folder = folder or Path(tempfile.mkdtemp(prefix="atrous-runtime-"))
        return require_runtime(backend).build(self.folded, size, folder), None


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
            the fast network is checked on it (compiled backends compile for its size; fp32 on
            ONNX Runtime adds a graph fixed to its size, which runs faster at that size).
        precision: fp32, bf16, fp16 (CUDA) or int8 (CPU, ONNX Runtime).
        backend: auto (the rule in the module doc), fastest (fp32 on the CPU: the installed
            runtimes that pass the fp32 check, measured on ``example``'s size; ``--runtime
            auto``, :mod:`atrous.inference.runtimes`), torch, compile, onnxruntime, or another
            registered runtime by name.
        calibration: int8 only: a few of the user's images, (H, W, 3) uint8 RGB arrays or
            normalised tensors, from which activation ranges are set.
        tolerance: fp32 only: the largest max |Δlogit| from the eager model accepted, as a share
            of the logits' scale; None: from the eager model's own fp32 rounding on the example
            (:func:`~atrous.export.onnx.rounding_tolerance`: float64 on its device, TF32 too).
        workdir: onnxruntime only: keep the ONNX files here (``model.onnx``, ``model.int8.onnx``,
            ``model.<H>x<W>.onnx``) instead of a temporary folder; the first two are deployable like
            ``atrous export``'s, the third takes images of its size only.
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    if backend not in ("auto", "fastest", "compile"):
        require_runtime(backend)  # a missing package: the extra that installs it
    if backend == "auto" or (backend == "fastest" and (precision, device.type) != ("fp32", "cpu")):
        backend = choose_backend(precision, device)
    _check_combination(precision, backend, device)
    if precision == "int8" and not calibration:
        raise ValueError("int8 needs calibration images: pass a few of your own as calibration=")
    batch = _example_batch(example, device, input_channels(model))
    reference, folded = _reference_and_folded(model, batch)
    allowed = None
    if precision == "fp32":
        allowed = tolerance
        if allowed is None:
            allowed = rounding_tolerance(model, batch, reference)
    build = _Build(model, folded, batch, reference, precision, calibration or (), workdir)
    run, choice = build.network(backend, allowed, tolerance, example is not None)
    backend = choice.name if choice is not None else backend
    agreement = compare_logits(run(batch), reference)
    if allowed is not None:
        try:
            require_agreement(agreement, allowed, f"the {backend} fp32 network")
        except ExportCheckError as error:
            raise FastCheckError(str(error)) from None
    seconds = time.perf_counter() - start
    report = FastReport(backend, precision, tuple(batch.shape[-2:]), agreement, seconds, allowed)
    report = dataclasses.replace(report, choice=choice.describe() if choice else None)
    return FastNetwork(run, report, model.output_stride, model.align_corners)


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
    calibration: Sequence[np.ndarray | torch.Tensor],
    tolerance: float | None,
    workdir: str | Path | None,
    size: tuple[int, int] | None,
) -> OnnxNetwork | _SizeDispatch:
    """Export the folded model (checked at two sizes), quantise it for int8, open a session.

    For fp32 with a ``size``, also a graph fixed to that size (``model.<H>x<W>.onnx``, checked
    at two batch sizes), which runs images of exactly that size.
    """
    with tempfile.TemporaryDirectory(prefix="atrous-fast-") as scratch:
        folder = Path(workdir) if workdir is not None else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        folded = folded.to(memory_format=torch.contiguous_format)
        path = export_onnx(folded, folder / "model.onnx", tolerance=tolerance).path
        if precision == "int8":
            config = folded.config
            batches = normalise_images(calibration, config.mean, config.std)
            path = quantize_onnx(path, folder / "model.int8.onnx", batches)
        general = OnnxNetwork(path, options=session_options())
        if precision != "fp32" or size is None:
            return general
        fixed_path = folder / f"model.{size[0]}x{size[1]}.onnx"
        export_onnx(folded, fixed_path, tolerance=tolerance, size=size)
        return _SizeDispatch(size, OnnxNetwork(fixed_path, options=session_options()), general)


def _torch_network(folded: nn.Module, size: tuple[int, int], folder: Path) -> _TorchRunner:
    """PyTorch eager on a channels_last copy of the folded module (the CPU; other runtimes
    may change the folded module's memory format as they export it)."""
    module = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    return _TorchRunner(module, torch.device("cpu"), "fp32")


def _onnxruntime_network(
    folded: nn.Module, size: tuple[int, int], folder: Path
) -> OnnxNetwork | _SizeDispatch:
    """ONNX Runtime on the any-size graph and one fixed to ``size`` (the fp32 fast path)."""
    return _onnxruntime(folded, "fp32", (), None, folder, size)


def _openvino_network(folded: nn.Module, size: tuple[int, int], folder: Path) -> Network:
    """OpenVINO on the folded model's any-size IR, compiled at f32 (the plugin's bf16 default
    would fail the fp32 check on CPUs with native bf16)."""
    from atrous.export.openvino import OpenvinoNetwork, export_openvino

    folded = copy.deepcopy(folded).to(memory_format=torch.contiguous_format)
    return OpenvinoNetwork(export_openvino(folded, folder / "model.xml", check=False).path)


def _tflite_network(folded: nn.Module, size: tuple[int, int], folder: Path) -> _SizeDispatch:
    """LiteRT (XNNPACK) on a .tflite file of the folded model at ``size`` (a LiteRT graph takes
    one size); images of other sizes run on PyTorch."""
    from atrous.export.tflite import TfliteNetwork, export_tflite

    module = copy.deepcopy(folded).to(memory_format=torch.contiguous_format)
    path = export_tflite(module, folder / "model.tflite", size, check=False).path
    return _SizeDispatch(size, TfliteNetwork(path), _torch_network(folded, size, folder))


register_runtime("torch", "torch", _torch_network)
register_runtime("onnxruntime", "onnxruntime", _onnxruntime_network)
register_runtime("openvino", "openvino", _openvino_network)
register_runtime("tflite", "litert_torch", _tflite_network)  # converts; ai_edge_litert runs
