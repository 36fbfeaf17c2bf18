"""Early stopping: end a run when validation stops improving.

A validation improves when its mIoU exceeds the reference by more than ``min_delta``; the
reference is then that mIoU and the count of validations since restarts at 0. After
``patience`` validations in a row without improvement the run stops (Keras's and Lightning's
rule). The reference and the count live in the checkpoint, so a resumed run stops at the step an
uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Plateau:
    """The early-stopping state: the best mIoU that counted and validations since."""

    best: float = -1.0
    since_best: int = 0

    def update(self, miou: float, min_delta: float) -> None:
        """Count one validation scoring ``miou``."""
        if miou > self.best + min_delta:
            self.best, self.since_best = miou, 0
        else:
            self.since_best += 1

    def reached(self, patience: int) -> bool:
        """Whether ``patience`` validations have passed without improvement (0: never)."""
        return patience > 0 and self.since_best >= patience
