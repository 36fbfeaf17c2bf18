"""Modified aligned Xception-41/65/71 (paper §3.2, Fig. 4; official ``core/xception.py``).

Changes from Xception that the paper makes: a deeper middle flow (16 units), every max pooling
replaced by a strided separable conv (so atrous conv can replace it at any output stride), and BN
after every depthwise conv. As in the official code, entry- and middle-flow units put a ReLU
*before* each separable conv (ReLU → depthwise → BN → pointwise → BN), and only the last exit unit
puts the ReLUs inside (depthwise → BN → ReLU → pointwise → BN → ReLU). BN eps is 1e-3.

Module order and parameter shapes follow timm's ``xception41``/``xception65``/``xception71`` (ports
of the official ImageNet checkpoints) one to one, so their weights can be mapped in. The variants
differ in the entry flow (X-71: five blocks) and the middle flow's length (X-41: 8 units, else 16).

The ``aux`` feature is the middle flow's output (728 channels, stride 16; 8 at OS8), the last
stage before the exit flow's stride-32 unit, as ResNet's ``layer3`` is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atrous.models.backbones.base import Backbone, StridedUnit
from atrous.models.layers import ConvBNReLU, SeparableConv2d

BN_EPS = 1e-3


@dataclass(frozen=True)
class UnitSpec:
    """One Xception unit: three separable convs, the third strided (official ``xception_block``)."""

    in_channels: int
    channels: tuple[int, int, int]
    stride: int
    skip: bool = True  # False: no shortcut at all (last exit unit)
    relu_inside: bool = False  # True: ReLUs inside the separable convs (last exit unit)


def _flow(in_channels: int, widths: Sequence[int], strides: Sequence[int]) -> list[UnitSpec]:
    specs = []
    for width, stride in zip(widths, strides, strict=True):
        specs.append(UnitSpec(in_channels, (width,) * 3, stride))
        in_channels = width
    return specs


def _middle_and_exit(middle_units: int) -> list[UnitSpec]:
    return [
        *[UnitSpec(728, (728, 728, 728), 1)] * middle_units,
        UnitSpec(728, (728, 1024, 1024), 2),
        UnitSpec(1024, (1536, 1536, 2048), 1, skip=False, relu_inside=True),
    ]


_ENTRY = _flow(64, (128, 256, 728), (2, 2, 2))
#: Units of each variant; the second entry is the index of the unit holding the low-level tap.
VARIANTS: dict[str, tuple[list[UnitSpec], int]] = {
    "xception41": (_ENTRY + _middle_and_exit(8), 1),
    "xception65": (_ENTRY + _middle_and_exit(16), 1),
    "xception71": (_flow(64, (128, 256, 256, 728, 728), (2, 1, 2, 1, 2)) + _middle_and_exit(16), 2),
}


class XceptionUnit(nn.Module):
    """Three separable convs (the third carries the stride) plus a 1×1 conv, identity or no skip."""

    def __init__(self, spec: UnitSpec, multi_grid: Sequence[int] = (1, 1, 1)) -> None:
        super().__init__()
        self.spec = spec
        self.multi_grid = tuple(multi_grid)
        self.shortcut: nn.Module | None = None
        out_channels = spec.channels[-1]
        if spec.skip and (out_channels != spec.in_channels or spec.stride != 1):
            self.shortcut = nn.Sequential(
                nn.Conv2d(spec.in_channels, out_channels, 1, stride=spec.stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=BN_EPS),
            )
        convs = []
        in_channels = spec.in_channels
        for i, channels in enumerate(spec.channels):
            stride = spec.stride if i == 2 else 1
            convs.append(
                SeparableConv2d(
                    in_channels, channels, stride=stride, activation=spec.relu_inside, bn_eps=BN_EPS
                )
            )
            in_channels = channels
        self.convs = nn.ModuleList(convs)

    def forward_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the unit output and the second separable conv's output (after its BN).

        The tap is the official decoder endpoint ``separable_conv2_pointwise``: pre-activation,
        at the unit's input stride.
        """
        out = x
        tap = x
        for i, conv in enumerate(self.convs):
            if not self.spec.relu_inside:
                out = F.relu(out)
            out = conv(out)
            if i == 1:
                tap = out
        if self.spec.skip:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return out, tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_tap(x)[0]

    def strided_unit(self) -> StridedUnit:
        strided: list[nn.Module] = [self.convs[2].depthwise]
        if self.shortcut is not None:
            strided.append(self.shortcut[0])
        dilated = [(conv.depthwise, m) for conv, m in zip(self.convs, self.multi_grid, strict=True)]
        return StridedUnit(self.spec.stride, strided, dilated)


class Xception(Backbone):
    """Modified aligned Xception returning stride-4 ``low`` and stride-OS ``high`` features."""

    stem_stride = 2

    def __init__(
        self,
        variant: str = "xception65",
        multi_grid: Sequence[int] | None = None,
        output_stride: int = 16,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"Xception variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        specs, self.tap_index = VARIANTS[variant]
        multi_grid = (1, 1, 1) if multi_grid is None else tuple(multi_grid)
        if len(multi_grid) != 3 or any(m < 1 for m in multi_grid):
            raise ValueError(
                f"multi_grid needs 3 positive factors (one per separable conv of the last unit), "
                f"got {multi_grid}"
            )
        self.stem = nn.Sequential(
            ConvBNReLU(in_channels, 32, 3, stride=2, bn_eps=BN_EPS),
            ConvBNReLU(32, 64, 3, bn_eps=BN_EPS),
        )
        self.input_conv = "stem.0.0"
        last = len(specs) - 1
        self.aux_index = last - 2  # the last middle-flow unit
        self.blocks = nn.Sequential(
            *[
                XceptionUnit(spec, multi_grid if i == last else (1, 1, 1))
                for i, spec in enumerate(specs)
            ]
        )
        self.out_channels = {
            "low": specs[self.tap_index].channels[1],
            "high": specs[-1].channels[-1],
            "aux": specs[self.aux_index].channels[-1],
        }
        self.set_output_stride(output_stride)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def strided_units(self) -> list[StridedUnit]:
        return [block.strided_unit() for block in self.blocks]

    def forward(self, x: torch.Tensor, aux: bool = False) -> dict[str, torch.Tensor]:
        x = self.stem(x)  # (N, 64, H/2, W/2)
        features = {}
        for i, block in enumerate(self.blocks):
            if i == self.tap_index:
                x, features["low"] = self.run_unit(block.forward_with_tap, block, x)
            else:
                x = self.run_unit(block, block, x)
            if aux and i == self.aux_index:
                features["aux"] = x  # (N, 728, H/16, W/16) at OS ≥ 16
        return {**features, "high": x}  # low: (N, 256, H/4, W/4), high: (N, 2048, H/OS, W/OS)
