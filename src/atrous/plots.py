"""Training curves as a PNG: loss and validation mIoU against iterations."""

from __future__ import annotations

import json
from pathlib import Path


def plot_curves(metrics_path: Path, output_path: Path) -> Path:
    """Read a run's ``metrics.jsonl`` and draw loss and mIoU side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    losses = [(r["iteration"], r["loss"]) for r in records if "loss" in r]
    mious = [(r["iteration"], r["val_miou"]) for r in records if "val_miou" in r]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if losses:
        left.plot(*zip(*losses, strict=True), color="tab:blue")
    left.set(title="training loss", xlabel="iteration", ylabel="cross-entropy")
    if mious:
        right.plot(*zip(*mious, strict=True), marker="o", color="tab:green")
    right.set(title="validation mIoU", xlabel="iteration", ylabel="mIoU", ylim=(0, 1))
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(output_path, dpi=100)
    plt.close(figure)
    return output_path
