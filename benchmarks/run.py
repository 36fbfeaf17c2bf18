"""atrous beside every way a user runs a peer model, in one run on one machine (issue 8).

    python benchmarks/run.py                      # the default rows: under 10 minutes on 2 cores
    python benchmarks/run.py --rows r101_os16_512 --rounds 9
    python benchmarks/run.py --rows all           # every configuration (longer)
    python benchmarks/run.py --device cuda        # on a GPU: CUDA events, AMP, cudnn.benchmark

For each row (a configuration and input size) the atrous network and its peer (the same network
converted from segmentation_models_pytorch or torchvision, or the nearest peer configuration;
random weights, BN statistics set from two random images so logits are of a trained model's
scale) are built every way that works: eager, channels_last with BN folded, torch.compile
(freezing), ONNX Runtime fp32 and int8 (static QDQ, per-channel) for the peer;
``atrous.optimize_for_inference`` at fp32, bf16 and int8 for atrous. Then, interleaving the
contenders round by round so that drifts of the machine hit all of them alike:

- latency: median of ``--rounds`` batch-1 calls after two warm-up calls;
- images/s at batch 4 (selected paths), and peak memory of one call (resident memory above the
  level before it, sampled every millisecond, after glibc has handed free memory back);
- one training step (forward + backward + SGD, batch 2, 321×321; smp needs 320×320), and at OS8
  the same step with activation checkpointing;
- the roofline: Mult-Adds ÷ the throughput of a reference conv (3×3, 256→256 at 65×65) at that
  precision, timed in the same interleaved rounds as the row's contenders.

It prints a Markdown table with ratios (atrous ÷ best peer path, ÷ roofline) and writes JSON
(``--json``, default benchmarks/results/latest.json). docs/performance.md holds the latest table.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import atrous
from atrous.convert.torch_models import from_smp, from_torchvision
from atrous.export.onnx import OnnxNetwork
from atrous.inference.fast import fold_batchnorm, quantize_onnx, session_options
from atrous.inference.predict import Segmenter, fast_segmenter
from atrous.inference.strategies import InferenceConfig
from atrous.models.profile import describe_device, profile_model
from atrous.runtime.precision import autocast

Runner = Callable[[torch.Tensor], Any]
ROOT = Path(__file__).resolve().parent
#: Idle time before each timed call: ONNX Runtime and OpenMP threads keep spinning for a while
#: after a call, and would slow the next contender by up to 20%; one process runs one runtime.
PAUSE_S = 0.2


# ---------------------------------------------------------------------------- measuring


class Clock:
    """Wall time of one call: perf_counter on the CPU, CUDA events on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000
        start_time = time.perf_counter()
        fn()
        return time.perf_counter() - start_time


def _release_free_memory() -> None:
    """Hand memory that glibc holds free back to the OS, so resident size follows live use."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of a block above the level at its start, in MiB: on CUDA the allocator's
    peak; on the CPU the resident set, sampled every millisecond by a thread."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib = float("nan")

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        _release_free_memory()
        self.base = self.peak = _rss()
        self.done = threading.Event()

        def sample() -> None:
            while not self.done.wait(0.001):
                self.peak = max(self.peak, _rss())

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
            return
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, _rss())
        self.mib = (self.peak - self.base) / 2**20


#: Mult-Adds of the reference conv (3×3, 256→256 at 65×65) that defines the roofline.
CONV_MACS = 256 * 256 * 9 * 65 * 65


def conv_probe(device: torch.device, precision: str) -> Callable[[], Any]:
    """One call of the reference conv at ``precision``, the machine's conv limit: PyTorch
    (channels_last) for fp32/bf16/fp16, ONNX Runtime's QLinearConv for int8; warmed up."""
    if precision == "int8":
        run = _int8_conv_probe()
    else:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        x = torch.randn(1, 256, 65, 65, device=device, dtype=dtype)
        weight = torch.randn(256, 256, 3, 3, device=device, dtype=dtype)
        x, weight = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight))

        def run() -> Any:
            with torch.inference_mode():
                return F.conv2d(x, weight, padding=1)

    for _ in range(3):
        run()
    return run


def conv_throughput(device: torch.device, precision: str, repeats: int = 20) -> float:
    """Mult-Adds/s of the reference conv: median of ``repeats`` calls."""
    probe, clock = conv_probe(device, precision), Clock(device)
    return CONV_MACS / statistics.median(clock(probe) for _ in range(repeats))


def _int8_conv_probe() -> Callable[[], Any]:
    """The reference conv as ONNX Runtime's int8 QLinearConv (u8 activations, s8 weights)."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    constants = {
        "x_scale": np.array(0.02, np.float32),
        "x_zero": np.array(0, np.uint8),
        "w": rng.integers(-127, 127, (256, 256, 3, 3), dtype=np.int8),
        "w_scale": np.full(256, 0.01, np.float32),
        "w_zero": np.zeros(256, np.int8),
        "y_scale": np.array(0.05, np.float32),
        "y_zero": np.array(0, np.uint8),
    }
    node = helper.make_node(
        "QLinearConv", ["x", *constants], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 256, 65, 65])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 256, 65, 65])],
        [numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
    )
    x = rng.integers(0, 255, (1, 256, 65, 65), dtype=np.uint8)
    return lambda: session.run(None, {"x": x})


# ---------------------------------------------------------------------------- contenders


@dataclass
class Contender:
    """One way to run one network: how to build it, and what was measured."""

    side: str  # "atrous" or "peer"
    path: str  # e.g. "ORT int8 (QDQ)"
    precision: str  # fp32, bf16, fp16 or int8: which roofline applies
    build: Callable[[], Runner]
    throughput: bool = False  # also measure images/s at batch 4
    probe: Callable[[], Runner] | None = None  # a fresh runner whose first call shows its memory
    run: Runner | None = None
    error: str | None = None
    build_s: float = float("nan")
    times: list[float] = field(default_factory=list)
    batch_times: list[float] = field(default_factory=list)
    memory_mib: float = float("nan")
    max_abs_diff: float = float("nan")
    agreement: float = float("nan")

    @property
    def latency_ms(self) -> float:
        return 1000 * statistics.median(self.times) if self.times else float("nan")

    @property
    def images_per_s(self) -> float:
        return 4 / statistics.median(self.batch_times) if self.batch_times else float("nan")


def eager(
    model: nn.Module, device: torch.device, channels_last: bool = False, precision: str = "fp32"
) -> Runner:
    """Eager PyTorch, optionally channels_last and under atrous's autocast."""
    format_ = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=format_)

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model(x.to(device).contiguous(memory_format=format_)).float()

    return run


def compiled(model: nn.Module, device: torch.device, example: torch.Tensor) -> Runner:
    """torch.compile with frozen weights (inductor folds BN and picks conv layouts)."""
    module = torch.compile(model.to(device), options={"freezing": True})
    run = eager(module, device)
    run(example)  # compiles
    return run


class OnnxFile:
    """A peer exported the way its users do: torch.onnx dynamo export, opset 18, dynamic batch."""

    def __init__(self, model: nn.Module, example: torch.Tensor, folder: Path, name: str) -> None:
        import onnx

        self.path = folder / f"{name}.onnx"
        program = torch.onnx.export(
            model.eval().cpu(),
            (example.cpu().expand(2, -1, -1, -1),),  # batch 2: a batch of 1 would specialise
            dynamo=True,
            opset_version=18,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
            verbose=False,
        )
        onnx.save(program.model_proto, self.path)
        self.int8: Path | None = None

    def session(self, int8: bool = False) -> Runner:
        return OnnxNetwork(self.int8 if int8 else self.path, options=session_options())

    def quantize(self, calibration: list[torch.Tensor]) -> Runner:
        self.int8 = quantize_onnx(self.path, self.path.with_suffix(".int8.onnx"), calibration)
        return self.session(int8=True)


def fast(
    model: atrous.DeepLab, precision: str, calibration: list[torch.Tensor], **kwargs: Any
) -> Runner:
    """atrous's fast path as every command builds it: the model's Segmenter through
    ``fast_segmenter`` (examples are already at their sizes: no alignment padding). The first
    calibration batch is the agreement check's example."""
    segmenter = Segmenter(
        model,
        model.config.mean,
        model.config.std,
        model.num_classes,
        inference=InferenceConfig(align=False),
        device=next(model.parameters()).device,
    )
    return fast_segmenter(segmenter, precision, calibration, **kwargs).network


# ---------------------------------------------------------------------------- rows


def calibrate_bn(model: nn.Module, size: int, seed: int = 0) -> nn.Module:
    """Set BN statistics from two random images, so random-weight logits have a trained scale."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, size, size, generator=generator))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    return model.eval()


def smp_model(encoder: str, output_stride: int = 16) -> nn.Module:
    import segmentation_models_pytorch as smp

    model = smp.DeepLabV3Plus(
        encoder_name=encoder, encoder_weights=None, encoder_output_stride=output_stride, classes=21
    )
    return calibrate_bn(model, 128)


class LogitsOnly(nn.Module):
    """torchvision's segmentation models return {"out": logits}; users take ["out"]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def torchvision_model(depth: int) -> nn.Module:
    from torchvision.models import segmentation

    build = getattr(segmentation, f"deeplabv3_resnet{depth}")
    model = build(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    return LogitsOnly(calibrate_bn(model, 129))


@dataclass(frozen=True)
class Row:
    """A configuration: how to build the atrous network and its peer, at which sizes."""

    key: str
    title: str
    peer_name: str
    size: tuple[int, int]
    build: Callable[[], tuple[atrous.DeepLab, nn.Module | None]]  # (atrous, peer)
    same_network: bool  # the atrous network is the peer converted (identical logits)
    peer_size: tuple[int, int] | None = None  # smp needs multiples of 16
    full: bool = False  # every peer path (compile, folded, bf16) and batch-4 throughput
    train: bool = False  # training steps
    checkpointing: bool = False  # training step with activation checkpointing too
    rounds: int | None = None  # latency rounds (default: --rounds)
    int8: bool = True  # int8 paths (left out at OS8 to keep the default run under 10 minutes)


def _converted_smp(encoder: str, output_stride: int) -> Callable:
    def build() -> tuple[atrous.DeepLab, nn.Module]:
        peer = smp_model(encoder, output_stride)
        return from_smp(peer), peer

    return build


def _converted_torchvision(depth: int) -> Callable:
    def build() -> tuple[atrous.DeepLab, nn.Module]:
        peer = torchvision_model(depth)
        return from_torchvision(peer.model), peer

    return build


def _named(name: str, peer: Callable[[], nn.Module] | None, **kwargs: Any) -> Callable:
    def build() -> tuple[atrous.DeepLab, nn.Module | None]:
        torch.manual_seed(0)
        model = calibrate_bn(atrous.create_model(name, num_classes=21, **kwargs), 129)
        return model, peer() if peer is not None else None

    return build


ROWS = {
    row.key: row
    for row in [
        Row(
            "r101_os16_512",
            "DeepLabV3+ ResNet-101 OS16 (smp's, converted)",
            "smp DeepLabV3Plus resnet101",
            (512, 512),
            _converted_smp("resnet101", 16),
            True,
            full=True,
            train=True,
        ),
        Row(
            "r50_os16_512",
            "DeepLabV3+ ResNet-50 OS16 (smp's, converted)",
            "smp DeepLabV3Plus resnet50",
            (512, 512),
            _converted_smp("resnet50", 16),
            True,
        ),
        Row(
            "r101_os8_513",
            "DeepLabV3 ResNet-101 OS8 (torchvision's, converted)",
            "torchvision deeplabv3_resnet101",
            (513, 513),
            _converted_torchvision(101),
            True,
            int8=False,
            train=True,
            checkpointing=True,
            rounds=3,
        ),
        Row(
            "r50_os8_513",
            "DeepLabV3 ResNet-50 OS8 (torchvision's, converted)",
            "torchvision deeplabv3_resnet50",
            (513, 513),
            _converted_torchvision(50),
            True,
            int8=False,
            train=True,
            checkpointing=True,
            rounds=3,
        ),
        Row(
            "x65_sc_os16_513",
            "DeepLabV3+ Xception-65 SC OS16 (paper)",
            "smp DeepLabV3Plus tu-xception65",
            (513, 513),
            _named("deeplabv3plus_xception65", lambda: smp_model("tu-xception65")),
            False,
            peer_size=(512, 512),
        ),
        Row(
            "mnv2_os16_513",
            "DeepLabV3+ MobileNetV2 OS16 (paper)",
            "smp DeepLabV3Plus mobilenet_v2",
            (513, 513),
            _named("deeplabv3plus_mobilenetv2", lambda: smp_model("mobilenet_v2")),
            False,
            peer_size=(512, 512),
        ),
        Row(
            "mnv2_os16_769",
            "DeepLabV3+ MobileNetV2 OS16, Cityscapes crop (paper)",
            "smp DeepLabV3Plus mobilenet_v2",
            (769, 769),
            _named("deeplabv3plus_mobilenetv2", lambda: smp_model("mobilenet_v2")),
            False,
            peer_size=(768, 768),
        ),
        Row(
            "x65_sc_os16_769",
            "DeepLabV3+ Xception-65 SC OS16, Cityscapes crop (paper)",
            "smp DeepLabV3Plus tu-xception65",
            (769, 769),
            _named("deeplabv3plus_xception65", lambda: smp_model("tu-xception65")),
            False,
            peer_size=(768, 768),
        ),
    ]
}
DEFAULT_ROWS = ("r101_os16_512", "r50_os16_512", "r50_os8_513", "x65_sc_os16_513", "mnv2_os16_769")


def contenders(
    row: Row,
    model: atrous.DeepLab,
    peer: nn.Module | None,
    device: torch.device,
    examples: dict[str, torch.Tensor],
    folder: Path,
    all_paths: bool,
) -> list[Contender]:
    """Every way to run the row's two networks on ``device`` (the peer's eager variants and
    torch.compile only on full rows, or with ``all_paths``)."""
    ours = examples["atrous"]
    calibration = [torch.randn(1, 3, *ours.shape[-2:]) for _ in range(2)]
    items: list[Contender] = []
    if peer is not None:
        items += _peer_eager(row, peer, device, examples["peer"], all_paths)
        if device.type == "cpu":
            items += _peer_onnx(row, peer, examples["peer"], calibration, folder, all_paths)
    return items + _ours(row, model, device, ours, calibration, folder, all_paths)


def _peer_eager(
    row: Row, peer: nn.Module, device: torch.device, theirs: torch.Tensor, all_paths: bool
) -> list[Contender]:
    items = [Contender("peer", "eager fp32", "fp32", lambda: eager(peer, device), True)]
    if not (row.full or all_paths):
        return items
    crop = theirs[:, :, :64, :64]
    return [
        *items,
        Contender(
            "peer",
            "eager fp32, channels_last, BN folded",
            "fp32",
            lambda: eager(fold_batchnorm(peer, crop), device, True),
        ),
        Contender(
            "peer",
            "torch.compile (freezing)",
            "fp32",
            lambda: compiled(copy.deepcopy(peer), device, theirs),
        ),
        Contender(
            "peer",
            "eager bf16 autocast, channels_last, BN folded",
            "bf16",
            lambda: eager(fold_batchnorm(peer, crop), device, True, "bf16"),
        ),
    ]


def _peer_onnx(
    row: Row,
    peer: nn.Module,
    theirs: torch.Tensor,
    calibration: list[torch.Tensor],
    folder: Path,
    all_paths: bool,
) -> list[Contender]:
    """The peer exported by the same dynamo exporter, in ONNX Runtime fp32 and int8."""
    onnx_file: dict[str, OnnxFile] = {}

    def peer_onnx() -> Runner:
        onnx_file["fp32"] = OnnxFile(peer, theirs, folder, f"{row.key}_peer")
        return onnx_file["fp32"].session()

    def peer_int8() -> Runner:
        if "fp32" not in onnx_file:
            peer_onnx()
        peer_calibration = [c[..., : theirs.shape[-2], : theirs.shape[-1]] for c in calibration]
        return onnx_file["fp32"].quantize(peer_calibration)

    items = [
        Contender(
            "peer",
            "ONNX Runtime fp32 (dynamo export, opset 18)",
            "fp32",
            peer_onnx,
            True,
            lambda: onnx_file["fp32"].session(),
        ),
    ]
    if row.int8 or all_paths:
        items.append(
            Contender(
                "peer",
                "ONNX Runtime int8 (static QDQ, per-channel)",
                "int8",
                peer_int8,
                True,
                lambda: onnx_file["fp32"].session(int8=True),
            )
        )
    return items


def _ours(
    row: Row,
    model: atrous.DeepLab,
    device: torch.device,
    ours: torch.Tensor,
    calibration: list[torch.Tensor],
    folder: Path,
    all_paths: bool,
) -> list[Contender]:
    """atrous eager and through optimize_for_inference at each precision."""
    workdirs = {p: folder / f"{row.key}_{p}" for p in ("fp32", "int8")}
    fixed = workdirs["fp32"] / "model.{}x{}.onnx".format(*ours.shape[-2:])
    low = "bf16" if device.type == "cpu" else "fp16"
    items = [
        Contender("atrous", "eager fp32", "fp32", lambda: eager(model, device), True),
        Contender(
            "atrous",
            "optimize_for_inference fp32",
            "fp32",
            lambda: fast(model, "fp32", [ours], workdir=workdirs["fp32"]),
            True,
            (lambda: OnnxNetwork(fixed, options=session_options()))
            if device.type == "cpu"
            else None,
        ),
        Contender("atrous", f"optimize_for_inference {low}", low, lambda: fast(model, low, [ours])),
    ]
    if device.type == "cpu" and (row.int8 or all_paths):
        items.append(
            Contender(
                "atrous",
                "optimize_for_inference int8",
                "int8",
                lambda: fast(model, "int8", calibration, workdir=workdirs["int8"]),
                True,
                lambda: OnnxNetwork(
                    workdirs["int8"] / "model.int8.onnx", options=session_options()
                ),
            )
        )
    return items


# ---------------------------------------------------------------------------- training steps


def train_step_runner(
    model: nn.Module,
    device: torch.device,
    size: tuple[int, int],
    precision: str = "fp32",
    checkpointing: bool = False,
) -> Callable[[], None]:
    """One SGD step on a batch of 2 (cross-entropy on random labels), as training runs it."""
    model = copy.deepcopy(model).to(device).train()
    channels_last = precision != "fp32"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if checkpointing:
        model.set_activation_checkpointing(True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, *size, generator=generator).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 21, (2, *size), generator=generator).to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = model(images)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()

    return step


def measure_training(row: Row, model, peer, device, rounds: int) -> list[dict[str, Any]]:
    """Median step time and peak step memory, interleaved over the variants."""
    low = "bf16" if device.type == "cpu" else "fp16"
    size = (321, 321)
    peer_size = (320, 320) if row.peer_name.startswith("smp") else size  # smp: multiples of 16
    variants: list[tuple[str, str, Callable[[], Callable[[], None]]]] = []
    if peer is not None and not row.checkpointing:
        variants.append(("peer", "fp32", lambda: train_step_runner(peer, device, peer_size)))
    variants.append(("atrous", "fp32", lambda: train_step_runner(model, device, size)))
    if not row.checkpointing:
        variants.append(
            (
                "atrous",
                "bf16 autocast, channels_last",
                lambda: train_step_runner(model, device, size, low),
            )
        )
    if row.checkpointing:
        variants.append(
            (
                "atrous",
                "fp32, activation checkpointing",
                lambda: train_step_runner(model, device, size, checkpointing=True),
            )
        )
    clock = Clock(device)
    built = []
    for side, path, make in variants:
        step = make()
        step()  # warm-up: optimizer state, kernels
        with PeakMemory(device) as memory:
            step()
        built.append(
            {"side": side, "path": path, "step": step, "memory_mib": memory.mib, "times": []}
        )
    for _ in range(rounds):
        for item in built:
            time.sleep(PAUSE_S)
            item["times"].append(clock(item["step"]))
    return [
        {
            "side": item["side"],
            "path": item["path"],
            "step_ms": 1000 * statistics.median(item["times"]),
            "memory_mib": item["memory_mib"],
        }
        for item in built
    ]


# ---------------------------------------------------------------------------- one row


def _row_networks(row: Row, device: torch.device) -> tuple[nn.Module, nn.Module | None, dict]:
    """The row's two networks in eval mode on ``device``, and their example inputs."""
    torch.manual_seed(0)
    model, peer = row.build()
    model = model.to(device).eval()
    peer = peer.to(device).eval() if peer is not None else None
    generator = torch.Generator().manual_seed(1)
    example = torch.randn(1, 3, *row.size, generator=generator).to(device)
    peer_example = example
    if row.peer_size:
        peer_example = example[..., : row.peer_size[0], : row.peer_size[1]].contiguous()
    return model, peer, {"atrous": example, "peer": peer_example}


def _row_info(row: Row, model: nn.Module, peer: nn.Module | None) -> dict[str, Any]:
    profile = profile_model(model, row.size).total
    info: dict[str, Any] = {
        "row": row.key,
        "title": row.title,
        "size": list(row.size),
        "atrous": {"params": profile.params, "mult_adds": profile.mult_adds},
        "peer_name": row.peer_name,
        "same_network": row.same_network,
    }
    if peer is not None:
        peer_profile = profile_model(peer, row.peer_size or row.size).total
        info["peer"] = {"params": peer_profile.params, "mult_adds": peer_profile.mult_adds}
        info["peer_size"] = list(row.peer_size or row.size)
    return info


def _build_and_check(
    items: list[Contender], examples: dict, references: dict, device: torch.device, log: Callable
) -> list[Contender]:
    """Build each contender, compare it with its eager reference, measure its peak memory;
    a path that does not work here is reported, not fatal. Returns the working ones."""
    for item in items:
        start = time.perf_counter()
        try:
            item.run = item.build()
            item.run(examples[item.side])  # warm-up 1
        except Exception as error:
            item.error = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            log(f"  {item.side} {item.path}: failed ({item.error})")
            continue
        item.build_s = time.perf_counter() - start
        output = torch.as_tensor(item.run(examples[item.side])).float().cpu()  # warm-up 2
        reference = references[item.side].cpu()
        item.max_abs_diff = (output - reference).abs().max().item()
        item.agreement = (output.argmax(1) == reference.argmax(1)).float().mean().item()
        log(f"  built {item.side} {item.path} in {item.build_s:.1f} s")
    ready = [item for item in items if item.run is not None]
    for item in ready:
        runner = item.probe() if item.probe is not None else item.run
        with PeakMemory(device) as memory:
            runner(examples[item.side])
        item.memory_mib = memory.mib
        del runner
    return ready


def _time_rounds(
    ready: list[Contender],
    examples: dict,
    device: torch.device,
    rounds: int,
    precisions: tuple,
    batch: bool,
) -> dict[str, float]:
    """Latency rounds, interleaving contenders and the reference conv (so the roofline sees the
    machine as it was); with ``batch``, batch-4 throughput too. Returns the conv throughput."""
    clock = Clock(device)
    probes = {precision: conv_probe(device, precision) for precision in precisions}
    probe_times: dict[str, list[float]] = {precision: [] for precision in precisions}
    for _ in range(rounds):
        for item in ready:
            x = examples[item.side]
            time.sleep(PAUSE_S)
            item.times.append(clock(lambda item=item, x=x: item.run(x)))
        for precision, probe in probes.items():
            time.sleep(PAUSE_S)
            probe_times[precision] += [clock(probe) for _ in range(3)]
    batch_items = [item for item in ready if item.throughput and batch]
    for item in batch_items:
        item.run(examples[item.side].expand(4, -1, -1, -1).contiguous())
    for _ in range(3 if batch_items else 0):
        for item in batch_items:
            x = examples[item.side].expand(4, -1, -1, -1).contiguous()
            time.sleep(PAUSE_S)
            item.batch_times.append(clock(lambda item=item, x=x: item.run(x)))
    return {p: CONV_MACS / statistics.median(t) for p, t in probe_times.items()}


def _contender_record(item: Contender, references: dict) -> dict[str, Any]:
    return {
        "side": item.side,
        "path": item.path,
        "precision": item.precision,
        "latency_ms": item.latency_ms,
        "times_ms": [1000 * t for t in item.times],
        "images_per_s_batch4": item.images_per_s,
        "memory_mib": item.memory_mib,
        "build_s": item.build_s,
        "max_abs_diff": item.max_abs_diff,
        "logit_scale": references[item.side].abs().max().item(),
        "argmax_agreement": item.agreement,
        "error": item.error,
    }


def run_row(
    row: Row,
    device: torch.device,
    rounds: int,
    folder: Path,
    log: Callable,
    all_paths: bool,
    precisions: tuple[str, ...],
) -> dict:
    """Every contender of ``row``: built, checked, timed side by side; training steps too."""
    rounds = row.rounds or rounds
    model, peer, examples = _row_networks(row, device)
    info = _row_info(row, model, peer)
    with torch.no_grad():
        references = {
            "atrous": model(examples["atrous"]).float(),
            "peer": peer(examples["peer"]).float() if peer is not None else None,
        }
    items = contenders(row, model, peer, device, examples, folder, all_paths)
    ready = _build_and_check(items, examples, references, device, log)
    info["conv_throughput"] = _time_rounds(ready, examples, device, rounds, precisions, row.full)
    log(f"  latency: {rounds} rounds done")
    info["contenders"] = [_contender_record(item, references) for item in items]
    if row.train:
        info["training"] = measure_training(row, model, peer, device, 2)
        log("  training steps done")
    return info


# ---------------------------------------------------------------------------- report


def _fmt(value: float, digits: int = 0) -> str:
    return "—" if value != value else f"{value:,.{digits}f}"


def _row_heading(row: dict) -> list[str]:
    macs = row["atrous"]["mult_adds"]
    peer = "; no peer"
    if "peer" in row:
        kind = " (the same network)" if row["same_network"] else " (nearest configuration)"
        peer = (
            f"; peer ({row['peer_name']}, {row['peer_size'][0]}×{row['peer_size'][1]}): "
            f"{row['peer']['params'] / 1e6:.1f} M, {row['peer']['mult_adds'] / 1e9:.1f} G{kind}"
        )
    return [
        f"### {row['title']}, {row['size'][0]}×{row['size'][1]}",
        "",
        f"atrous: {row['atrous']['params'] / 1e6:.1f} M parameters, {macs / 1e9:.1f} G "
        f"Mult-Adds{peer}.",
        "",
        "| who | path | latency (ms) | vs peer eager | images/s (batch 4) | memory (MiB) "
        "| max abs Δlogit vs eager | argmax agreement |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]


def _contender_lines(row: dict, roof: dict) -> list[str]:
    items = row["contenders"]
    peer_eager = next(
        (c["latency_ms"] for c in items if c["side"] == "peer" and c["path"] == "eager fp32"),
        float("nan"),
    )
    lines = []
    for c in items:
        if c["error"]:
            lines.append(f"| {c['side']} | {c['path']} | failed: {c['error']} | | | | | |")
            continue
        lines.append(
            f"| {c['side']} | {c['path']} | {_fmt(c['latency_ms'])} "
            f"| {_fmt(peer_eager / c['latency_ms'], 2)}× | {_fmt(c['images_per_s_batch4'], 2)} "
            f"| {_fmt(c['memory_mib'])} | {c['max_abs_diff']:.1e} "
            f"(of {c['logit_scale']:.1f}) | {c['argmax_agreement']:.4f} |"
        )
    macs = row["atrous"]["mult_adds"]
    for precision in ("fp32", "bf16", "fp16", "int8"):
        if precision in roof:
            lines.append(
                f"| roofline | {precision}: Mult-Adds ÷ {roof[precision] / 1e9:.0f} GMAC/s "
                f"| {_fmt(1000 * macs / roof[precision])} | | | | | |"
            )
    return lines


def _training_lines(row: dict) -> list[str]:
    if "training" not in row:
        return []
    lines = [
        "Training step (forward + backward + SGD, batch 2, 321×321; smp 320×320):",
        "",
        "| who | precision | step (ms) | memory (MiB) |",
        "|---|---|---:|---:|",
    ]
    for t in row["training"]:
        lines.append(
            f"| {t['side']} | {t['path']} | {_fmt(t['step_ms'])} | {_fmt(t['memory_mib'])} |"
        )
    return [*lines, ""]


def markdown(results: dict) -> str:
    """The tables of docs/performance.md: one per row, then the training steps."""
    lines = [
        f"Machine: {results['machine']}; torch "
        f"{results['torch']}, onnxruntime {results['onnxruntime']}; device {results['device']}.",
        "Reference conv (3×3, 256→256, 65×65) at the start: "
        + ", ".join(f"{k} {v / 1e9:.0f} GMAC/s" for k, v in results["conv_throughput"].items())
        + "; each row's roofline uses the same conv timed in that row's rounds. Latency: batch 1, "
        "median of interleaved rounds. Memory: peak above the level before one call.",
        "",
    ]
    for row in results["rows"]:
        roof = row.get("conv_throughput", results["conv_throughput"])
        lines += _row_heading(row) + _contender_lines(row, roof)
        lines += ["", *ratios(row, roof), "", *_training_lines(row)]
    return "\n".join(lines)


def ratios(row: dict, roof: dict) -> list[str]:
    """atrous's fastest path per precision ÷ the peer's fastest path of that kind, and ÷ the
    roofline; low precision (bf16/fp16/int8) is compared as one group."""
    ok = [c for c in row["contenders"] if not c["error"]]
    groups = {"fp32": ("fp32",), "low precision": ("bf16", "fp16", "int8")}
    lines = []
    for label, precisions in groups.items():
        ours = [c for c in ok if c["side"] == "atrous" and c["precision"] in precisions]
        theirs = [c for c in ok if c["side"] == "peer" and c["precision"] in precisions]
        if not ours:
            continue
        best = min(ours, key=lambda c: c["latency_ms"])
        text = f"- {label}: atrous best ({best['path']}) {best['latency_ms']:.0f} ms"
        if theirs:
            peer = min(theirs, key=lambda c: c["latency_ms"])
            text += (
                f"; ÷ best peer path ({peer['path']}, {peer['latency_ms']:.0f} ms) = "
                f"{best['latency_ms'] / peer['latency_ms']:.2f}"
            )
        if best["precision"] in roof:
            roofline = 1000 * row["atrous"]["mult_adds"] / roof[best["precision"]]
            ratio = best["latency_ms"] / roofline
            text += f"; ÷ {best['precision']} roofline ({roofline:.0f} ms) = {ratio:.2f}"
        lines.append(text)
    return lines


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows",
        default=",".join(DEFAULT_ROWS),
        help=f"comma-separated, or 'all': {', '.join(ROWS)}",
    )
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds per contender")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--all-paths", action="store_true", help="every peer path on every row, not only the first"
    )
    parser.add_argument("--json", default=str(ROOT / "results" / "latest.json"))
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = parser.parse_args(argv)
    args.keys = list(ROWS) if args.rows == "all" else args.rows.split(",")
    unknown = [k for k in args.keys if k not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", file=sys.stderr, flush=True)

    precisions = ("fp32", "bf16", "int8") if device.type == "cpu" else ("fp32", "bf16", "fp16")
    import onnxruntime

    results: dict[str, Any] = {
        "machine": describe_device(device),
        "threads": torch.get_num_threads(),
        "device": device.type,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "conv_throughput": {p: conv_throughput(device, p) for p in precisions},
        "rows": [],
    }
    log(
        "conv throughput: "
        + ", ".join(f"{k} {v / 1e9:.0f} GMAC/s" for k, v in results["conv_throughput"].items())
    )
    with tempfile.TemporaryDirectory(prefix="atrous-bench-") as folder:
        for key in args.keys:
            log(f"{key}: {ROWS[key].title}")
            row = run_row(
                ROWS[key], device, args.rounds, Path(folder), log, args.all_paths, precisions
            )
            results["rows"].append(row)
            gc.collect()
    results["seconds"] = time.perf_counter() - start
    table = markdown(results)
    print(table)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    log(f"done; JSON in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
