"""Colouring label maps: palette PNGs and overlays on the image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def palette_image(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """An (H, W) label map as a palette ('P') PNG image: indices kept, colours from ``palette``."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [channel for colour in palette for channel in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


def colorize(
    mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255
) -> np.ndarray:
    """(H, W) labels → (H, W, 3) uint8 colours; the ignore label is white."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    table[ignore_index] = 255
    return table[mask.astype(np.uint8)]


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    background: int | None = 0,
) -> np.ndarray:
    """Blend label colours over an (H, W, 3) uint8 image; the ``background`` class stays clear.

    Blended a band of rows at a time (about a megapixel), so a 25-megapixel photo needs tens of
    megabytes of float scratch rather than gigabytes."""
    blended = np.empty_like(image)
    step = max(1, 2**20 // max(1, image.shape[1]))
    for top in range(0, image.shape[0], step):
        rows = slice(top, top + step)
        colours = colorize(mask[rows], palette).astype(np.float32)
        clear = (mask[rows] == background)[..., None] if background is not None else False
        weight = np.where(clear, 0.0, alpha)
        band = image[rows].astype(np.float32) * (1 - weight) + colours * weight
        blended[rows] = band.round().astype(np.uint8)
    return blended


def overlay_multilabel(
    image: np.ndarray, masks: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> np.ndarray:
    """Blend the mean colour of every class present at a pixel ((K, H, W) 0/1 ``masks``, classes
    that may overlap) over an (H, W, 3) uint8 image; pixels of no class stay clear."""
    present = masks.astype(np.float32)
    count = present.sum(0)
    colours = np.einsum("khw,kc->hwc", present, np.asarray(palette, np.float32)[: len(masks)])
    colours /= np.maximum(count, 1)[..., None]
    weight = np.where(count > 0, alpha, 0.0)[..., None]
    return (image.astype(np.float32) * (1 - weight) + colours * weight).round().astype(np.uint8)
