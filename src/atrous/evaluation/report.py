"""The report of an evaluation: the JSON file (scores, confusion matrix, protocol, published
score) and the confusion heatmap beside it, and what was found, for the caller to print."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atrous.evaluation.evaluate import Evaluation, scores_to_dict
from atrous.evaluation.metrics import ConfusionMatrix, SegmentationScores
from atrous.evaluation.plots import plot_confusion


@dataclass
class EvaluationReport:
    """What an evaluation found and wrote: ``record`` is the JSON file's content."""

    scores: SegmentationScores
    names: tuple[str, ...]
    task: str
    record: dict[str, object]
    trimap: dict[int, SegmentationScores]
    path: Path
    heatmap: Path | None = None
    published: Any = None  # the published score it is set beside (a hub PublishedScore)


def write_report(
    result: Evaluation,
    names: Sequence[str],
    record: dict[str, object],
    trimap_source: str,
    path: Path,
    task: str = "multiclass",
) -> EvaluationReport:
    """Write ``record`` (the protocol; the caller's) with the scores as the JSON report and, for a
    (K × K) confusion matrix, its heatmap beside it (``<stem>_confusion.png``)."""
    scores = result.scores()
    bands = result.trimap.scores() if result.trimap is not None else {}
    record["scores"] = scores_to_dict(scores, names, task)
    record["confusion_matrix"] = result.confusion.matrix.tolist()  # [truth][prediction]
    if result.trimap is not None:
        record["trimap"] = {
            "source": trimap_source,
            "mean_iou": {str(w): scores_to_dict(s, names)["mean_iou"] for w, s in bands.items()},
        }
    path.write_text(json.dumps(record, indent=2))
    report = EvaluationReport(scores, tuple(names), task, record, bands, path)
    if isinstance(result.confusion, ConfusionMatrix):
        report.heatmap = path.with_name(f"{path.stem}_confusion.png")
        plot_confusion(result.confusion.matrix, names, report.heatmap)
    return report
