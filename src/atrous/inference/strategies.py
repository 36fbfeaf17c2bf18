"""Inference strategies, composable: eval output stride, multi-scale inputs, flips and rotations
(test-time augmentation: left-right as the paper, up-down, the 8 symmetries of the square) and
sliding windows (paper §4.3, Tables 3 and 5: train at OS16, evaluate at OS8 with scales
0.5–1.75 and flips).

One function, :func:`segment`, turns a batch of normalised images into class probabilities at
the input's size (softmax over classes; with ``multilabel``, a sigmoid per class). Evaluation,
``atrous predict`` and the demo all call it, so they cannot drift apart. The network can be a
:class:`~atrous.models.DeepLab` or any callable from an (N, 3, h, w) float tensor to (N, C, h, w)
logits (an ONNX Runtime session, a compiled model).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F

from atrous.models.layers import check_output_stride, resize

#: The paper's multi-scale inputs (§4.3).
PAPER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

#: Test-time augmentations: the views of each input whose probabilities are averaged.
TTA = Literal["none", "hflip", "vflip", "hvflip", "d4"]

#: Each TTA's views as (quarter turns, mirrored first): a view is ``rot90(x.flip(-1) if
#: mirrored else x, turns)``. The up-down flip is a mirror turned twice; "hvflip" is the four
#: flips (identity, left-right, up-down, both = a half turn); "d4" adds the quarter turns and the
#: two transposes: the 8 symmetries of the square.
VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "hflip": ((0, False), (0, True)),
    "vflip": ((0, False), (2, True)),
    "hvflip": ((0, False), (0, True), (2, True), (2, False)),
    "d4": tuple((turns, mirrored) for mirrored in (False, True) for turns in range(4)),
}


class Network(Protocol):
    """What inference needs of a network: normalised (N, 3, H, W) images → (N, C, H, W) logits,
    and the output stride and corner convention its inputs are aligned to (``output_stride``
    None: unknown, run inputs as given). A DeepLab, an ONNX Runtime session
    (:class:`~atrous.export.onnx.OnnxNetwork`) and a fast network all are one."""

    output_stride: int | None
    align_corners: bool

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class InferenceConfig:
    """How to run a trained network on whole images; the default is one plain forward pass.

    ``flip`` is the older form of ``tta``: true adds the left-right mirror to ``tta``'s views
    (none → hflip, vflip → hvflip), so configs and command lines that set it run as before.
    """

    output_stride: int | None = None  # run at this OS (paper: train 16, eval 8); None: as built
    scales: tuple[float, ...] = (1.0,)  # input scales whose probabilities are averaged
    flip: bool = False  # also run the left-right mirrored input and average (tta "hflip")
    window: int | None = None  # sliding-window side in pixels; None: the whole image at once
    overlap: float = 1 / 3  # fraction of the window shared by neighbouring windows
    window_batch: int = 4  # windows per forward pass (bounds memory)
    align: bool = True  # pad whole images to OS·k+1 (as the official 513 crops) and cut back
    tta: TTA = "none"  # flips and rotations averaged (hflip, vflip, hvflip, d4: all 8)
    # Largest network input in pixels (at the largest scale); a larger image goes region by
    # region (atrous.inference.regions), so memory stays near one window's; None: never.
    max_pixels: int | None = 1025 * 1025

    def __post_init__(self) -> None:
        if self.tta not in VIEWS:
            raise ValueError(f"tta must be one of {', '.join(VIEWS)}, got {self.tta!r}")
        if self.output_stride is not None:
            check_output_stride(self.output_stride)
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive numbers, got {self.scales!r}")
        if self.window is not None and self.window < 16:
            raise ValueError(f"window must be at least 16 pixels, got {self.window}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.max_pixels is not None and self.max_pixels < 256:
            raise ValueError(f"max_pixels must be at least 256 (16×16), got {self.max_pixels}")
        if self.window_batch < 1:
            raise ValueError(f"window_batch must be at least 1, got {self.window_batch}")

    @property
    def passes(self) -> int:
        """Forward passes per image (before sliding windows)."""
        return len(self.scales) * len(self.views)

    @property
    def augmentation(self) -> str:
        """The TTA run: ``tta`` with the left-right mirror added when ``flip`` (the older
        option): none → hflip, vflip → hvflip; the others hold it already."""
        if self.flip:
            return {"none": "hflip", "vflip": "hvflip"}.get(self.tta, self.tta)
        return self.tta

    @property
    def views(self) -> tuple[tuple[int, bool], ...]:
        """The views of each input averaged, as (quarter turns, mirrored) (:data:`VIEWS`)."""
        return VIEWS[self.augmentation]


@contextlib.contextmanager
def output_stride(network: Network, stride: int | None) -> Iterator[None]:
    """Run ``network`` at ``stride`` inside the block, restoring its own stride after."""
    if stride is None:
        yield
        return
    if not hasattr(network, "set_output_stride"):
        raise ValueError("this network has a fixed output stride (it is not a DeepLab module)")
    previous = network.output_stride
    network.set_output_stride(stride)
    try:
        yield
    finally:
        network.set_output_stride(previous)


def probabilities(logits: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """Logits → probabilities in float32: softmax over the classes, or one sigmoid per class
    for multilabel models (classes that may overlap)."""
    logits = logits.float()
    return logits.sigmoid() if multilabel else logits.softmax(1)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering ``length`` pixels; the last one ends at the border."""
    if length <= window:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(count)})


def sliding_window(
    network: Network,
    images: torch.Tensor,
    window: int,
    overlap: float,
    window_batch: int,
    multilabel: bool = False,
) -> torch.Tensor:
    """Average the probabilities of overlapping ``window``×``window`` crops into (N, C, H, W).

    Images smaller than the window are padded with zeros (the mean pixel after normalisation)
    and the padding is cut off again. Memory: one (C, H, W) accumulator per image and
    ``window_batch`` windows at a time.
    """
    n, _, height, width = images.shape
    pad_h, pad_w = max(0, window - height), max(0, window - width)
    padded = F.pad(images, (0, pad_w, 0, pad_h))
    stride = max(1, int(window * (1 - overlap)))
    boxes = [
        (top, left)
        for top in window_starts(padded.shape[2], window, stride)
        for left in window_starts(padded.shape[3], window, stride)
    ]
    counts = torch.zeros(padded.shape[2:], device=images.device)
    total = torch.zeros(0)
    for first in range(0, len(boxes), window_batch):
        chunk = boxes[first : first + window_batch]
        crops = torch.cat([padded[..., t : t + window, s : s + window] for t, s in chunk])
        probs = probabilities(network(crops), multilabel)
        if first == 0:
            total = probs.new_zeros(n, probs.shape[1], *padded.shape[2:])
        for i, (top, left) in enumerate(chunk):
            total[..., top : top + window, left : left + window] += probs[i * n : (i + 1) * n]
            counts[top : top + window, left : left + window] += 1
    return (total / counts)[..., :height, :width]


def aligned_size(length: int, stride: int, align_corners: bool) -> int:
    """The smallest size >= ``length`` whose feature grids line up with the pixel grid:
    ``stride·k + 1`` when resizes align corners (the official 513 = 16·32 + 1), else
    ``stride·k``."""
    offset = 1 if align_corners else 0
    return max(stride + offset, math.ceil((length - offset) / stride) * stride + offset)


def align_input(network: Network, images: torch.Tensor) -> torch.Tensor:
    """Pad (bottom and right, with the mean pixel) to the network's aligned size.

    At other sizes every bilinear resize in the model shifts its output by a fraction of a
    feature cell, which costs accuracy at every boundary; the official evaluation pads each image
    to 513×513 for the same reason. Networks that do not state their output stride run as given.
    """
    stride = network.output_stride
    if stride is None:
        return images
    corners = network.align_corners
    height, width = images.shape[-2:]
    pad_h = aligned_size(height, stride, corners) - height
    pad_w = aligned_size(width, stride, corners) - width
    return F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images


def _probabilities(
    network: Network, images: torch.Tensor, config: InferenceConfig, multilabel: bool
) -> torch.Tensor:
    if config.window is not None:
        return sliding_window(
            network, images, config.window, config.overlap, config.window_batch, multilabel
        )
    height, width = images.shape[-2:]
    inputs = align_input(network, images) if config.align else images
    return probabilities(network(inputs)[..., :height, :width], multilabel)


def transform_view(images: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """One TTA view of (…, H, W) images: mirrored left-right, then turned ``turns`` quarter
    turns (odd turns swap H and W)."""
    images = images.flip(-1) if mirrored else images
    return torch.rot90(images, turns, (-2, -1)).contiguous() if turns else images


def restore_view(outputs: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """Undo :func:`transform_view` on per-pixel outputs (…, C, H', W') of a view."""
    outputs = torch.rot90(outputs, -turns, (-2, -1)) if turns else outputs
    return outputs.flip(-1) if mirrored else outputs


@torch.no_grad()
def segment(
    network: Network,
    images: torch.Tensor,
    config: InferenceConfig = InferenceConfig(),
    multilabel: bool = False,
) -> torch.Tensor:
    """(N, 3, H, W) normalised images → (N, C, H, W) class probabilities at the input size
    (per-class sigmoids for a ``multilabel`` network).

    Each scale resizes the input (bilinear, corners aligned as in the official code); each TTA
    view of it (``tta``: flips, quarter turns) runs whole (padded to its own aligned size, so a
    turned non-square view pads its swapped sides) or in windows; the probabilities, turned and
    flipped back and resized to the input, are averaged over all passes.
    """
    height, width = images.shape[-2:]
    total = torch.zeros(())
    with output_stride(network, config.output_stride):
        for scale in config.scales:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = images if size == (height, width) else resize(images, size)
            for turns, mirrored in config.views:
                view = transform_view(scaled, turns, mirrored)
                probs = _probabilities(network, view, config, multilabel)
                probs = restore_view(probs, turns, mirrored)
                if probs.shape[-2:] != (height, width):
                    probs = resize(probs, (height, width))
                total = total + probs
    return total / config.passes


def describe_inference(config: InferenceConfig, whole: str | None = None) -> str:
    """The evaluation protocol in words, to print beside every score (it changes the numbers);
    ``whole`` replaces the words on how whole images are fed (a published source's protocol)."""
    if whole is not None:
        how = whole
    elif config.window is not None:
        how = f"sliding {config.window}px windows, {config.overlap:.0%} overlap"
    else:
        how = "whole image" + (" padded to OS·k+1" if config.align else "")
    stride = f"OS{config.output_stride}" if config.output_stride else "model's OS"
    scales = ", ".join(f"{s:g}" for s in config.scales)
    views = config.augmentation
    if views in ("none", "hflip"):  # the paper's (and the published scores') words
        views = f"flip {'on' if views == 'hflip' else 'off'}"
    else:
        views = f"tta {views}"
    return f"{how}, {stride}, scales [{scales}], {views}"
