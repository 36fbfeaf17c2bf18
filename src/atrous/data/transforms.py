"""Joint image/mask transforms on torchvision ``transforms.v2`` (paper §4: the training recipe).

Training: random scale (0.5–2.0 in steps of 0.25), pad with the mean pixel and the ignore label
up to the crop, random crop, left-right flip, optional photometric jitter, normalisation. Masks
are always resized with nearest neighbour (v2 does this for ``tv_tensors.Mask``), (H, W) class
masks and (K, H, W) multilabel masks alike.

Images are uint8 RGB, or float32 on [0, 1] with any other number of bands (``mean``/``std`` of
that length: one per band); the photometric jitter is for RGB only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from atrous.data.base import IGNORE_INDEX


class RandomScale(v2.Transform):
    """Resize by a factor drawn from {min, min+step, …, max} (official ``random_scale``).

    ``step=0`` draws the factor uniformly from [min, max].
    """

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0, step: float = 0.25) -> None:
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        if step < 0:
            raise ValueError(f"scale step must be >= 0, got {step}")
        self.min_scale, self.max_scale, self.step = min_scale, max_scale, step

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if self.step > 0:
            count = round((self.max_scale - self.min_scale) / self.step) + 1
            scale = self.min_scale + self.step * int(torch.randint(count, ()).item())
        else:
            scale = self.min_scale + (self.max_scale - self.min_scale) * torch.rand(()).item()
        height, width = v2.query_size(flat_inputs)
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.resize(inpt, params["size"], antialias=True)


def training_transform(
    crop_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    scale_range: tuple[float, float] = (0.5, 2.0),
    scale_step: float = 0.25,
    flip: bool = True,
    color_jitter: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> v2.Compose:
    """The paper's training augmentation for (Image, Mask) pairs → (normalised float, int64).

    ``len(mean)`` is the number of image bands: 3 for uint8 RGB (padded with the mean pixel in
    0–255), any other for float images (padded with ``mean`` itself).
    """
    crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    rgb = len(mean) == 3
    if color_jitter > 0 and not rgb:
        raise ValueError(
            f"color_jitter works on RGB images; set data.color_jitter to 0 for {len(mean)}-band "
            "inputs"
        )
    mean_pixel = [round(255 * m) for m in mean] if rgb else [float(m) for m in mean]
    steps: list[v2.Transform] = []
    if scale_range != (1.0, 1.0):
        steps.append(RandomScale(scale_range[0], scale_range[1], scale_step))
    steps.append(
        v2.RandomCrop(
            crop,
            pad_if_needed=True,
            fill={tv_tensors.Image: mean_pixel, tv_tensors.Mask: ignore_index},
        )
    )
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if color_jitter > 0:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter, color_jitter / 4))
    steps.append(normalisation(mean, std))
    return v2.Compose(steps)


def normalisation(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """uint8 image → float normalised with (mean, std) on [0, 1] (float images are on [0, 1]
    already and only normalised); mask → int64. No resizing."""
    return v2.Compose(
        [
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
