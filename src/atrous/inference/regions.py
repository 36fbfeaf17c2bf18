"""Images larger than one window, region by region: the same strategy in bounded memory.

A network's activations grow with its input: a 5000×5000 photo through a half-width
MobileNetV2 held 13 GB at once. When the largest network input (the image at its largest
scale) would exceed ``InferenceConfig.max_pixels``, :func:`segment_labels` and
:func:`segment_regions` cut the image into square regions instead:

- a region's side is the window (``window``, else the largest OS·k+1 square within
  ``max_pixels``) divided by the largest scale, so no network input exceeds the window;
- neighbouring regions share ``overlap`` of it, and each pixel takes its values from the one
  region whose core holds it, at least half the overlap from that region's edges (context the
  network sees around it); nothing is averaged, so no buffer of the image's size is needed;
- each region runs the whole strategy (:func:`~atrous.inference.strategies.segment`: output
  stride, scales, flips), so multi-scale is windowed too;
- region offsets are multiples of the output stride, so feature grids line up with the whole
  image's: away from region edges the probabilities equal whole-image inference within float
  tolerance, except where image pooling (global in most models) matters, as it pools a region
  instead of the whole image (as in training, on crops).

Memory: one region's activations and probabilities at a time, the image, and the outputs:
labels (uint8) and the maps asked for (float16) with :func:`segment_labels`, (N, C, H, W)
probabilities with :func:`segment_regions`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from atrous.inference.strategies import InferenceConfig, Network, segment

#: Per-pixel maps that can be computed beside the labels.
MapName = Literal["confidence", "entropy"]
MAPS: tuple[MapName, ...] = ("confidence", "entropy")


@dataclass
class Decision:
    """What inference decided per pixel: ``labels`` (N, H, W) uint8 class indices (multilabel:
    (N, C, H, W) 0/1) and the ``maps`` asked for, float16 of the labels' shape: ``confidence``
    (the chosen class's probability; multilabel: max(p, 1 − p) per class) and ``entropy`` (of
    the class distribution, in nats; multilabel: each class's binary entropy)."""

    labels: torch.Tensor
    maps: dict[str, torch.Tensor] = field(default_factory=dict)


def decide(
    probabilities: torch.Tensor, multilabel: bool = False, maps: Sequence[MapName] = ()
) -> Decision:
    """(N, C, H, W) probabilities → labels and the per-pixel ``maps`` asked for, all from the
    same probabilities (after scales, flips and windows)."""
    unknown = set(maps) - set(MAPS)
    if unknown:
        raise ValueError(f"unknown maps {sorted(unknown)}; choose from {list(MAPS)}")
    p = probabilities.float()
    labels = p > 0.5 if multilabel else p.argmax(1)
    return Decision(labels.to(torch.uint8), {name: _map(p, name, multilabel) for name in maps})


def _map(p: torch.Tensor, name: MapName, multilabel: bool) -> torch.Tensor:
    """One per-pixel map of float32 probabilities ``p``, as float16."""
    if name == "confidence":
        value = torch.maximum(p, 1 - p) if multilabel else p.amax(1)
    elif multilabel:  # each class's binary entropy
        value = -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))
    else:
        value = -torch.special.xlogy(p, p).sum(1)
    return value.to(torch.float16)


@dataclass(frozen=True)
class Region:
    """One region: the crop the network sees (``rows``, ``cols`` of the image) and the core it
    decides (``core_rows``, ``core_cols`` of the image; ``inner`` gives them in the crop)."""

    rows: slice
    cols: slice
    core_rows: slice
    core_cols: slice

    @property
    def inner(self) -> tuple[slice, slice]:
        """The core in the crop's coordinates."""
        top, left = self.rows.start, self.cols.start
        return (
            slice(self.core_rows.start - top, self.core_rows.stop - top),
            slice(self.core_cols.start - left, self.core_cols.stop - left),
        )


def spans(length: int, side: int, margin: int, grid: int) -> list[tuple[slice, slice]]:
    """(crop, core) along one axis: cores split ``length`` evenly; each crop, at most ``side``
    long, starts on a multiple of ``grid`` and reaches at least ``margin`` past its core on
    both sides (except at the image's edges)."""
    if length <= side:
        return [(slice(0, length), slice(0, length))]
    core = side - 2 * margin - (grid - 1)
    if core < 1:
        raise ValueError(
            f"a {side}px window leaves no core with {margin}px margins on a {grid}px grid: "
            "raise the window or max_pixels, or lower the overlap"
        )
    count = math.ceil(length / core)
    bounds = [round(i * length / count) for i in range(count + 1)]
    result = []
    for start, stop in itertools.pairwise(bounds):
        crop = max(0, start - margin) // grid * grid
        result.append((slice(crop, min(crop + side, length)), slice(start, stop)))
    return result


def region_side(network: Network, config: InferenceConfig) -> int:
    """The side of a region in image pixels: the window (``window``, else the largest square
    within ``max_pixels``) divided by the largest scale, rounded down to an aligned size."""
    window = config.window or math.isqrt(config.max_pixels or 0)
    side = int(window / max(1.0, *config.scales))
    stride = config.output_stride or network.output_stride
    if stride is None:
        return max(16, side)
    offset = 1 if network.align_corners else 0
    return max(stride + offset, (side - offset) // stride * stride + offset)


def scale_period(scales: Sequence[float], largest: int = 8) -> int:
    """The smallest q ≤ ``largest`` with every ``scale × q`` whole (4 for the paper's quarter
    scales), else 1: a crop offset by a multiple of OS·q starts on the feature grid of the
    whole image at every scale, which keeps multi-scale regions equal to the whole image's."""
    for q in range(1, largest + 1):
        if all(abs(s * q - round(s * q)) < 1e-6 for s in scales):
            return q
    return 1


def needs_regions(images: torch.Tensor, config: InferenceConfig) -> bool:
    """Whether the largest network input of ``images`` would exceed ``config.max_pixels``."""
    if config.max_pixels is None:
        return False
    height, width = images.shape[-2:]
    return height * width * max(1.0, *config.scales) ** 2 > config.max_pixels


def regions(network: Network, height: int, width: int, config: InferenceConfig) -> list[Region]:
    """The regions covering a ``height``×``width`` image under ``config``, in reading order."""
    side = region_side(network, config)
    margin = round(side * config.overlap / 2)
    stride = config.output_stride or network.output_stride or 32
    grid = stride * scale_period(config.scales)
    if side - 2 * margin - grid < 0:  # a small window: keep a core, align at scale 1 only
        grid = stride
    return [
        Region(rows, cols, core_rows, core_cols)
        for rows, core_rows in spans(height, side, margin, grid)
        for cols, core_cols in spans(width, side, margin, grid)
    ]


def region_probabilities(
    network: Network, images: torch.Tensor, config: InferenceConfig, multilabel: bool = False
) -> Iterator[tuple[Region, torch.Tensor]]:
    """Each region with the (N, C, h, w) probabilities of its core, one region at a time."""
    whole = dataclasses.replace(config, window=None, max_pixels=None)
    for region in regions(network, *images.shape[-2:], config):
        crop = images[..., region.rows, region.cols]
        rows, cols = region.inner
        yield region, segment(network, crop, whole, multilabel)[..., rows, cols]


@torch.no_grad()
def segment_regions(
    network: Network,
    images: torch.Tensor,
    config: InferenceConfig = InferenceConfig(),  # noqa: B008
    multilabel: bool = False,
) -> torch.Tensor:
    """:func:`~atrous.inference.strategies.segment` (N, C, H, W probabilities) with the
    network's activations bounded: region by region above ``config.max_pixels``."""
    if not needs_regions(images, config):
        return segment(network, images, config, multilabel)
    total = torch.empty(0)
    for index, (region, probs) in enumerate(
        region_probabilities(network, images, config, multilabel)
    ):
        if index == 0:
            total = probs.new_empty(*probs.shape[:2], *images.shape[-2:])
        total[..., region.core_rows, region.core_cols] = probs
    return total


@torch.no_grad()
def segment_labels(
    network: Network,
    images: torch.Tensor,
    config: InferenceConfig = InferenceConfig(),  # noqa: B008
    multilabel: bool = False,
    maps: Sequence[MapName] = (),
) -> Decision:
    """(N, 3, H, W) normalised images → their :class:`Decision` (labels and ``maps``), region by
    region above ``config.max_pixels``: no (N, C, H, W) buffer is ever held for large images."""
    if not needs_regions(images, config):
        return decide(segment(network, images, config, multilabel), multilabel, maps)
    result = Decision(torch.empty(0))
    for index, (region, probs) in enumerate(
        region_probabilities(network, images, config, multilabel)
    ):
        part = decide(probs, multilabel, maps)
        if index == 0:
            shape = (*part.labels.shape[:-2], *images.shape[-2:])
            result = Decision(
                part.labels.new_empty(shape),
                {name: value.new_empty(shape) for name, value in part.maps.items()},
            )
        target = (..., region.core_rows, region.core_cols)
        result.labels[target] = part.labels
        for name, value in part.maps.items():
            result.maps[name][target] = value
    return result
