"""MobileNetV3-Large with dilation, in torchvision's layout (its ``features``, its blocks).

The layers are torchvision's ``mobilenet_v3_large().features`` (``features.0``–``features.16``,
the last a 1×1 conv to 960 channels), so torchvision's ImageNet weights and its
``deeplabv3_mobilenet_v3_large`` backbone load by name. ``"low"`` is the output of the last
stride-4 unit (``features.3``, 24 channels), ``"aux"`` that of the last stride-16 unit
(``features.12``, 112 channels), ``"high"`` the 960-channel output. torchvision's dilated variant
(DeepLabV3, OS16) gives the unit that loses its stride the grown rate already:
``dilate_removed_stride_units=True`` reproduces it.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual, mobilenet_v3_large

from atrous.models.backbones.base import Backbone, StridedUnit
from atrous.models.backbones.mobilenet import _with_input_channels

#: Index of the unit whose output is the low-level feature (the last at stride 4).
LOW_INDEX = 3
#: Index of the unit whose output is the ``aux`` feature (the last at stride 16).
AUX_INDEX = 12


def _depthwise(unit: InvertedResidual) -> nn.Conv2d:
    return next(m for m in unit.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)


class MobileNetV3Large(Backbone):
    """Dilatable MobileNetV3-Large returning stride-4 ``low`` and stride-OS ``high`` features."""

    stem_stride = 2
    input_conv = "features.0.0"

    def __init__(self, output_stride: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        self.features = mobilenet_v3_large().features
        if in_channels != 3:
            self.features[0][0] = _with_input_channels(self.features[0][0], in_channels)
        self._strides = [_depthwise(unit).stride[0] for unit in self.features[1:-1]]
        self.out_channels = {
            "low": self.features[LOW_INDEX].out_channels,
            "high": self.features[-1].out_channels,
            "aux": self.features[AUX_INDEX].out_channels,
        }
        self.set_output_stride(output_stride)

    def strided_units(self) -> list[StridedUnit]:
        units = []
        for unit, stride in zip(self.features[1:-1], self._strides, strict=True):
            depthwise = _depthwise(unit)
            units.append(StridedUnit(stride, [depthwise], [(depthwise, 1)]))
        return units

    def forward(self, x: torch.Tensor, aux: bool = False) -> dict[str, torch.Tensor]:
        features = {}
        for index, unit in enumerate(self.features):
            x = self.run_unit(unit, unit, x)
            if index == LOW_INDEX:
                features["low"] = x  # (N, 24, H/4, W/4)
            elif aux and index == AUX_INDEX:
                features["aux"] = x  # (N, 112, H/16, W/16) at OS ≥ 16
        return {**features, "high": x}  # (N, 960, H/OS, W/OS)
