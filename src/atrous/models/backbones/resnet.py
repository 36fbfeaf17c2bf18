"""ResNet-50/101 backbones in two layouts with the same parameter names.

``layout="torchvision"`` is torchvision's ResNet v1.5: 7×7 stem, the stride of stages 2–4 in their
*first* unit (on the 3×3 conv, shortcut a strided 1×1 conv), low-level feature = ``layer1``'s
output. torchvision ImageNet state dicts load into it strictly.

``layout="beta"`` is the official DeepLab ``resnet_v1_beta``: a stem of three 3×3 convs (64/2, 64,
128), the stride of blocks 1–3 in their *last* unit (on the 3×3 conv, shortcut a stride-2
subsample), multi-grid (1, 2, 4) in the last block, and the low-level feature taken from
``block1/unit_2``'s conv3 after BN, before the residual add. Module names follow torchvision
(``conv1``, ``bn1``, ``layer1``…): the deep stem is ``conv1`` as a sequence whose last BN is
``bn1``, the convention timm uses for its deep-stem ResNets.

``layout="v1c"`` is mmsegmentation's ``ResNetV1c``: torchvision's stride placement and low-level
feature behind a deep stem of three 3×3 convs (32/2, 32, 64), for its DeepLabV3+ checkpoints.

The ``aux`` feature is ``layer3``'s output (1024 channels), where torchvision's and
mmsegmentation's auxiliary FCN heads attach. In the torchvision and v1c layouts it is at stride 16
(8 at OS8); in the beta layout ``layer3``'s last unit carries the stride, so it is at the output
stride.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from atrous.models.backbones.base import Backbone, StridedUnit

ResNetLayout = Literal["torchvision", "beta", "v1c"]
#: Channels of the three 3×3 convs of the deep stems.
DEEP_STEMS = {"beta": (64, 64, 128), "v1c": (32, 32, 64)}
#: Units per stage.
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided, dilated) → 1×1 (×4 channels) with a shortcut; ReLU after the add."""

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int, downsample: nn.Module | None
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch, after conv3's BN and before the add."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def add(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Shortcut + residual, then ReLU."""
        return self.relu(residual + self.shortcut(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add(self.residual(x), x)

    def strided_unit(self, multi_grid: int = 1) -> StridedUnit:
        strided: list[nn.Module] = [self.conv2]
        if isinstance(self.downsample, nn.Sequential):
            strided.append(self.downsample[0])
        elif isinstance(self.downsample, nn.MaxPool2d):
            strided.append(self.downsample)
        return StridedUnit(self.stride, strided, [(self.conv2, multi_grid)])


def _deep_stem(channels: tuple[int, int, int], in_channels: int) -> nn.Sequential:
    """Three 3×3 convs (the first strided) without the last BN/ReLU (those are ``bn1``/``relu``)."""
    first, second, third = channels
    return nn.Sequential(
        nn.Conv2d(in_channels, first, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(first),
        nn.ReLU(inplace=True),
        nn.Conv2d(first, second, 3, padding=1, bias=False),
        nn.BatchNorm2d(second),
        nn.ReLU(inplace=True),
        nn.Conv2d(second, third, 3, padding=1, bias=False),
    )


class ResNet(Backbone):
    """Dilatable ResNet-50/101 returning stride-4 ``low`` and stride-OS ``high`` features."""

    stem_stride = 4

    def __init__(
        self,
        depth: int = 101,
        layout: ResNetLayout = "torchvision",
        multi_grid: Sequence[int] | None = None,
        output_stride: int = 16,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth!r}")
        if layout not in ("torchvision", "beta", "v1c"):
            raise ValueError(
                f"ResNet layout must be 'torchvision', 'beta' or 'v1c', got {layout!r}"
            )
        units = DEPTHS[depth]
        if multi_grid is None:
            multi_grid = (1, 2, 4) if layout == "beta" else (1,) * units[3]
        if len(multi_grid) != units[3] or any(m < 1 for m in multi_grid):
            raise ValueError(
                f"multi_grid needs {units[3]} positive factors (one per last-stage unit), "
                f"got {tuple(multi_grid)}"
            )
        self.layout = layout
        self.multi_grid = tuple(multi_grid)
        stem_channels = DEEP_STEMS[layout][-1] if layout in DEEP_STEMS else 64
        self.conv1 = (
            _deep_stem(DEEP_STEMS[layout], in_channels)
            if layout in DEEP_STEMS
            else nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        )
        self.input_conv = "conv1.0" if layout in DEEP_STEMS else "conv1"
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = stem_channels
        for index, (num_units, width) in enumerate(
            zip(units, (64, 128, 256, 512), strict=True), start=1
        ):
            stage_stride = 1 if index == 4 else 2
            if layout != "beta":
                stage_stride = 1 if index == 1 else 2
            stage = self._make_stage(channels, width, num_units, stage_stride)
            setattr(self, f"layer{index}", stage)
            channels = width * Bottleneck.expansion
        self.out_channels = {"low": 256, "high": channels, "aux": 256 * Bottleneck.expansion}
        self.set_output_stride(output_stride)
        _init_weights(self)

    def _make_stage(
        self, in_channels: int, width: int, num_units: int, stride: int
    ) -> nn.Sequential:
        out_channels = width * Bottleneck.expansion
        blocks = []
        for i in range(num_units):
            is_strided = i == (num_units - 1 if self.layout == "beta" else 0)
            unit_stride = stride if is_strided else 1
            downsample: nn.Module | None = None
            if in_channels != out_channels:
                downsample = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride=unit_stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )
            elif unit_stride != 1:
                downsample = nn.MaxPool2d(1, stride=unit_stride)
            blocks.append(Bottleneck(in_channels, width, unit_stride, downsample))
            in_channels = out_channels
        return nn.Sequential(*blocks)

    def strided_units(self) -> list[StridedUnit]:
        units = [
            unit.strided_unit()
            for stage in (self.layer1, self.layer2, self.layer3)
            for unit in stage
        ]
        units += [
            unit.strided_unit(m) for unit, m in zip(self.layer4, self.multi_grid, strict=True)
        ]
        return units

    @property
    def aux_stride(self) -> int:
        return self.output_stride if self.layout == "beta" else min(16, self.output_stride)

    def forward(self, x: torch.Tensor, aux: bool = False) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64|128, H/4, W/4)
        if self.layout == "beta":
            # Official low-level endpoint: block1/unit_2/conv3 after BN, before the add.
            for unit in self.layer1[:-2]:
                x = unit(x)
            tap_unit = self.layer1[-2]
            low = tap_unit.residual(x)
            x = self.layer1[-1](tap_unit.add(low, x))
        else:
            for unit in self.layer1:
                x = self.run_unit(unit, unit, x)
            low = x  # (N, 256, H/4, W/4)
        for unit in (*self.layer2, *self.layer3):
            x = self.run_unit(unit, unit, x)  # ends (N, 1024, H/16, W/16) at OS ≥ 16
        features = {"low": low, "aux": x} if aux else {"low": low}
        for unit in self.layer4:
            x = self.run_unit(unit, unit, x)  # ends (N, 2048, H/OS, W/OS)
        return {**features, "high": x}


def _init_weights(module: nn.Module) -> None:
    """He init for convs, BN at identity (torchvision's ResNet init)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
