"""The class-balance chart of ``atrous check-data --chart PATH``: per-class pixel shares."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def plot_class_balance(
    classes: Sequence[str], pixels: Sequence[int], output_path: Path, title: str = "class balance"
) -> Path:
    """One horizontal bar per class: its share of the labelled pixels (log scale, so rare
    classes stay visible), the share printed beside each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(pixels, dtype=np.float64)
    shares = 100 * counts / counts.sum() if counts.sum() else counts
    figure, axis = plt.subplots(figsize=(7, 1.2 + 0.28 * len(classes)))
    rows = np.arange(len(classes))
    axis.barh(rows, np.maximum(shares, 1e-4), color="tab:blue")
    axis.set_yticks(rows, labels=list(classes))
    axis.invert_yaxis()  # class 0 on top
    axis.set_xscale("log")
    axis.set(title=title, xlabel="share of labelled pixels (%)")
    for row, share in zip(rows, shares, strict=True):
        axis.annotate(
            f"{share:.2f}%",
            (max(share, 1e-4), row),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(output_path, dpi=100)
    plt.close(figure)
    return output_path
