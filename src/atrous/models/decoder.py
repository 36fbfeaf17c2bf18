"""The DeepLabV3+ decoder (paper §3.1, Fig. 2; Tables 1–2)."""

from __future__ import annotations

import torch
from torch import nn

from atrous.models.layers import ConvBNReLU, conv3x3_bn_relu, resize


class Decoder(nn.Module):
    """Refine the encoder output with stride-4 low-level features.

    low-level (N, C_low, H/4, W/4) → 1×1 conv to 48 (Table 1: fewer channels keep the encoder's
    features dominant); encoder output resized to that grid; concat (N, 256+48, H/4, W/4); two 3×3
    convs of 256 (Table 2), dense or separable. ``align_corners`` is the resize's (official: True).
    """

    def __init__(
        self,
        low_channels: int,
        high_channels: int = 256,
        low_proj_channels: int = 48,
        channels: int = 256,
        num_convs: int = 2,
        separable: bool = False,
        separable_depthwise_bn: bool = True,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"the decoder needs at least one 3×3 conv, got num_convs={num_convs}")
        if low_proj_channels < 1 or channels < 1:
            raise ValueError(
                f"decoder channels must be positive, got low_proj_channels={low_proj_channels}, "
                f"channels={channels}"
            )
        self.low_proj = ConvBNReLU(low_channels, low_proj_channels, 1)
        in_channels = high_channels + low_proj_channels
        convs = []
        for _ in range(num_convs):
            convs.append(
                conv3x3_bn_relu(in_channels, channels, 1, separable, separable_depthwise_bn)
            )
            in_channels = channels
        self.fuse = nn.Sequential(*convs)
        self.out_channels = channels
        self.align_corners = align_corners

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.low_proj(low)  # (N, 48, H/4, W/4)
        high = resize(high, low.shape[-2:], self.align_corners)  # (N, 256, H/4, W/4)
        return self.fuse(torch.cat([high, low], dim=1))  # (N, 256, H/4, W/4)
