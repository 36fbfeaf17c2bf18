"""What the benchmark scripts share: timing one call, interleaving contenders round by round,
peak memory, the runner every script times, and writing results.

The scripts (``run.py``, ``train_steps.py``, ``roofline.py``, ``gpu_check.py``,
``predict_pipeline.py``) run as ``python benchmarks/<script>.py``, so this folder is on the path
and they ``import harness``.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atrous.runtime.precision import autocast

Runner = Callable[[torch.Tensor], Any]
#: Where the scripts write their JSON and Markdown unless told otherwise.
RESULTS = Path(__file__).resolve().parent / "results"
#: Idle time before each timed call: ONNX Runtime and OpenMP threads keep spinning for a while
#: after a call, and would slow the next contender by up to 20%; one process runs one runtime.
PAUSE_S = 0.2


# ---------------------------------------------------------------------------- timing


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


def seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of ``fn`` with the device's queue drained before and after (for blocks of many
    calls, where one pair of CUDA events would not see host-side work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved(
    calls: Sequence[Callable[[], Any]],
    rounds: int,
    clock: Callable[[Callable[[], Any]], float],
    pause_s: float = PAUSE_S,
) -> list[list[float]]:
    """Each call timed once per round, the calls taking turns within a round (after a pause),
    so that drifts of the machine hit all of them alike. Returns one list of times per call."""
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for call, record in zip(calls, times, strict=True):
            time.sleep(pause_s)
            record.append(clock(call))
    return times


def median_ms(times: Sequence[float]) -> float:
    """The median of ``times`` (seconds) in milliseconds; NaN when there are none."""
    return 1000 * statistics.median(times) if times else float("nan")


# ---------------------------------------------------------------------------- memory


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


# ---------------------------------------------------------------------------- runners


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


# ---------------------------------------------------------------------------- reporting


def logger(start: float | None = None) -> Callable[[str], None]:
    """A progress log on stderr, each line stamped with the seconds since ``start``."""
    start = time.perf_counter() if start is None else start

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", file=sys.stderr, flush=True)

    return log


def fmt(value: Any, digits: int = 0) -> str:
    """A figure for a Markdown table: thousands separated, "—" for NaN, inf or None."""
    if not isinstance(value, int | float) or value != value or abs(value) == float("inf"):
        return "—"
    return f"{value:,.{digits}f}"


def write_results(
    json_path: Path | str, results: Any, markdown_path: Path | str | None = None, table: str = ""
) -> None:
    """Write ``results`` as indented JSON (and ``table`` to ``markdown_path`` when given),
    creating the folders."""
    for path, text in ((json_path, json.dumps(results, indent=2)), (markdown_path, table)):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n")
