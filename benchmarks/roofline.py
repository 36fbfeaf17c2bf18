"""The roofline: the throughput of a reference conv (3×3, 256→256 at 65×65) at each precision,
the machine's conv limit that a network's Mult-Adds are divided by.

    python benchmarks/roofline.py                 # fp32, bf16 and int8 on the CPU
    python benchmarks/roofline.py --device cuda   # fp32, bf16 and fp16

It prints each precision's GMAC/s and writes JSON (``--json``, default
benchmarks/results/roofline.json); ``run.py`` times the same conv inside each row's rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any

import harness
import numpy as np
import torch
import torch.nn.functional as F

from atrous.inference.fast import session_options
from atrous.models.profile import describe_device

#: Mult-Adds of the reference conv (3×3, 256→256 at 65×65) that defines the roofline.
CONV_MACS = 256 * 256 * 9 * 65 * 65


def conv_probe(device: torch.device, precision: str) -> Callable[[], Any]:
    """One call of the reference conv at ``precision``, the machine's conv limit: PyTorch
    (channels_last) for fp32/bf16/fp16, ONNX Runtime's QLinearConv for int8; warmed up."""
    if precision == "int8":
        run = _int8_conv_probe()
    else:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        x = torch.randn(1, 256, 65, 65, device=device, dtype=dtype)
        weight = torch.randn(256, 256, 3, 3, device=device, dtype=dtype)
        x, weight = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight))

        def run() -> Any:
            with torch.inference_mode():
                return F.conv2d(x, weight, padding=1)

    for _ in range(3):
        run()
    return run


def conv_throughput(device: torch.device, precision: str, repeats: int = 20) -> float:
    """Mult-Adds/s of the reference conv: median of ``repeats`` calls."""
    probe, clock = conv_probe(device, precision), harness.Clock(device)
    return CONV_MACS / statistics.median(clock(probe) for _ in range(repeats))


def _int8_conv_probe() -> Callable[[], Any]:
    """The reference conv as ONNX Runtime's int8 QLinearConv (u8 activations, s8 weights)."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    constants = {
        "x_scale": np.array(0.02, np.float32),
        "x_zero": np.array(0, np.uint8),
        "w": rng.integers(-127, 127, (256, 256, 3, 3), dtype=np.int8),
        "w_scale": np.full(256, 0.01, np.float32),
        "w_zero": np.zeros(256, np.int8),
        "y_scale": np.array(0.05, np.float32),
        "y_zero": np.array(0, np.uint8),
    }
    node = helper.make_node(
        "QLinearConv", ["x", *constants], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 256, 65, 65])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 256, 65, 65])],
        [numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
    )
    x = rng.integers(0, 255, (1, 256, 65, 65), dtype=np.uint8)
    return lambda: session.run(None, {"x": x})


def precisions_for(device: torch.device) -> tuple[str, ...]:
    """The precisions whose roofline applies on ``device``: int8 (ONNX Runtime) on the CPU,
    fp16 on a GPU."""
    return ("fp32", "bf16", "int8") if device.type == "cpu" else ("fp32", "bf16", "fp16")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per precision")
    parser.add_argument("--json", default=str(harness.RESULTS / "roofline.json"))
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    throughput = {p: conv_throughput(device, p, args.repeats) for p in precisions_for(device)}
    for precision, value in throughput.items():
        print(f"{precision}: {value / 1e9:.0f} GMAC/s")
    results = {"machine": describe_device(device), "conv_throughput": throughput}
    harness.write_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
