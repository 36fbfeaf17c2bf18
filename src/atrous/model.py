"""DeepLabV3 and DeepLabV3+ models (paper §3, Fig. 2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from atrous.backbones import Backbone
from atrous.decoder import Decoder
from atrous.layers import ASPP, check_output_stride, resize

if TYPE_CHECKING:
    from atrous.config import ModelConfig


def check_input(x: torch.Tensor) -> None:
    """Raise a ValueError unless ``x`` is an (N, 3, H, W) batch."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an image batch of shape (N, 3, H, W), got {tuple(x.shape)}")


class DeepLab(nn.Module):
    """backbone → ASPP → [decoder] → 1×1 classifier → bilinear resize to the input size.

    Without a decoder this is DeepLabV3: the classifier runs on the ASPP output at stride OS.
    """

    #: The configuration it was built from (set by :func:`atrous.build_model`).
    config: ModelConfig | None = None

    def __init__(
        self, backbone: Backbone, aspp: ASPP, decoder: Decoder | None, num_classes: int
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes!r}")
        self.backbone = backbone
        self.aspp = aspp
        self.decoder = decoder
        head_channels = decoder.out_channels if decoder is not None else aspp.out_channels
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        self.num_classes = num_classes

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Run the same weights at another output stride (paper Table 3: train 16, eval 8)."""
        check_output_stride(output_stride)
        self.backbone.set_output_stride(output_stride)
        self.aspp.set_output_stride(output_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images → (N, num_classes, H, W) logits."""
        check_input(x)
        features = self.backbone(x)
        out = self.aspp(features["high"])  # (N, 256, H/OS, W/OS)
        if self.decoder is not None:
            out = self.decoder(out, features["low"])  # (N, 256, H/4, W/4)
        return resize(self.classifier(out), x.shape[-2:])


class DeepLabV3(DeepLab):
    """DeepLabV3: ASPP on an atrous backbone, no decoder."""

    def __init__(self, backbone: Backbone, aspp: ASPP, num_classes: int) -> None:
        super().__init__(backbone, aspp, None, num_classes)


class DeepLabV3Plus(DeepLab):
    """DeepLabV3+: DeepLabV3 as the encoder plus the low-level decoder (paper §3.1)."""

    def __init__(self, backbone: Backbone, aspp: ASPP, decoder: Decoder, num_classes: int) -> None:
        super().__init__(backbone, aspp, decoder, num_classes)
