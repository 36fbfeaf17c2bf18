"""One training step (forward + backward + SGD, batch 2, 321×321; smp needs 320×320) of a row's
atrous network beside its peer's: fp32, and bf16 autocast with channels_last (fp16 on a GPU);
at OS8, fp32 with activation checkpointing instead. Median step time over interleaved rounds
and the peak memory of one step.

    python benchmarks/train_steps.py                       # the default rows that train
    python benchmarks/train_steps.py --rows r101_os8_513 --rounds 3

It prints a Markdown table per row and writes JSON (``--json``, default
benchmarks/results/train_steps.json); ``run.py`` measures the same steps for its rows.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from collections.abc import Callable
from typing import Any

import harness
import torch
import torch.nn.functional as F
from peers import DEFAULT_ROWS, ROWS, Row
from torch import nn

from atrous.models.profile import describe_device
from atrous.runtime.precision import autocast


def train_step_runner(
    model: nn.Module,
    device: torch.device,
    size: tuple[int, int],
    precision: str = "fp32",
    checkpointing: bool = False,
) -> Callable[[], None]:
    """One SGD step on a batch of 2 (cross-entropy on random labels), as training runs it."""
    model = copy.deepcopy(model).to(device).train()
    channels_last = precision != "fp32"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if checkpointing:
        model.set_activation_checkpointing(True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, *size, generator=generator).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 21, (2, *size), generator=generator).to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = model(images)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()

    return step


def measure_training(
    row: Row, model: nn.Module, peer: nn.Module | None, device: torch.device, rounds: int
) -> list[dict[str, Any]]:
    """Median step time and peak step memory, interleaved over the variants."""
    low = "bf16" if device.type == "cpu" else "fp16"
    size = (321, 321)
    peer_size = (320, 320) if row.peer_name.startswith("smp") else size  # smp: multiples of 16
    variants: list[tuple[str, str, Callable[[], Callable[[], None]]]] = []
    if peer is not None and not row.checkpointing:
        variants.append(("peer", "fp32", lambda: train_step_runner(peer, device, peer_size)))
    variants.append(("atrous", "fp32", lambda: train_step_runner(model, device, size)))
    if not row.checkpointing:
        variants.append(
            (
                "atrous",
                f"{low} autocast, channels_last",
                lambda: train_step_runner(model, device, size, low),
            )
        )
    if row.checkpointing:
        variants.append(
            (
                "atrous",
                "fp32, activation checkpointing",
                lambda: train_step_runner(model, device, size, checkpointing=True),
            )
        )
    built = []
    for side, path, make in variants:
        step = make()
        step()  # warm-up: optimizer state, kernels
        with harness.PeakMemory(device) as memory:
            step()
        built.append((side, path, step, memory.mib))
    times = harness.interleaved([b[2] for b in built], rounds, harness.Clock(device))
    return [
        {"side": side, "path": path, "step_ms": harness.median_ms(t), "memory_mib": memory_mib}
        for (side, path, _, memory_mib), t in zip(built, times, strict=True)
    ]


def training_lines(row: dict) -> list[str]:
    """A row's training steps as a Markdown table (nothing when the row has none)."""
    if "training" not in row:
        return []
    lines = [
        "Training step (forward + backward + SGD, batch 2, 321×321; smp 320×320):",
        "",
        "| who | precision | step (ms) | memory (MiB) |",
        "|---|---|---:|---:|",
    ]
    for t in row["training"]:
        lines.append(
            f"| {t['side']} | {t['path']} | {harness.fmt(t['step_ms'])} "
            f"| {harness.fmt(t['memory_mib'])} |"
        )
    return [*lines, ""]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    trained = [key for key in DEFAULT_ROWS if ROWS[key].train]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", default=",".join(trained), help=f"comma-separated: {', '.join(ROWS)}"
    )
    parser.add_argument("--rounds", type=int, default=2, help="timed steps per variant")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--json", default=str(harness.RESULTS / "train_steps.json"))
    args = parser.parse_args(argv)
    args.keys = args.rows.split(",")
    unknown = [k for k in args.keys if k not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    warnings.filterwarnings("ignore")
    device, log = torch.device(args.device), harness.logger()
    results: dict[str, Any] = {"machine": describe_device(device), "rows": []}
    for key in args.keys:
        row = ROWS[key]
        log(f"{key}: {row.title}")
        torch.manual_seed(0)
        model, peer = row.build()
        training = measure_training(row, model, peer, device, args.rounds)
        results["rows"].append({"row": key, "title": row.title, "training": training})
    for row in results["rows"]:
        print("\n".join([f"### {row['title']}", "", *training_lines(row)]))
    harness.write_results(args.json, results)
    log(f"done; JSON in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
