"""MobileNetV2 with dilation, the official lightweight DeepLab backbone.

The layers are torchvision's (``features.0``–``features.17``: the final 1×1 conv to 1280 channels
is not used, as in the official feature extractor, whose output is layer 18 with 320 channels), so
torchvision ImageNet weights load by name. The low-level feature is the official decoder endpoint
``layer_4/depthwise_output``: the depthwise conv output (after BN and ReLU6) of the second
24-channel unit, 144 channels at stride 4.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual, mobilenet_v2

from atrous.backbones.base import Backbone, StridedUnit

#: Index of the unit holding the low-level tap (torchvision ``features`` numbering).
TAP_INDEX = 3


def _depthwise(unit: InvertedResidual) -> nn.Conv2d:
    return next(m for m in unit.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)


class MobileNetV2(Backbone):
    """Dilatable MobileNetV2 returning stride-4 ``low`` and stride-OS ``high`` features."""

    stem_stride = 2

    def __init__(self, width_multiplier: float = 1.0, output_stride: int = 16) -> None:
        super().__init__()
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be positive, got {width_multiplier!r}")
        self.features = mobilenet_v2(width_mult=width_multiplier).features[:18]
        tap_unit = self.features[TAP_INDEX]
        self.out_channels = {
            "low": _depthwise(tap_unit).out_channels,
            "high": self.features[-1].out_channels,
        }
        self.set_output_stride(output_stride)

    def strided_units(self) -> list[StridedUnit]:
        units = []
        for unit in self.features[1:]:
            depthwise = _depthwise(unit)
            units.append(StridedUnit(unit.stride, [depthwise], [(depthwise, 1)]))
        return units

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.features[:TAP_INDEX](x)  # (N, 24·w, H/4, W/4)
        expand, depthwise, project, project_bn = self.features[TAP_INDEX].conv
        low = depthwise(expand(x))  # (N, 144·w, H/4, W/4)
        x = x + project_bn(project(low))
        for unit in self.features[TAP_INDEX + 1 :]:
            x = self.run_unit(unit, unit, x)  # ends (N, 320·w, H/OS, W/OS)
        return {"low": low, "high": x}
