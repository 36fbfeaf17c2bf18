"""The one mixed-precision context: training, evaluation, prediction and the fast path use it."""

from __future__ import annotations

import contextlib

import torch

#: Autocast dtype of each precision name (fp32: none).
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for ``precision`` in {"fp32", "bf16", "fp16"} on ``device``."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' needs CUDA; use 'bf16' on the CPU")
    return torch.autocast(device.type, dtype=DTYPES[precision])
