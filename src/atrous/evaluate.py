"""Evaluation: whole-image inference at the original resolution into one confusion matrix."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn
from tqdm import tqdm

from atrous.data.base import SegmentationDataset
from atrous.data.transforms import normalisation
from atrous.distributed import DistributedEnv
from atrous.metrics import ConfusionMatrix


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for ``precision`` in {"fp32", "bf16", "fp16"}."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision 'fp16' needs CUDA; use 'bf16' on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate_dataset(
    model: nn.Module,
    dataset: SegmentationDataset,
    mean: Sequence[float],
    std: Sequence[float],
    env: DistributedEnv,
    precision: str = "fp32",
    progress: bool = True,
) -> ConfusionMatrix:
    """Confusion matrix of ``model`` over ``dataset``, each image whole, summed over processes.

    Process r evaluates images r, r + world_size, … (no padding, so every image counts once).
    """
    was_training = model.training
    model.eval()
    transform = normalisation(mean, std)
    confusion = ConfusionMatrix(dataset.num_classes, dataset.ignore_index, env.device)
    indices = range(env.rank, len(dataset), env.world_size)
    for index in tqdm(
        indices, desc="validate", disable=not (progress and env.is_main), leave=False
    ):
        image, mask = transform(*dataset[index])
        with autocast(env.device, precision):
            logits = model(image.unsqueeze(0).to(env.device))
        confusion.update(logits.argmax(1)[0], mask.to(env.device))
    confusion.reduce()
    model.train(was_training)
    return confusion
