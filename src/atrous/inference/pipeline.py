"""A pipeline for folders of images: decode in worker processes, batch images of one size, write
results in background threads, so the network never waits on the disk or the PNG encoder.

    loader workers: read + normalise ─▶ main: batch by size ─▶ device: forward + argmax
                                                            ─▶ threads: PNG masks, overlays

Memory stays bounded: the loader holds ``workers × prefetch`` decoded images, the batcher at
most ``max_pending`` waiting for a partner of their size, and at most ``max_pending`` results
wait to be written.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from atrous.data.io import DataError, read_image
from atrous.inference.fast import normalise_images
from atrous.runtime.workers import loader_workers, worker_errors


@dataclass(frozen=True)
class PipelineConfig:
    """How many images run per forward pass and how many processes and threads feed it."""

    batch_size: int = 1  # images of one size per forward pass; on a GPU 4–16 (a CPU: 1 is fastest)
    workers: int = 2  # processes decoding and normalising images (0: in the main process)
    writers: int = 2  # threads encoding and writing the PNGs
    max_pending: int = 16  # images waiting for a batch partner, and results waiting to be written

    def __post_init__(self) -> None:
        for name in ("batch_size", "writers", "max_pending"):
            if getattr(self, name) < 1:
                raise ValueError(f"pipeline.{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"pipeline.workers must be 0 or more, got {self.workers}")


@dataclass
class Decoded:
    """One input after the loader: its position, the RGB image and its normalised tensor, or
    the reason it could not be read."""

    index: int
    image: np.ndarray | None
    tensor: torch.Tensor | None
    error: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.tensor.shape[-2:])


class ImageFiles(Dataset):
    """Image files decoded and normalised (as evaluation normalises) by loader workers; a file
    that cannot be read becomes a :class:`Decoded` with its error instead of stopping the run."""

    def __init__(self, files: Sequence[Path], mean: Sequence[float], std: Sequence[float]) -> None:
        self.files = list(files)
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Decoded:
        try:
            image = read_image(self.files[index])
        except DataError as error:
            return Decoded(index, None, None, str(error))
        return Decoded(index, image, normalise_images([image], self.mean, self.std)[0][0])


def _unbatched(item: Any) -> Any:
    return item


def decoded_items(dataset: Dataset, workers: int, prefetch: int = 2) -> Iterable[Any]:
    """``dataset``'s items in order, produced by ``workers`` processes (0: in this process); an
    error in a worker is raised here with its own message (:mod:`atrous.runtime.workers`)."""
    if workers == 0:
        return (dataset[i] for i in range(len(dataset)))
    loader = DataLoader(
        dataset,
        batch_size=None,
        collate_fn=_unbatched,
        prefetch_factor=prefetch,
        **loader_workers(workers),
    )
    return worker_errors(loader)


def batches_by_size(
    items: Iterable[Any], batch_size: int, size: Callable[[Any], Any], max_pending: int
) -> Iterator[list[Any]]:
    """Group ``items`` into lists of up to ``batch_size`` items of equal ``size(item)``.

    A group is yielded when full; when ``max_pending`` items wait in unfinished groups, the
    oldest group goes as it is (an image with no partner of its size runs alone). The rest
    follows at the end. Every item is yielded exactly once.
    """
    pending: dict[Any, list[Any]] = collections.OrderedDict()
    waiting = 0
    for item in items:
        group = pending.setdefault(size(item), [])
        group.append(item)
        waiting += 1
        if len(group) == batch_size:
            waiting -= len(pending.pop(size(item)))
            yield group
        elif waiting >= max_pending:
            _, oldest = pending.popitem(last=False)
            waiting -= len(oldest)
            yield oldest
    yield from pending.values()


class BackgroundWriter:
    """Runs write jobs in a thread pool; at most ``max_pending`` wait, so memory is bounded.
    ``results`` collects the jobs' return values in submission order; a job that raised
    re-raises in :meth:`submit` or :meth:`close`."""

    def __init__(self, threads: int, max_pending: int) -> None:
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="atrous-write")
        self.pending: collections.deque[Future] = collections.deque()
        self.max_pending = max(1, max_pending)
        self.results: list[Any] = []

    def submit(self, job: Callable[..., Any], *args: Any) -> None:
        while len(self.pending) >= self.max_pending:
            self.results.append(self.pending.popleft().result())
        self.pending.append(self.pool.submit(job, *args))

    def close(self) -> None:
        try:
            while self.pending:
                self.results.append(self.pending.popleft().result())
        finally:
            self.pool.shutdown(wait=True)

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
