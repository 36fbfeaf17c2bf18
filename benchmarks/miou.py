"""What the fast paths cost in accuracy: mIoU of the trained demo model on the built-in validation
split (200 scenes of 128×128), eager fp32 against each fast path.

    atrous demo                      # trains and saves runs/demo/model
    python benchmarks/miou.py        # prints a Markdown table, writes benchmarks/results/miou.json

int8 is calibrated on the first 8 images of the training split, which are not scored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from atrous.apps.demo import demo_config
from atrous.data import build_dataset
from atrous.evaluation.evaluate import evaluate_dataset
from atrous.hub.load import load
from atrous.inference.fast import CALIBRATION_IMAGES, optimize_for_inference
from atrous.runtime.distributed import DistributedEnv

ROOT = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/demo/model")
    parser.add_argument("--json", default=str(ROOT / "results" / "miou.json"))
    args = parser.parse_args(argv)
    model = load(args.model)
    config = demo_config().data
    val = build_dataset(config, "val")
    train = build_dataset(config, "train")
    calibration = [train.load(i)[0] for i in range(CALIBRATION_IMAGES)]
    example = torch.randn(1, 3, 128, 128)
    env = DistributedEnv(0, 1, 0, torch.device("cpu"))
    mean, std = model.config.mean, model.config.std
    paths = {
        "eager fp32": (lambda: model, "fp32"),
        "eager bf16 autocast (--precision bf16)": (lambda: model, "bf16"),
        "fast fp32": (lambda: optimize_for_inference(model, example), "fp32"),
        "fast bf16": (lambda: optimize_for_inference(model, example, precision="bf16"), "fp32"),
        "fast int8": (
            lambda: optimize_for_inference(
                model, example, precision="int8", calibration=calibration
            ),
            "fp32",
        ),
    }
    rows = []
    for name, (build, autocast) in paths.items():
        network = build()
        start = time.perf_counter()
        scores = evaluate_dataset(network, val, mean, std, env, autocast, progress=False).scores()
        seconds = time.perf_counter() - start
        rows.append({"path": name, "miou": scores.mean_iou, "seconds": seconds})
    base = rows[0]["miou"]
    lines = [
        f"Demo model {args.model}, {len(val)} validation scenes, whole images one at a time.",
        "",
        "| path | mIoU | change (points) | seconds for the split |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        row["change_points"] = 100 * (row["miou"] - base)
        lines.append(
            f"| {row['path']} | {100 * row['miou']:.2f} | {row['change_points']:+.2f} "
            f"| {row['seconds']:.1f} |"
        )
    print("\n".join(lines))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
