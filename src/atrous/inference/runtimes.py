"""The runtimes of the fast path, and how the default (``--fast``, ``--runtime auto``) picks the
fastest correct one among those installed, by measuring them once per model, size and machine.

A runtime is a factory taking the BN-folded fp32 model (eval mode, on the CPU), the size (H, W)
of the images to come (None when the caller named none) and a folder for its files, and
returning a network: a callable from normalised (N, C, H, W) tensors to logits, like
:class:`~atrous.export.onnx.OnnxNetwork`; a runtime that also runs int8 has a second factory
taking normalised calibration batches too. Adding one is a
line beside the built-in ones in :mod:`atrous.inference.fast` (torch, ONNX Runtime, OpenVINO,
LiteRT)::

    register_runtime("openvino", "openvino", _openvino_network, _openvino_int8_network)

:func:`fastest` builds each installed runtime for the precision and holds it to a check: fp32
must agree with the eager model within the tolerance; int8 must stay within twice the best int8
candidate's root-mean-square difference from the eager logits (or :data:`INT8_FLOOR`, the
larger). It then times a few calls of those that pass, taking turns after a warm-up, keeps the
fastest and remembers the choice on disk (:mod:`atrous.inference.choices`): the next process
builds the chosen runtime alone.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from atrous.errors import UsageError, missing_dependency
from atrous.export.onnx import ExportCheckError, compare_logits, require_agreement
from atrous.export.tflite import INT8_TOLERANCE, relative_rms
from atrous.inference.choices import choice_key, choices_file, recall, remember

Network = Callable[[torch.Tensor], torch.Tensor]
Size = tuple[int, int] | None
Factory = Callable[[nn.Module, Size, Path], Network]
Int8Factory = Callable[[nn.Module, Size, Path, Sequence[torch.Tensor]], Network]
#: Timed calls per runtime, after one warm-up call (which also builds lazy kernels).
ROUNDS = 3
#: Runtimes whose median is within this share of the fastest one's are timed further...
CLOSE = 0.05
#: ... up to this many calls each in all.
MAX_ROUNDS = 15
#: Seconds of rest before each timed call: another runtime's worker threads (ONNX Runtime's
#: spin after each run) must not steal the cores from the one being timed.
PAUSE_S = 0.2
#: int8 candidates within this relative RMS difference from the eager logits always pass (the
#: LiteRT int8 check's floor: correct graphs measured 0.01-0.08, wrong ones 0.4-0.8).
INT8_FLOOR = INT8_TOLERANCE


@dataclass(frozen=True)
class Runtime:
    """A way to run the network: the package it needs and how to build it (fp32; int8 too
    when ``build_int8`` is set)."""

    name: str
    module: str  # importable when the runtime is installed
    build: Factory
    build_int8: Int8Factory | None = None

    def network(self, trial: Trial, folder: Path) -> Network:
        """This runtime's network for ``trial``'s precision, its files in ``folder``."""
        if trial.precision == "int8":
            if self.build_int8 is None:
                raise ValueError(f"the {self.name} runtime does not run int8")
            return self.build_int8(trial.folded, trial.images_size, folder, trial.calibration)
        return self.build(trial.folded, trial.images_size, folder)


#: Runtimes by name, in the order ``auto`` tries them.
RUNTIMES: dict[str, Runtime] = {}


def register_runtime(
    name: str, module: str, build: Factory, build_int8: Int8Factory | None = None
) -> None:
    """Add a runtime; a name already taken is refused."""
    if name in RUNTIMES:
        raise ValueError(f"runtime {name!r} is already registered")
    RUNTIMES[name] = Runtime(name, module, build, build_int8)


def installed(name: str) -> bool:
    """The runtime is registered and its package can be imported."""
    runtime = RUNTIMES.get(name)
    return runtime is not None and importlib.util.find_spec(runtime.module) is not None


def candidates(precision: str) -> list[str]:
    """The installed runtimes that run ``precision`` (fp32 or int8), in registry order."""
    return [
        name
        for name, runtime in RUNTIMES.items()
        if installed(name) and (precision == "fp32" or runtime.build_int8 is not None)
    ]


def require_runtime(name: str, precision: str = "fp32") -> Runtime:
    """The runtime ``--runtime name`` asks for; one clear error when it cannot run here: the
    extra to install for a missing package, the runtimes this version offers, or those that
    run int8."""
    if name not in RUNTIMES:
        offered = ", ".join(["auto", *RUNTIMES])
        raise UsageError(f"--runtime {name}: not available in this version of atrous ({offered})")
    if importlib.util.find_spec(RUNTIMES[name].module) is None:
        raise missing_dependency(RUNTIMES[name].module, f"--runtime {name}")
    if precision == "int8" and RUNTIMES[name].build_int8 is None:
        int8 = ", ".join(n for n, r in RUNTIMES.items() if r.build_int8 is not None)
        raise UsageError(f"--runtime {name} runs fp32 only; int8 runs on: auto, {int8}")
    return RUNTIMES[name]


@dataclass(frozen=True)
class Trial:
    """What every runtime is built from and held to: the BN-folded model, the example batch and
    the eager fp32 logits on it, the precision, int8's normalised calibration batches, fp32's
    tolerance (a share of the logits' scale), and whether the example's size is the size of
    the images to come (the caller gave an example) or only a size to check at."""

    folded: nn.Module
    batch: torch.Tensor
    reference: torch.Tensor
    precision: str = "fp32"
    calibration: Sequence[torch.Tensor] = ()
    tolerance: float = 1e-4
    sized: bool = True

    @property
    def size(self) -> tuple[int, int]:
        return int(self.batch.shape[-2]), int(self.batch.shape[-1])

    @property
    def images_size(self) -> Size:
        """The size the runtimes are built for: the example's, or None when it is only a check."""
        return self.size if self.sized else None


@dataclass(frozen=True)
class RuntimeChoice:
    """Which runtime the default chose at one size and precision, and what each candidate
    measured (``remembered``: read from this machine's earlier measurement)."""

    name: str
    precision: str
    size: tuple[int, int]
    milliseconds: dict[str, float]  # median per call, runtimes that passed the check
    refused: dict[str, str] = field(default_factory=dict)  # and why
    remembered: bool = False

    def describe(self) -> str:
        timed = ", ".join(f"{n} {ms:.1f} ms" for n, ms in self.milliseconds.items())
        refused = "; ".join(f"{n} refused ({why})" for n, why in self.refused.items())
        alone = "the only one that passed" if self.refused else "the only one installed"
        details = "; ".join(x for x in (timed or alone, refused) if x)
        height, width = self.size
        line = f"runtime auto: {self.name} for {self.precision} at {height}×{width} ({details})"
        return line + (f", measured earlier ({choices_file()})" if self.remembered else "")


def _interleaved_ms(networks: dict[str, Network], batch: torch.Tensor, rounds: int) -> dict:
    """Median milliseconds per call of each network on ``batch`` after one warm-up call each,
    the networks taking turns round by round (a drift of the machine hits them alike), each
    after a rest of :data:`PAUSE_S`, as a runtime will run alone. While the runner-up is
    within :data:`CLOSE` of the leader, the runtimes that close keep taking turns, up to
    :data:`MAX_ROUNDS` in all: a near tie gets more samples, not a coin toss."""
    times: dict[str, list[float]] = {name: [] for name in networks}
    for network in networks.values():
        network(batch)
    contenders = list(networks)
    for round_ in range(MAX_ROUNDS):
        for name in contenders:
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            networks[name](batch)
            times[name].append(time.perf_counter() - start)
        if round_ + 1 < rounds:
            continue
        medians = {name: statistics.median(times[name]) for name in contenders}
        best = min(medians.values())
        contenders = [name for name in contenders if medians[name] <= best * (1 + CLOSE)]
        if len(contenders) < 2:
            break
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def _build_all(
    names: list[str], trial: Trial, workdir: Path
) -> tuple[dict[str, Network], dict[str, torch.Tensor], dict[str, str]]:
    """Each runtime's network and its logits on the example; those that fail to build, or
    fail fp32's agreement check, are refused with the first line of the reason."""
    networks, outputs, refused = {}, {}, {}
    for name in names:
        try:
            network = RUNTIMES[name].network(trial, workdir / name)
            logits = network(trial.batch)
            if trial.precision == "fp32":
                agreement = compare_logits(logits, trial.reference)
                require_agreement(agreement, trial.tolerance, f"the {name} fp32 network")
        except (ExportCheckError, RuntimeError, ValueError) as error:
            refused[name] = str(error).splitlines()[0][:200]
            continue
        networks[name], outputs[name] = network, logits
    return networks, outputs, refused


def _screen_int8(
    networks: dict[str, Network], outputs: dict[str, torch.Tensor], trial: Trial
) -> dict[str, str]:
    """Drop the int8 networks further from the eager logits than twice the best one (or the
    floor, the larger); returns why each was refused."""
    distances = {name: relative_rms(outputs[name], trial.reference) for name in networks}
    if not distances:
        return {}
    limit = max(INT8_FLOOR, 2 * min(distances.values()))
    refused = {}
    for name, distance in distances.items():
        if distance > limit:
            refused[name] = f"int8 RMS difference {distance:.3g} of the logits, over {limit:.3g}"
            del networks[name]
    return refused


def fastest(
    model: nn.Module, trial: Trial, workdir: Path, rounds: int = ROUNDS
) -> tuple[Network, RuntimeChoice]:
    """The fastest installed runtime for ``trial`` among those that pass its check, and the
    choice; a choice this machine made earlier for this model's configuration, size and
    precision (with the same runtimes installed) is reused, building that runtime alone."""
    names = candidates(trial.precision)
    key = choice_key(model, trial.size, trial.precision, {n: RUNTIMES[n].module for n in names})
    earlier = recall(key)
    if earlier is not None and earlier["name"] in names:
        networks, _, _ = _build_all([earlier["name"]], trial, workdir)
        if networks:
            choice = RuntimeChoice(
                earlier["name"],
                trial.precision,
                trial.size,
                dict(earlier.get("milliseconds", {})),
                dict(earlier.get("refused", {})),
                remembered=True,
            )
            return networks[earlier["name"]], choice
    networks, outputs, refused = _build_all(names, trial, workdir)
    if trial.precision == "int8":
        refused |= _screen_int8(networks, outputs, trial)
    if not networks:
        raise ExportCheckError(f"no runtime passed the {trial.precision} check: {refused}")
    milliseconds = _interleaved_ms(networks, trial.batch, rounds) if len(networks) > 1 else {}
    name = min(milliseconds, key=milliseconds.get) if milliseconds else next(iter(networks))
    choice = RuntimeChoice(name, trial.precision, trial.size, milliseconds, refused)
    remember(key, {"name": name, "milliseconds": milliseconds, "refused": refused})
    return networks[name], choice
