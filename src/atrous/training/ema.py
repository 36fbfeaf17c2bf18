"""An exponential moving average (EMA) of the weights, kept beside the trained ones.

After every optimizer step each parameter's average moves towards the trained value::

    decay_t = min(decay, (1 + t) / (10 + t))        # t: updates before this one
    ema     = decay_t · ema + (1 − decay_t) · param

The warm-up term is TensorFlow's ``ExponentialMovingAverage(num_updates=step)`` (the official
DeepLab code's framework): early averages follow the weights closely instead of staying near
the random start for the ~1/(1 − decay) steps a plain EMA needs. Buffers (BatchNorm running
statistics and counts) are not averaged: they are copied from the trained model at each update,
so the average normalises with the statistics the running weights last gathered.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(decay: float, updates: int) -> float:
    """The decay of the update that follows ``updates`` earlier ones (warm-up included)."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightAverage:
    """An EMA of ``model``'s parameters as a model of its own (in eval mode, no gradients)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the weights ``model`` holds now into the average; copy its buffers."""
        decay = ema_decay(self.decay, self.updates)
        averages = list(self.model.parameters())
        torch._foreach_mul_(averages, decay)
        torch._foreach_add_(averages, [p.detach() for p in model.parameters()], alpha=1 - decay)
        for own, trained in zip(self.model.buffers(), model.buffers(), strict=True):
            own.copy_(trained)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged model's weights (buffers included), as a model's state dict."""
        return self.model.state_dict()

    def load_state_dict(self, weights: dict[str, torch.Tensor], updates: int) -> None:
        """Continue from saved averaged ``weights`` after ``updates`` updates."""
        self.model.load_state_dict(weights)
        self.updates = updates
