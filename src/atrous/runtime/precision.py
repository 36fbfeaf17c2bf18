"""The one mixed-precision context: training, evaluation, prediction and the fast path use it.

bf16 on a CPU without native bf16 instructions (AVX-512 BF16 or AMX) is emulated and measured
10-30x slower than fp32 (an AVX2-only AMD EPYC). There, ``bf16`` warns once and runs fp32: the
same numbers a user would get from fp32, without the slowdown; the warning names the reason.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path

import torch

#: Autocast dtype of each precision name (fp32: none).
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: CPU flags (as /proc/cpuinfo names them) that mean native bf16 arithmetic.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: CPU flags worth naming when describing a machine for a benchmark.
DESCRIBED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in info.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: its flags name avx512_bf16 or amx_bf16. Where
    the flags cannot be read, oneDNN's own check decides (it also accepts plain AVX-512, where
    bf16 runs, if not natively)."""
    flags = cpu_flags()
    if flags:
        return bool(flags & set(BF16_FLAGS))
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


@functools.cache
def _warn_emulated_bf16() -> None:
    warnings.warn(
        "precision bf16: this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag), where "
        "bf16 is emulated and 10-30x slower than fp32; running fp32 instead (use a CPU with "
        "AVX-512 BF16 or AMX, or a GPU, for bf16)",
        stacklevel=3,
    )


def effective_precision(device: torch.device, precision: str) -> str:
    """The precision that runs for ``precision`` on ``device``: bf16 on a CPU without native
    bf16 becomes fp32 (with one warning per process); anything else as given."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        _warn_emulated_bf16()
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for ``precision`` in {"fp32", "bf16", "fp16"} on ``device``
    (bf16 on a CPU without native bf16: fp32, see :func:`effective_precision`)."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' needs CUDA; use 'bf16' on the CPU")
    precision = effective_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])
