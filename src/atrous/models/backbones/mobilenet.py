"""MobileNetV2 with dilation, the official lightweight DeepLab backbone.

The layers are torchvision's (``features.0``–``features.17``: the final 1×1 conv to 1280 channels
is not used, as in the official feature extractor, whose output is layer 18 with 320 channels), so
torchvision ImageNet weights load by name. The low-level feature is the official decoder endpoint
``layer_4/depthwise_output``: the depthwise conv output (after BN and ReLU6) of the second
24-channel unit, 144 channels at stride 4. The ``aux`` feature is the output of the last
96-channel unit (``features.13``), the end of the stride-16 stage (stride 8 at OS8).

Channel rounding at other widths follows slim's MobileNetV2: every unit's output is
``width · c`` rounded to a multiple of ``divisible_by`` (at least ``min_depth``, never more than
10% down) and every expansion is ``6 · input`` rounded to a multiple of 8. The default 8/8 is
torchvision's (and the official one at depth 1.0); the official DeepLab feature extractor uses
``divisible_by=1, min_depth=1`` at any other depth (at 0.5: 16/8/12/16/32/48/80/160).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual, mobilenet_v2
from torchvision.ops.misc import Conv2dNormActivation

from atrous.models.backbones.base import Backbone, StridedUnit

#: Index of the unit holding the low-level tap (torchvision ``features`` numbering).
TAP_INDEX = 3
#: Index of the unit whose output is the ``aux`` feature (the last at stride 16).
AUX_INDEX = 13
#: The units of layers 1–17 as (expansion, output channels at width 1, repeats, first stride).
UNITS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
UNITS += ((6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int, minimum: int) -> int:
    """slim's (and torchvision's) rounding: nearest multiple, at least ``minimum``, never more
    than 10% below ``value``."""
    rounded = max(minimum, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def official_channels(width: float, divisible_by: int = 8, min_depth: int = 8) -> list[int]:
    """Output channels of the stem and of each of the 17 units, in slim's rounding."""
    channels = [make_divisible(32 * width, divisible_by, min_depth)]
    for _, out, repeats, _ in UNITS:
        channels += [make_divisible(out * width, divisible_by, min_depth)] * repeats
    return channels


def official_features(width: float, divisible_by: int, min_depth: int) -> nn.Sequential:
    """Layers 0–17 in slim's rounding, with torchvision's modules (so the same state names)."""
    channels = official_channels(width, divisible_by, min_depth)
    layers: list[nn.Module] = [
        Conv2dNormActivation(3, channels[0], stride=2, activation_layer=nn.ReLU6)
    ]
    index = 1
    for expansion, _, repeats, first_stride in UNITS:
        for repeat in range(repeats):
            inp, out = channels[index - 1], channels[index]
            hidden = inp if expansion == 1 else make_divisible(inp * expansion, 8, 8)
            stride = first_stride if repeat == 0 else 1
            layers.append(InvertedResidual(inp, out, stride, hidden / inp))
            index += 1
    features = nn.Sequential(*layers)
    for module in features.modules():
        if isinstance(module, nn.Conv2d):  # torchvision's initialisation
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
    return features


def _depthwise(unit: InvertedResidual) -> nn.Conv2d:
    return next(m for m in unit.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)


def _with_input_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The stem conv reading ``in_channels`` bands, He-initialised as torchvision's."""
    new = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out")
    return new


class MobileNetV2(Backbone):
    """Dilatable MobileNetV2 returning stride-4 ``low`` and stride-OS ``high`` features."""

    stem_stride = 2

    input_conv = "features.0.0"

    def __init__(
        self,
        width_multiplier: float = 1.0,
        output_stride: int = 16,
        in_channels: int = 3,
        divisible_by: int = 8,
        min_depth: int = 8,
    ) -> None:
        super().__init__()
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be positive, got {width_multiplier!r}")
        if divisible_by < 1 or min_depth < 1:
            raise ValueError(
                f"divisible_by and min_depth must be at least 1, got {divisible_by}, {min_depth}"
            )
        if (divisible_by, min_depth) == (8, 8):
            self.features = mobilenet_v2(width_mult=width_multiplier).features[:18]
        else:
            self.features = official_features(width_multiplier, divisible_by, min_depth)
        if in_channels != 3:
            self.features[0][0] = _with_input_channels(self.features[0][0], in_channels)
        tap_unit = self.features[TAP_INDEX]
        self.out_channels = {
            "low": _depthwise(tap_unit).out_channels,
            "high": self.features[-1].out_channels,
            "aux": self.features[AUX_INDEX].out_channels,
        }
        self.set_output_stride(output_stride)

    def strided_units(self) -> list[StridedUnit]:
        units = []
        for unit in self.features[1:]:
            depthwise = _depthwise(unit)
            units.append(StridedUnit(unit.stride, [depthwise], [(depthwise, 1)]))
        return units

    def forward(self, x: torch.Tensor, aux: bool = False) -> dict[str, torch.Tensor]:
        x = self.features[:TAP_INDEX](x)  # (N, 24·w, H/4, W/4)
        expand, depthwise, project, project_bn = self.features[TAP_INDEX].conv
        features = {"low": depthwise(expand(x))}  # (N, 144·w, H/4, W/4)
        x = x + project_bn(project(features["low"]))
        for index in range(TAP_INDEX + 1, len(self.features)):
            unit = self.features[index]
            x = self.run_unit(unit, unit, x)  # ends (N, 320·w, H/OS, W/OS)
            if aux and index == AUX_INDEX:
                features["aux"] = x  # (N, 96·w, H/16, W/16) at OS ≥ 16
        return {**features, "high": x}
