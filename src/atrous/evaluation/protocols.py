"""Evaluation protocols: atrous's own and each published source's, so that a measured mIoU can
be set beside a published one like for like.

- ``atrous`` (the default): every image whole at its own size, padded only to the network's
  aligned size (OS·k+1) and cut back; image pooling as the model was built. No padding bias.
- ``tf`` (the official DeepLab eval, ``eval.py`` + ``input_preprocess.py``): ADE20K is first
  resized so that its longest side is 513 (``min_resize_value = max_resize_value = 513``,
  ``resize_factor = 16``: each side then rounded up to 16·k+1); every image is padded at the
  bottom/right to a fixed canvas (513×513 for VOC and ADE20K, 1025×2049 for Cityscapes) with
  the mean pixel, its label with the ignore value; image pooling averages over the whole padded
  canvas (at every scale); the score is taken on the padded label (the padding is ignored).
  Scales resize the canvas to ``int((size - 1)·s + 1)`` with aligned corners, logits go back to
  the canvas before the softmax.
- ``torchvision`` (its ``SemanticSegmentation`` preset and reference eval): the shorter side is
  resized to 520 (bilinear, antialiased, uint8), the label with nearest neighbours to the same
  size, and the score is taken there.
- ``mmseg`` (its test pipeline, ``mode='whole'``): each image is rescaled, keeping its aspect
  ratio, to fit the test scale (2048×512 for VOC and ADE20K, 2048×1024 for Cityscapes; scales
  multiply both), the logits are resized back to the original size (bilinear, half-pixel) before
  the softmax, and the score is taken on the original label.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from atrous.inference.regions import segment_regions
from atrous.inference.strategies import (
    InferenceConfig,
    Network,
    output_stride,
    probabilities,
    restore_view,
    transform_view,
)
from atrous.models.layers import ImagePool

#: ``atrous evaluate --protocol``: atrous's own, or the one the source's figures were made with.
ProtocolName = Literal["atrous", "official"]
Source = Literal["atrous", "tf", "torchvision", "mmseg"]
#: Official TF evaluation canvases, and the ADE20K resize's rounding factor (its longest side
#: is the canvas's).
TF_CANVAS, TF_CITYSCAPES_CANVAS = (513, 513), (1025, 2049)
TF_ADE20K_FACTOR = 16
#: torchvision's ``SemanticSegmentation(resize_size=520)`` and mmsegmentation's test scales.
TORCHVISION_SHORT_SIDE = 520
MMSEG_SCALE, MMSEG_CITYSCAPES_SCALE = (2048, 512), (2048, 1024)


@dataclass(frozen=True)
class EvalProtocol:
    """How images become the network's inputs and at which size the score is taken."""

    source: Source = "atrous"
    canvas: tuple[int, int] | None = None  # tf: pad every image to it (mean pixel, ignore)
    resize_range: int | None = None  # tf ADE20K: min = max resize value (longest side)
    resize_factor: int | None = None  # tf ADE20K: sides rounded up to factor·k+1
    short_side: int | None = None  # torchvision: resize the shorter side to this
    test_scale: tuple[int, int] | None = None  # mmseg: (long, short) bound, aspect kept

    def describe(self) -> str:
        """The protocol in words, to print beside every score."""
        if self.source == "tf":
            resize = ""
            if self.resize_range:
                resize = f"longest side {self.resize_range} (sides {self.resize_factor}·k+1), "
            h, w = self.canvas or (0, 0)
            return (
                f"official TF: {resize}padded to {h}×{w} (mean pixel; label ignore), "
                "image pooling over the padded canvas"
            )
        if self.source == "torchvision":
            return f"torchvision: shorter side resized to {self.short_side}, scored there"
        if self.source == "mmseg":
            long, short = self.test_scale or (0, 0)
            return f"mmseg: rescaled to fit {long}×{short} (whole), scored at the original size"
        return "atrous: each image at its own size"


ATROUS = EvalProtocol()


def official_protocol(
    kind: str, dataset: str | None, crop: tuple[int, int] | None = None
) -> EvalProtocol:
    """The protocol a source's published figures were measured with (``kind``: a registry
    entry's source: tf, transformers (the official checkpoint), torchvision, mmseg). ``crop``:
    a TF checkpoint's own evaluation crop where it is not its dataset's usual one (the ADE20K
    MobileNetV2 is evaluated at 257×257, its images resized to 257)."""
    cityscapes = dataset == "cityscapes"
    if kind in ("tf", "transformers"):
        canvas = crop or (TF_CITYSCAPES_CANVAS if cityscapes else TF_CANVAS)
        if dataset == "ade20k":
            return EvalProtocol("tf", canvas, max(canvas), TF_ADE20K_FACTOR)
        return EvalProtocol("tf", canvas)
    if kind == "torchvision":
        return EvalProtocol("torchvision", short_side=TORCHVISION_SHORT_SIDE)
    if kind == "mmseg":
        return EvalProtocol(
            "mmseg", test_scale=MMSEG_CITYSCAPES_SCALE if cityscapes else MMSEG_SCALE
        )
    raise ValueError(f"no official protocol is known for {kind!r} checkpoints")


def tf_resize_to_range(height: int, width: int, size: int, factor: int) -> tuple[int, int]:
    """The official ``resize_to_range`` with ``min_size = max_size = size`` (float32 as TF):
    the longest side becomes ``size`` (lowered to factor·k+1), each side rounded up to
    factor·k+1."""
    limit = np.float32(size - (size - 1) % factor)
    h, w = np.float32(height), np.float32(width)
    large = np.float32(size) / min(h, w)
    new = [int(np.floor(h * large)), int(np.floor(w * large))]
    if max(new) > limit:
        small = limit / max(h, w)
        new = [int(np.floor(h * small)), int(np.floor(w * small))]
    return tuple(n + (factor - (n - 1) % factor) % factor for n in new)  # type: ignore[return-value]


def torchvision_size(height: int, width: int, short: int) -> tuple[int, int]:
    """torchvision's ``resize(img, [short])``: the shorter side to ``short``, the longer one
    truncated in proportion."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def mmseg_size(
    height: int, width: int, scale: Sequence[int], ratio: float = 1.0
) -> tuple[int, int]:
    """mmsegmentation's keep-ratio ``Resize``: the largest size fitting ``scale`` (long, short)
    times ``ratio``, rounded half up as ``mmcv.rescale_size``."""
    long, short = (int(s * ratio) for s in scale)
    factor = min(max(long, short) / max(height, width), min(long, short) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def tf_scaled_size(length: int, scale: float) -> int:
    """The official ``scale_dimension``: ``int((length - 1)·scale + 1)``."""
    return int((float(length) - 1.0) * scale + 1.0)


def tf_resize_label(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF's nearest-neighbour resize with aligned corners (source index rounded half up)."""
    rows, cols = (
        torch.clamp(torch.floor(torch.arange(n) * ((m - 1) / max(n - 1, 1)) + 0.5).long(), 0, m - 1)
        for n, m in zip(size, mask.shape[-2:], strict=True)
    )
    return mask[..., rows[:, None], cols[None, :]]


def tf_resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF's bilinear resize with aligned corners of a (C, H, W) float image."""
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=True)[0]


def _uint8_resize(image: torch.Tensor, size: tuple[int, int], antialias: bool) -> torch.Tensor:
    """Bilinear (half-pixel) resize of a (3, H, W) uint8 image, rounded back to uint8."""
    resized = F.interpolate(
        image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=antialias
    )[0]
    return resized.round().clamp(0, 255).to(torch.uint8)


def _normalise(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (or [0, 1] float) (C, H, W) image → float normalised with (mean, std)."""
    pixels = image.float() / 255 if image.dtype == torch.uint8 else image.float()
    shape = (-1, 1, 1)
    return (pixels - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def _tf_canvas(
    image: torch.Tensor, mask: torch.Tensor, protocol: EvalProtocol, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official eval's input: resized to range (ADE20K), then padded at the bottom/right to
    the canvas; 0 after normalisation is the mean pixel, the label's padding is ignored."""
    if protocol.resize_range and protocol.resize_factor:
        size = tf_resize_to_range(*image.shape[-2:], protocol.resize_range, protocol.resize_factor)
        image, mask = tf_resize_image(image, size), tf_resize_label(mask, size)
    (height, width), (top, side) = image.shape[-2:], protocol.canvas or image.shape[-2:]
    if height > top or width > side:
        raise ValueError(
            f"a {height}×{width} image does not fit the official {top}×{side} evaluation canvas; "
            "evaluate it with --protocol atrous (any size)"
        )
    pad = (0, side - width, 0, top - height)
    return F.pad(image, pad), F.pad(mask, pad, value=ignore_index)


def prepare_pair(
    image: torch.Tensor,
    mask: torch.Tensor,
    protocol: EvalProtocol,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One evaluation pair under ``protocol``: the network's normalised (C, h, w) input and the
    label map the score is taken on (torchvision: both resized; tf: both on the canvas; mmseg
    and atrous: as stored, the network's input is resized later)."""
    if protocol.source == "torchvision" and protocol.short_side:
        size = torchvision_size(*image.shape[-2:], protocol.short_side)
        if image.dtype == torch.uint8:
            image = _uint8_resize(image, size, antialias=True)
        else:
            image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]
        labels = mask.reshape(1, -1, *mask.shape[-2:]).float()
        mask = (
            F.interpolate(labels, size=size, mode="nearest-exact")
            .long()
            .reshape(*mask.shape[:-2], *size)
        )
    normalised = _normalise(image, mean, std)
    if protocol.source == "tf":
        return _tf_canvas(normalised, mask, protocol, ignore_index)
    return normalised, mask


@contextlib.contextmanager
def whole_canvas_pooling(network: Network) -> Iterator[None]:
    """Inside the block, ASPP image pooling averages over the whole input (the official eval
    passes no pooling crop, so it pools globally over the padded canvas at every scale)."""
    if not isinstance(network, nn.Module):
        raise ValueError(
            "the official TF protocol changes the model's image pooling; evaluate the model "
            "folder or published name, not an exported or compiled network"
        )
    pools = [module for module in network.modules() if isinstance(module, ImagePool)]
    kernels = [pool.kernel_size for pool in pools]
    for pool in pools:
        pool.kernel_size = None
    try:
        yield
    finally:
        for pool, kernel in zip(pools, kernels, strict=True):
            pool.kernel_size = kernel


def _scaled_input(images: torch.Tensor, protocol: EvalProtocol, scale: float) -> torch.Tensor:
    height, width = images.shape[-2:]
    if protocol.source == "tf":
        size = (tf_scaled_size(height, scale), tf_scaled_size(width, scale))
        if size == (height, width):
            return images
        return F.interpolate(images, size=size, mode="bilinear", align_corners=True)
    size = mmseg_size(height, width, protocol.test_scale or (width, height), scale)
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def protocol_probabilities(
    network: Network,
    images: torch.Tensor,
    protocol: EvalProtocol,
    config: InferenceConfig = InferenceConfig(),  # noqa: B008
    multilabel: bool = False,
) -> torch.Tensor:
    """(N, C, h, w) class probabilities at the prepared images' size under ``protocol``
    (scales and TTA views from ``config``; tf and mmseg resize logits back before the softmax)."""
    if protocol.source == "atrous":  # region by region above config.max_pixels
        return segment_regions(network, images, config, multilabel)
    if protocol.source == "torchvision":  # any size as given, no padding
        return segment_regions(network, images, replace(config, align=False), multilabel)
    if config.window is not None:
        raise ValueError(f"the official {protocol.source} protocol runs whole images, no window")
    size, corners = images.shape[-2:], protocol.source == "tf"
    pooling = whole_canvas_pooling(network) if corners else contextlib.nullcontext()
    total = torch.zeros(())
    with output_stride(network, config.output_stride), pooling:
        for scale in config.scales:
            scaled = _scaled_input(images, protocol, scale)
            for turns, mirrored in config.views:
                logits = network(transform_view(scaled, turns, mirrored))
                logits = restore_view(logits, turns, mirrored)
                if logits.shape[-2:] != size:
                    logits = F.interpolate(
                        logits.float(), size=size, mode="bilinear", align_corners=corners
                    )
                total = total + probabilities(logits, multilabel)
    return total / config.passes
