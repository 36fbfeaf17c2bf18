"""Parameters and Multiply-Adds per module group, counted two ways.

One multiply-add is one multiplication plus one addition: a conv costs
H_out·W_out·C_out·(k_h·k_w·C_in/groups) (PyTorch's FlopCounterMode reports twice that, as FLOPs).
Only convolutions are counted (DeepLab is fully convolutional), and linear layers (timm's
ConvNeXt runs its 1×1 convs as ``nn.Linear``): in_features per output value; BN, ReLU and
resizes are not.

``native`` is what PyTorch computes. ``tf1`` is how the paper's TensorFlow 1 code computed a
dilated conv: SpaceToBatch pads the map up to a multiple of the rate r, so the conv runs on a
ceil(H/r)·r × ceil(W/r)·r grid (33×33 at rate 6 → 36×36). The paper's Mult-Adds (Tables 3, 5)
are counted that way; ``docs/paper_tables.md`` compares both.

The count runs the model on the ``meta`` device: shapes only, no arithmetic, any input size.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from atrous.models.config import input_channels
from atrous.runtime.precision import DESCRIBED_FLAGS, cpu_flags, cpu_has_native_bf16


@dataclass
class GroupCount:
    """Parameters and Mult-Adds of one module group."""

    params: int = 0
    mult_adds: int = 0
    mult_adds_tf1: int = 0

    def __add__(self, other: GroupCount) -> GroupCount:
        return GroupCount(
            self.params + other.params,
            self.mult_adds + other.mult_adds,
            self.mult_adds_tf1 + other.mult_adds_tf1,
        )


@dataclass
class ModelProfile:
    """Counts per top-level module group for one input size and output stride."""

    input_size: tuple[int, int]
    output_stride: int | None
    groups: dict[str, GroupCount] = field(default_factory=dict)

    @property
    def total(self) -> GroupCount:
        return sum(self.groups.values(), GroupCount())

    def to_markdown(self) -> str:
        """A Markdown table: one row per group and a total, params in M, Mult-Adds in G."""
        lines = [
            "| group | params (M) | Mult-Adds, PyTorch (G) | Mult-Adds, as TF1 computes (G) |",
            "|---|---:|---:|---:|",
        ]
        for name, count in [*self.groups.items(), ("total", self.total)]:
            lines.append(
                f"| {name} | {count.params / 1e6:.2f} | {count.mult_adds / 1e9:.2f} "
                f"| {count.mult_adds_tf1 / 1e9:.2f} |"
            )
        return "\n".join(lines)


def conv_mult_adds(conv: nn.Conv2d, output_shape: Sequence[int]) -> tuple[int, int]:
    """(native, TF1) Multiply-Adds of one conv producing ``output_shape`` = (N, C, H, W)."""
    n, c_out, h, w = output_shape
    per_position = c_out * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)
    native = n * h * w * per_position
    dh, dw = conv.dilation
    h_tf1 = math.ceil(h / dh) * dh if dh > 1 else h
    w_tf1 = math.ceil(w / dw) * dw if dw > 1 else w
    return native, n * h_tf1 * w_tf1 * per_position


def _group_of(name: str) -> str:
    return name.split(".", 1)[0]


def profile_model(model: nn.Module, input_size: Sequence[int] = (513, 513)) -> ModelProfile:
    """Count parameters and Mult-Adds of ``model`` for one (H, W) image, per top-level group."""
    height, width = input_size
    image = torch.empty(1, input_channels(model), height, width, device="meta")
    groups = {
        name: GroupCount(params=sum(p.numel() for p in child.parameters()))
        for name, child in model.named_children()
    }

    def hook_for(name: str):
        def hook(layer: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if isinstance(layer, nn.Linear):  # timm's ConvNeXt blocks: 1×1 convs as Linear
                native = tf1 = output.numel() * layer.in_features
            else:
                native, tf1 = conv_mult_adds(layer, output.shape)
            group = groups.setdefault(_group_of(name), GroupCount())
            group.mult_adds += native
            group.mult_adds_tf1 += tf1

        return hook

    handles = [
        module.register_forward_hook(hook_for(name))
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    ]
    meta_state = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
    }
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            functional_call(model, meta_state, (image,))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    output_stride = getattr(model, "output_stride", None)
    return ModelProfile((height, width), output_stride, groups)


@torch.no_grad()
def measure_latency(
    model: nn.Module, input_size: Sequence[int], device: torch.device, runs: int = 5
) -> float:
    """Median milliseconds of one eval-mode forward pass on a random (1, C, H, W) image, after a
    warm-up pass (for model cards; the benchmarks in ``benchmarks/`` measure properly)."""
    was_training = model.training
    model.eval()
    image = torch.randn(1, input_channels(model), *input_size, device=device)
    times = []
    try:
        for _ in range(runs + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(image)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(1000 * (time.perf_counter() - start))
    finally:
        model.train(was_training)
    return statistics.median(times[1:])


def describe_device(device: torch.device) -> str:
    """The accelerator's name, or the CPU's model, vector features and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    for line in info.splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    features = [f for f in DESCRIBED_FLAGS if f in cpu_flags()]
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    name += f" ({', '.join([*features, bf16])})"
    return f"{name}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} threads"
