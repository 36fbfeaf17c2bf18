"""MobileNetV2 with dilation, the official lightweight DeepLab backbone.

The layers are torchvision's (``features.0``–``features.17``: the final 1×1 conv to 1280 channels
is not used, as in the official feature extractor, whose output is layer 18 with 320 channels), so
torchvision ImageNet weights load by name. The low-level feature is the official decoder endpoint
``layer_4/depthwise_output``: the depthwise conv output (after BN and ReLU6) of the second
24-channel unit, 144 channels at stride 4. The ``aux`` feature is the output of the last
96-channel unit (``features.13``), the end of the stride-16 stage (stride 8 at OS8).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual, mobilenet_v2

from atrous.models.backbones.base import Backbone, StridedUnit

#: Index of the unit holding the low-level tap (torchvision ``features`` numbering).
TAP_INDEX = 3
#: Index of the unit whose output is the ``aux`` feature (the last at stride 16).
AUX_INDEX = 13


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
        self, width_multiplier: float = 1.0, output_stride: int = 16, in_channels: int = 3
    ) -> None:
        super().__init__()
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be positive, got {width_multiplier!r}")
        self.features = mobilenet_v2(width_mult=width_multiplier).features[:18]
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
