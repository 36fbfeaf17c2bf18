"""TensorRT engines for the GPU check: atrous's TensorRT-ready ONNX (``atrous export --format
tensorrt``) built by the ``tensorrt`` Python package into an engine and run on CUDA tensors.

A runner takes a (N, 3, H, W) CUDA batch at the exported size (N up to the batch the engine was
built for) and returns the logits; ``gpu_check.py`` times it beside the PyTorch rows. Written
for the TensorRT 10 API (named tensors, ``execute_async_v3``).
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import atrous
from atrous.export.tensorrt import export_tensorrt

#: TensorRT engine rows: precision → how the engine is built (builder flag, ONNX precision).
PRECISIONS = {"fp32": (None, "fp32"), "fp16": ("FP16", "fp32"), "int8": ("INT8", "int8")}


def unavailable(device: torch.device) -> str | None:
    """Why TensorRT rows cannot run on ``device``, or None."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT: the tensorrt package is not installed (pip install tensorrt)"
    if device.type != "cuda":
        return "TensorRT runs on a CUDA device"
    return None


def builders(model: atrous.DeepLab, size: int, batch_size: int) -> list[tuple[str, Any]]:
    """Each precision's row build step: :func:`tensorrt_runner` of these arguments, when
    called."""
    return [(p, lambda p=p: tensorrt_runner(model, size, batch_size, p)) for p in PRECISIONS]


def _build_engine(path: Path, size: int, batch_size: int, flag: str | None):
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: TensorRT 10's only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser refused {path.name}: {errors}")
    config = builder.create_builder_config()
    if flag is not None:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    shape = (3, size, size)
    profile.set_shape("images", (1, *shape), (batch_size, *shape), (batch_size, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build the engine (see its log above)")
    return trt.Runtime(logger).deserialize_cuda_engine(serialized)


def tensorrt_runner(model: atrous.DeepLab, size: int, batch_size: int, precision: str):
    """Export ``model`` at ``size``×``size`` (int8: calibrated on 4 random images), build the
    engine and return a runner of CUDA batches."""
    flag, onnx_precision = PRECISIONS[precision]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(4)]
    with tempfile.TemporaryDirectory(prefix="atrous-trt-") as folder:
        path = Path(folder) / "model.trt.onnx"
        export_tensorrt(
            copy.deepcopy(model).float().eval().cpu(),
            path,
            size=(size, size),
            precision=onnx_precision,
            calibration=images if onnx_precision == "int8" else (),
        )
        engine = _build_engine(path, size, batch_size, flag)
    context = engine.create_execution_context()
    classes = model.num_classes

    def run(images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous().float()
        context.set_input_shape("images", tuple(images.shape))
        logits = torch.empty(images.shape[0], classes, size, size, device=images.device)
        context.set_tensor_address("images", images.data_ptr())
        context.set_tensor_address("logits", logits.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return logits

    run.engine = engine  # keeps the engine alive with its context
    return run
