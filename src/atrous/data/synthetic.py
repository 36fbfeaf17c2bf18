"""Procedural scenes: a built-in segmentation dataset that needs no download.

Each scene is a pure function of ``(seed, index)``. Five object classes differ in shape; each has
its own hue range, and neighbouring ranges overlap (as do the background's colours), so colour
narrows a pixel down but shape and context decide. Objects come in sizes from a few pixels to more
than half the image (so multi-scale context matters), carry textures (solid, stripes, checks,
speckle), occlude each other, and one class is thin (strokes a few pixels wide). The background is
a smooth, less saturated colour field with grain.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import numpy as np

from atrous.data.base import SegmentationDataset

CLASSES = ("background", "disc", "box", "triangle", "ring", "stroke")
PALETTE = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
)


#: Hue spread around each object class's centre; centres are 72° apart, so ranges overlap.
HUE_SPREAD = 38.0 / 360.0
#: Hue centre of each object class, in fifths of the colour wheel. Classes with similar shapes
#: (disc and ring, box and triangle, box and stroke) are not hue neighbours, so where two hue
#: ranges overlap, shape tells the classes apart.
HUE_CENTRES = {1: 0, 2: 1, 4: 2, 3: 3, 5: 4}


def _class_colours(rng: np.random.Generator, label: int) -> np.ndarray:
    """Two RGB colours (0–255) of one hue drawn from the class's range: texture ink and paper."""
    hue = (HUE_CENTRES[label] / 5 + rng.uniform(-HUE_SPREAD, HUE_SPREAD)) % 1.0
    saturation = rng.uniform(0.5, 1.0)
    value = rng.uniform(0.55, 1.0)
    second = value * rng.uniform(0.35, 0.75)
    return 255.0 * np.array(
        [colorsys.hsv_to_rgb(hue, saturation, value), colorsys.hsv_to_rgb(hue, saturation, second)]
    )


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour field of any hue, mostly less saturated than objects, in 0–255."""
    field = _smooth_field(rng, size, int(rng.integers(2, 6)), 3)
    grey = field.mean(axis=2, keepdims=True)
    saturation = rng.uniform(0.05, 0.55)
    return (255.0 * (grey + saturation * (field - grey))).astype(np.float32)


def _smooth_field(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """A smooth random field in [0, 1]: a coarse random grid, bilinearly upsampled."""
    coarse = rng.random((cells + 1, cells + 1, channels))
    t = np.linspace(0, cells, size)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = (t - i0)[:, None]
    rows = coarse[i0] * (1 - f[..., None]) + coarse[i0 + 1] * f[..., None]  # (size, cells+1, C)
    cols = rows[:, i0] * (1 - f[None, :, :]) + rows[:, i0 + 1] * f[None, :, :]
    return cols


def _texture(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A texture value in [0, 1] per pixel, in the object's own coordinates."""
    kind = rng.integers(4)
    if kind == 0:  # solid
        return np.zeros_like(u)
    period = rng.uniform(3.0, 9.0)
    if kind == 1:  # stripes
        return (np.floor(u / period) % 2).astype(np.float32)
    if kind == 2:  # checks
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    return rng.random(u.shape).astype(np.float32)  # speckle


def _shape(rng: np.random.Generator, label: int, size: int) -> tuple[float, Callable]:
    """Draw one object of class ``label``: its extent from the centre in pixels, and a function
    from rotated coordinates (u, v) to the boolean mask."""
    if label == 5:  # stroke: long and thin
        half_length = rng.uniform(0.15, 0.45) * size
        half_width = rng.uniform(4.5, 6.0)
        return (
            half_length + half_width,
            lambda u, v: (np.abs(u) <= half_length) & (np.abs(v) <= half_width),
        )
    a = size * np.exp(rng.uniform(np.log(0.11), np.log(0.4)))
    b = a * rng.uniform(0.6, 1.0)
    if label == 1:  # disc (ellipse)
        return a, lambda u, v: (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if label == 2:  # box (rotated rectangle)
        return 1.5 * a, lambda u, v: (np.abs(u) <= a) & (np.abs(v) <= b)
    if label == 3:  # triangle: three half-planes at distance a/2 (circumradius a)
        normals = [(np.cos(t), np.sin(t)) for t in np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
        return a, lambda u, v: np.logical_and.reduce([u * c + v * s <= a / 2 for c, s in normals])
    hole = rng.uniform(0.15, 0.3)  # ring: an annulus, a disc with a hole
    return (
        a,
        lambda u, v: ((u / a) ** 2 + (v / b) ** 2 <= 1.0) & ((u / a) ** 2 + (v / b) ** 2 >= hole),
    )


def render_scene(seed: int, index: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Scene ``index`` of the set drawn with ``seed``: (H, W, 3) uint8 image, (H, W) uint8 mask."""
    rng = np.random.default_rng([seed, index])
    image = _background(rng, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        label = int(rng.integers(1, len(CLASSES)))
        cy, cx = rng.uniform(0, size, 2)
        angle = rng.uniform(0, np.pi)
        extent, inside_of = _shape(rng, label, size)
        # Work on the object's bounding window only.
        y0, y1 = max(0, int(cy - extent)), min(size, int(cy + extent) + 2)
        x0, x1 = max(0, int(cx - extent)), min(size, int(cx + extent) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        inside = inside_of(u, v)
        if not inside.any():
            continue
        colours = _class_colours(rng, label)
        t = _texture(rng, u, v)[inside][:, None]
        image[y0:y1, x0:x1][inside] = colours[0] * (1 - t) + colours[1] * t
        mask[y0:y1, x0:x1][inside] = label
    image += rng.uniform(2.0, 10.0) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), mask


class SyntheticScenes(SegmentationDataset):
    """``length`` procedural scenes of ``size``×``size`` pixels, generated on access.

    Use different seeds for training and validation splits.
    """

    classes = CLASSES
    palette = PALETTE

    def __init__(self, length: int = 1000, size: int = 128, seed: int = 0) -> None:
        if length < 1 or size < 16:
            raise ValueError(f"need length >= 1 and size >= 16, got length={length}, size={size}")
        self.length = length
        self.size = size
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def name(self, index: int) -> str:
        return f"scene_{self.seed}_{index:05d}"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(f"scene index {index} out of range for {self.length} scenes")
        return render_scene(self.seed, index, self.size)
