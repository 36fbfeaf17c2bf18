"""Pre-flight check: fit a single batch before spending hours on the whole dataset.

A network that cannot drive its loss towards zero on one batch it sees again and again will not
learn the dataset either: the labels are broken (all ignored, wrong values), the learning rate
is off, or the loss does not fit the task. ``atrous train ... --run.overfit_batch 200`` runs this
check with the run's own model, loss, optimizer and learning rate (held constant), and stops
with an error saying so when the loss stays high.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from atrous.data import SegmentationDataset, build_dataset
from atrous.runtime.distributed import init_distributed, shutdown_distributed
from atrous.runtime.precision import autocast
from atrous.training.config import TrainConfig
from atrous.training.loop import (
    build_optimizer,
    check_labels,
    prepare_model,
    training_loss,
    training_samples,
    with_dataset_classes,
)

#: The check passes when the last steps' loss is at most this fraction of the first step's.
PASS_RATIO = 0.1
#: Steps averaged for the final loss (one noisy step does not decide).
FINAL_STEPS = 5


class OverfitFailed(RuntimeError):
    """The loss on one repeated batch did not approach zero."""


@dataclass
class OverfitResult:
    """Losses of the pre-flight's steps (the first, and the mean of the last few)."""

    steps: int
    first_loss: float
    final_loss: float

    @property
    def ratio(self) -> float:
        return self.final_loss / self.first_loss if self.first_loss > 0 else math.inf


def _one_batch(
    config: TrainConfig, dataset: SegmentationDataset, micro: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``micro`` training samples, augmented once (crop, scale, flip as configured)."""
    samples = training_samples(config, dataset)
    pairs = [samples[(0, index)] for index in range(min(micro, len(samples)))]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def fit_one_batch(config: TrainConfig) -> OverfitResult:
    """Train ``config``'s model on one batch for ``run.overfit_batch`` steps (one process)."""
    env = init_distributed(config.run.device)
    try:
        if env.distributed:
            raise ValueError("--run.overfit_batch runs in one process; start it without torchrun")
        train_set = build_dataset(config.data, "train")
        config = with_dataset_classes(config, train_set.num_classes)
        check_labels(train_set, is_main=True)
        loss_fn = training_loss(config, train_set, is_main=True)
        model, net = prepare_model(config, env, resuming=False)
        optimizer = build_optimizer(model, config.optim)
        scaler = torch.amp.GradScaler(env.device.type, enabled=config.run.precision == "fp16")
        images, masks = _one_batch(
            config, train_set, config.run.batch_size // config.run.accumulate
        )
        images, masks = images.to(env.device), masks.to(env.device)
        net.train()
        losses = []
        for step in range(config.run.overfit_batch):
            optimizer.zero_grad(set_to_none=True)
            with autocast(env.device, config.run.precision):
                loss, _ = loss_fn(net(images), masks, step)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                break
    finally:
        shutdown_distributed()
    final = losses[-FINAL_STEPS:]
    return OverfitResult(len(losses), losses[0], sum(final) / len(final))


def overfit_check(config: TrainConfig) -> OverfitResult:
    """Run :func:`fit_one_batch`, print the outcome, raise :class:`OverfitFailed` when the loss
    does not fall to ``PASS_RATIO`` of its first value (or becomes NaN/inf)."""
    result = fit_one_batch(config)
    summary = (
        f"one batch, {result.steps} steps: loss {result.first_loss:.4f} → "
        f"{result.final_loss:.4f} ({result.ratio:.1%} of the first)"
    )
    if not math.isfinite(result.final_loss) or result.ratio > PASS_RATIO:
        raise OverfitFailed(
            f"pre-flight failed: {summary}; a model that cannot fit one batch will not learn the "
            f"dataset. Check the masks (atrous check-data), the learning rate (--optim.lr "
            f"{config.optim.lr}) and the loss; more steps (--run.overfit_batch) may also help "
            f"(it passes at {PASS_RATIO:.0%})"
        )
    print(f"pre-flight passed: {summary}; run again without --run.overfit_batch to train")
    return result
