"""Training order that is a pure function of (seed, epoch) and can restart mid-epoch.

Each epoch is a seeded permutation, consumed in global micro-batches of ``batch_size ×
num_replicas`` samples; process r takes the r-th slice of each. The union over processes of one
step is therefore the same samples whatever the number of processes, and a resumed run continues
at the exact sample where it stopped. Items are ``(epoch, index)`` so that augmentation can be
seeded per sample (:class:`AugmentedSamples`), independent of workers and restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` for this process, ``batches_per_epoch × batch_size`` per epoch."""

    def __init__(
        self, length: int, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        if length < batch_size * num_replicas:
            raise ValueError(
                f"the dataset has {length} samples, fewer than one global batch "
                f"({batch_size} × {num_replicas} processes)"
            )
        self.length, self.batch_size = length, batch_size
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.length // (self.batch_size * self.num_replicas)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        """Start the next iteration at ``epoch``, skipping its first ``start_batch`` batches."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        step = self.batch_size * self.num_replicas
        for batch in range(self.start_batch, self.batches_per_epoch):
            start = batch * step + self.rank * self.batch_size
            for index in order[start : start + self.batch_size]:
                yield self.epoch, index


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct 63-bit seed for each (seed, epoch, sample)."""
    return (seed * 1_000_003 + epoch * 10_000_019 + index * 7_919) % (2**63)


class AugmentedSamples(Dataset):
    """``dataset[index]`` through ``transform``, with the RNG seeded from (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, transform: Callable[..., Any], seed: int = 0) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.transform(*self.dataset[index])
