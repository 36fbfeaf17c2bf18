"""Figures as PNG: training curves (loss and validation mIoU) and the confusion heatmap."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

ANNOTATED_CLASSES = 30  # up to this many classes, every cell shows its percentage


def _pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(metrics_path: Path, output_path: Path) -> Path:
    """Read a run's ``metrics.jsonl`` and draw loss and mIoU side by side."""
    plt = _pyplot()
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    losses = [(r["iteration"], r["loss"]) for r in records if "loss" in r]
    mious = [(r["iteration"], r["val_miou"]) for r in records if "val_miou" in r]
    ema = [(r["iteration"], r["ema_val_miou"]) for r in records if "ema_val_miou" in r]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if losses:
        left.plot(*zip(*losses, strict=True), color="tab:blue")
    left.set(title="training loss", xlabel="iteration", ylabel="cross-entropy")
    if mious:
        right.plot(*zip(*mious, strict=True), marker="o", color="tab:green", label="weights")
    if ema:  # the run kept an EMA of its weights (run.ema_decay)
        right.plot(*zip(*ema, strict=True), marker="s", color="tab:orange", label="EMA")
        right.legend()
    right.set(title="validation mIoU", xlabel="iteration", ylabel="mIoU", ylim=(0, 1))
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(output_path, dpi=100)
    plt.close(figure)
    return output_path


def row_normalised(matrix: np.ndarray | torch.Tensor) -> np.ndarray:
    """Each truth row divided by its pixel count (rows sum to 1); NaN rows where no truth pixel."""
    counts = matrix.cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    counts = counts.astype(np.float64)
    pixels = counts.sum(1, keepdims=True)
    return np.where(pixels > 0, counts / np.maximum(pixels, 1), np.nan)


def plot_confusion(matrix: np.ndarray | torch.Tensor, names: Sequence[str], path: Path) -> Path:
    """Draw a (K × K) confusion matrix (rows truth, columns prediction) as a heatmap PNG.

    Rows are normalised to 100% so that rare classes read as clearly as common ones; a row
    without truth pixels is grey. Up to ``ANNOTATED_CLASSES`` classes every cell shows its
    percentage; beyond (ADE20K's 150) the cells shrink and only colour and small names remain.
    """
    shares = row_normalised(matrix)
    n = len(names)
    if shares.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {shares.shape} for {n} class names")
    plt = _pyplot()
    annotate = n <= ANNOTATED_CLASSES
    cell, font = (0.45, 8) if annotate else (0.14, 5)  # inches per class, points
    side = max(5.0, n * cell + 2.0)
    figure, axis = plt.subplots(figsize=(side + 1.0, side))
    colours = plt.get_cmap("Blues").with_extremes(bad="lightgrey")
    image = axis.imshow(
        np.ma.masked_invalid(shares), cmap=colours, vmin=0, vmax=1, interpolation="nearest"
    )
    axis.set_xticks(range(n), names, rotation=90, fontsize=font)
    axis.set_yticks(range(n), names, fontsize=font)
    axis.set(xlabel="predicted", ylabel="truth")
    axis.set_title("confusion, each truth row sums to 100%\n(grey: no truth pixels)", fontsize=9)
    if annotate:
        for (row, column), share in np.ndenumerate(shares):
            if share > 0:
                colour = "white" if share > 0.6 else "black"
                label = f"{100 * share:.0f}%" if share >= 0.005 else "<1%"
                axis.text(column, row, label, ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=axis, fraction=0.04, pad=0.02, format=lambda v, _: f"{v:.0%}")
    figure.savefig(path, dpi=100, bbox_inches="tight")  # long class names widen the margins
    plt.close(figure)
    return path
