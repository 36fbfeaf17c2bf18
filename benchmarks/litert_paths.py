"""LiteRT contenders of a row (issue 25): atrous's ``.tflite`` export (litert-torch, fixed size)
in the LiteRT interpreter with its default CPU delegate, XNNPACK, at fp32 and int8 (PT2E static,
per-channel, calibrated on the row's calibration images). Listed only where litert-torch is
installed (``pip install 'atrous[tflite]'``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from harness import Runner

import atrous
from atrous.export.tflite import TfliteNetwork, export_tflite


def available() -> bool:
    """Whether litert-torch (the converter) is installed."""
    return importlib.util.find_spec("litert_torch") is not None


def tflite_runner(
    model: atrous.DeepLab,
    size: tuple[int, int],
    precision: str,
    calibration: list[torch.Tensor],
    path: Path,
) -> Runner:
    """The model exported at ``size`` (unchecked here: the benchmark compares every path with
    eager itself) and loaded in the interpreter, one thread per core as ONNX Runtime gets."""
    export_tflite(model, path, size, precision, calibration, check=False)  # type: ignore[arg-type]
    return TfliteNetwork(path)
