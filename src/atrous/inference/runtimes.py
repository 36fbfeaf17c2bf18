"""Runtimes for the fp32 fast path, and ``--runtime auto``: the fastest installed one that is
correct, chosen by a short measurement on the first input size.

A runtime is a factory taking the BN-folded fp32 model (eval mode, on the CPU), the example's
size (H, W) and a folder for its files, and returning a network: a callable from normalised
(N, C, H, W) tensors to logits, like :class:`~atrous.export.onnx.OnnxNetwork`. Adding one is a
line beside the built-in ones in :mod:`atrous.inference.fast` (torch, ONNX Runtime, OpenVINO,
LiteRT)::

    register_runtime("openvino", "openvino", _openvino_network)

:func:`fastest` builds each installed runtime, holds it to the fp32 agreement check (a runtime
that fails it is never chosen), times a few calls at the example's size after a warm-up (the
runtimes taking turns) and keeps the fastest; the choice is cached per model and size for the
life of the process.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from atrous.errors import UsageError, missing_dependency
from atrous.export.onnx import ExportCheckError, compare_logits, require_agreement

Network = Callable[[torch.Tensor], torch.Tensor]
Factory = Callable[[nn.Module, tuple[int, int], Path], Network]
#: Timed calls per runtime, after one warm-up call (which also builds lazy kernels).
ROUNDS = 3


@dataclass(frozen=True)
class Runtime:
    """A way to run the fp32 network: the package it needs and how to build it."""

    name: str
    module: str  # importable when the runtime is installed
    build: Factory


#: Runtimes by name, in the order ``auto`` tries them.
RUNTIMES: dict[str, Runtime] = {}
_CHOICES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int], RuntimeChoice]] = (
    weakref.WeakKeyDictionary()
)


def register_runtime(name: str, module: str, build: Factory) -> None:
    """Add a runtime; a name already taken is refused."""
    if name in RUNTIMES:
        raise ValueError(f"runtime {name!r} is already registered")
    RUNTIMES[name] = Runtime(name, module, build)


def runtime_backend(runtime: str | None) -> str:
    """The ``optimize_for_inference`` backend of ``--runtime``: auto → "fastest" (measured),
    a name → that runtime, None → "auto" (the rule of ``choose_backend``)."""
    return "auto" if runtime is None else "fastest" if runtime == "auto" else runtime


def installed(name: str) -> bool:
    """The runtime is registered and its package can be imported."""
    runtime = RUNTIMES.get(name)
    return runtime is not None and importlib.util.find_spec(runtime.module) is not None


def require_runtime(name: str) -> Runtime:
    """The runtime ``--runtime name`` asks for; one clear error when it cannot run here: the
    extra to install for a missing package, or the runtimes this version offers."""
    if name not in RUNTIMES:
        offered = ", ".join(["auto", *RUNTIMES])
        raise UsageError(f"--runtime {name}: not available in this version of atrous ({offered})")
    if importlib.util.find_spec(RUNTIMES[name].module) is None:
        raise missing_dependency(RUNTIMES[name].module, f"--runtime {name}")
    return RUNTIMES[name]


@dataclass(frozen=True)
class RuntimeChoice:
    """Which runtime ``auto`` chose at one size, and what each candidate measured."""

    name: str
    size: tuple[int, int]
    milliseconds: dict[str, float]  # median per call, runtimes that passed the check
    refused: dict[str, str]  # runtimes that failed to build or the check, and why

    def describe(self) -> str:
        timed = ", ".join(f"{n} {ms:.1f} ms" for n, ms in self.milliseconds.items())
        refused = "".join(f"; {n} refused ({why})" for n, why in self.refused.items())
        height, width = self.size
        return f"runtime auto: {self.name} at {height}×{width} ({timed}{refused})"


def _interleaved_ms(networks: dict[str, Network], batch: torch.Tensor, rounds: int) -> dict:
    """Median milliseconds per call of each network on ``batch`` after one warm-up call each,
    the networks taking turns round by round (a drift of the machine hits them alike)."""
    times: dict[str, list[float]] = {name: [] for name in networks}
    for network in networks.values():
        network(batch)
    for _ in range(rounds):
        for name, network in networks.items():
            start = time.perf_counter()
            network(batch)
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def fastest(
    model: nn.Module,
    folded: nn.Module,
    batch: torch.Tensor,
    reference: torch.Tensor,
    tolerance: float,
    workdir: Path,
    rounds: int = ROUNDS,
) -> tuple[Network, RuntimeChoice]:
    """The fastest installed runtime of ``folded`` on ``batch`` among those whose logits agree
    with ``reference`` within ``tolerance`` (a share of the logits' scale), and the choice;
    a choice cached for ``model`` at this size is reused (only the chosen one is built)."""
    size = (int(batch.shape[-2]), int(batch.shape[-1]))
    cached = _CHOICES.get(model, {}).get(size)
    names = [cached.name] if cached else [n for n in RUNTIMES if installed(n)]
    networks: dict[str, Network] = {}
    refused: dict[str, str] = {}
    for name in names:
        try:
            network = RUNTIMES[name].build(folded, size, workdir / name)
            agreement = compare_logits(network(batch), reference)
            require_agreement(agreement, tolerance, f"the {name} fp32 network")
        except (ExportCheckError, RuntimeError, ValueError) as error:
            refused[name] = str(error).splitlines()[0][:200]
            continue
        networks[name] = network
    if not networks:
        raise ExportCheckError(f"no runtime passed the fp32 check: {refused}")
    if cached is not None:
        return networks[cached.name], cached
    milliseconds = _interleaved_ms(networks, batch, rounds)
    choice = RuntimeChoice(min(milliseconds, key=milliseconds.get), size, milliseconds, refused)
    _CHOICES.setdefault(model, {})[size] = choice
    return networks[choice.name], choice
