"""The GPU check's two measurements: a training row (timed steps of one precision and compile
mode, its peak memory and loss) and an inference row (one runner's latency, throughput, peak
memory and logits against the eager reference); ``gpu_check.py`` builds and runs the rows."""

from __future__ import annotations

import copy
import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import harness
import torch
from torch import nn

import atrous
from atrous.export.onnx import compare_logits
from atrous.runtime.precision import autocast
from atrous.training.config import OptimConfig
from atrous.training.loop import build_optimizer
from atrous.training.losses import LossConfig, build_loss

IGNORE_INDEX = 255
Record = dict[str, Any]


@dataclass(frozen=True)
class Network:
    """The network under test, its smp peer, and the sizes it runs at."""

    title: str
    build: Callable[[], tuple[atrous.DeepLab, nn.Module]]  # (atrous, smp peer), on the CPU
    same_network: bool  # the atrous network is the peer converted (the same logits)
    crop: int  # training crop
    size: int  # inference size (smp: divisible by 16)
    batch_size: int  # training batch, and the inference throughput batch


# ---------------------------------------------------------------------------- measuring


def refusal(device: torch.device, precision: str) -> str | None:
    """Why atrous's autocast refuses ``precision`` on ``device`` (fp16 on the CPU), or None."""
    try:
        autocast(device, precision)
    except ValueError as error:
        return str(error)
    return None


def compile_module(module: nn.Module, backend: str, freezing: bool = False) -> nn.Module:
    """``torch.compile`` with ``backend``; inductor freezes inference weights when asked."""
    options = {"freezing": True} if freezing and backend == "inductor" else None
    return torch.compile(module, backend=backend, options=options)


def free_memory(device: torch.device) -> None:
    """Drop compiled graphs (they hold their modules) and cached blocks between rows."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- training


def random_batch(
    network: Network, num_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed (N, 3, crop, crop) channels_last batch and (N, crop, crop) labels, 10% ignored."""
    generator = torch.Generator().manual_seed(0)
    shape = (network.batch_size, network.crop, network.crop)
    images = torch.randn(shape[0], 3, *shape[1:], generator=generator)
    target = torch.randint(0, num_classes, shape, generator=generator)
    target[torch.rand(shape, generator=generator) < 0.1] = IGNORE_INDEX
    images = images.to(device).contiguous(memory_format=torch.channels_last)
    return images, target.to(device)


def training_step(
    net: nn.Module,
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    precision: str,
    device: torch.device,
) -> tuple[Callable[[], torch.Tensor], torch.amp.GradScaler]:
    """One step as atrous's training loop takes it (one micro-batch): the paper's SGD, autocast, the
    default loss (cross-entropy ignoring label 255), scaled by a GradScaler for fp16. As in
    training, the loss terms are read back once per step."""
    optimizer = build_optimizer(model, OptimConfig())
    loss_fn = build_loss(LossConfig(), "multiclass", model.num_classes, IGNORE_INDEX, None)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    images, target = batch

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss, _ = loss_fn({"out": net(images)}, target, 0)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return step, scaler


def train_row(
    base: atrous.DeepLab,
    network: Network,
    device: torch.device,
    precision: str,
    backend: str | None,
    steps: int,
    warmup: int,
) -> Record:
    """``steps`` timed steps of a copy of ``base`` (channels_last, compiled with ``backend``
    unless None) after a first step and ``warmup`` more; a non-finite loss fails the row."""
    losses: list[torch.Tensor] = []
    with harness.PeakMemory(device) as memory:
        model = copy.deepcopy(base).to(device, memory_format=torch.channels_last).train()
        net = model if backend is None else compile_module(model, backend)
        batch = random_batch(network, base.num_classes, device)
        step, scaler = training_step(net, model, batch, precision, device)
        first_s = harness.seconds(lambda: losses.append(step()), device)
        for _ in range(warmup):
            losses.append(step())
        steady_s = harness.seconds(lambda: losses.extend(step() for _ in range(steps)), device)
    values = torch.stack(losses).float().cpu().tolist()
    record: Record = {
        "first_step_s": first_s,
        "compile_s": first_s - steady_s / steps if backend is not None else None,
        "ms_per_step": 1000 * steady_s / steps,
        "images_per_s": network.batch_size * steps / steady_s,
        "peak_memory_mib": memory.mib,
        "first_loss": values[0],
        "final_loss": values[-1],
        "loss_scale": scaler.get_scale() if precision == "fp16" else None,
    }
    bad = [i for i, value in enumerate(values) if not math.isfinite(value)]
    if bad:
        record["status"] = "failed"
        record["reason"] = f"loss became {values[bad[0]]} at step {bad[0] + 1} of {len(values)}"
    return record


# ---------------------------------------------------------------------------- inference


def reference_logits(module: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """Float64 logits of a copy of ``module`` on ``example`` (as float32): the reference every
    inference row is compared with, computed apart from all of them (no TF32 in float64)."""
    network = copy.deepcopy(module).double().eval()
    with torch.no_grad():
        return network(example.double()).float()


def infer_row(
    build: Callable[[], harness.Runner],
    example: torch.Tensor,
    reference: torch.Tensor,
    batch_size: int,
    rounds: int,
) -> Record:
    """Build a runner (timed, with its first calls at ``batch_size`` and batch 1), compare its
    logits on ``example`` (1, 3, H, W) with ``reference``, time it at both batch sizes and
    measure the peak memory of one batch."""
    device = example.device
    batch = example.expand(batch_size, -1, -1, -1).contiguous()
    start = time.perf_counter()
    runner = build()
    runner(batch)
    logits = runner(example)
    build_s = time.perf_counter() - start
    agreement = compare_logits(torch.as_tensor(logits).cpu(), reference.cpu())
    latency = statistics.median(
        harness.seconds(lambda: runner(example), device) for _ in range(rounds)
    )
    batch_s = statistics.median(
        harness.seconds(lambda: runner(batch), device) for _ in range(max(3, rounds // 4))
    )
    with harness.PeakMemory(device) as memory:
        runner(batch)
    return {
        "build_s": build_s,
        "latency_ms": 1000 * latency,
        "images_per_s": batch_size / batch_s,
        "peak_memory_mib": memory.mib,
        "max_abs_diff": agreement.max_abs_diff,
        "logit_scale": agreement.scale,
        "argmax_agreement": agreement.argmax_agreement,
    }
