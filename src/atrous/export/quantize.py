"""Static int8 quantisation of an exported ONNX graph into QDQ form (``QuantizeLinear`` →
``DequantizeLinear`` around each quantised operator), calibrated on the user's images.

Two flavours: ONNX Runtime's fastest on the CPU (uint8 activations with zero points, int8
per-channel weights, int32 biases) and TensorRT's (every tensor signed int8 and symmetric, all
zero points 0, per-channel weights, biases left in float).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def quantize_qdq(
    source: Path,
    target: Path,
    calibration: Sequence[torch.Tensor],
    input_name: str = "images",
    symmetric: bool = False,
) -> Path:
    """Quantise the fp32 ONNX file ``source`` into ``target``: activation ranges (min/max)
    observed on ``calibration`` (normalised image batches), per-channel int8 weights;
    ``symmetric``: int8 activations with zero point 0 and float biases (TensorRT)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch.numpy()}

    options = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    prepared = target.with_suffix(".pre.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options=options if symmetric else None,
        )
    finally:
        prepared.unlink(missing_ok=True)
    return target
