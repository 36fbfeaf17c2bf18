"""The configurations the benchmarks compare (rows), and how to build each side: the atrous
network and its peer from segmentation_models_pytorch or torchvision (the same network
converted, or the nearest peer configuration), with random weights and BN statistics set from
two random images so that logits are of a trained model's scale."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import atrous
from atrous.convert.torch_models import from_smp, from_torchvision


def calibrate_bn(model: nn.Module, size: int, seed: int = 0) -> nn.Module:
    """Set BN statistics from two random images, so random-weight logits have a trained scale."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, size, size, generator=generator))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    return model.eval()


def smp_model(encoder: str, output_stride: int = 16) -> nn.Module:
    import segmentation_models_pytorch as smp

    model = smp.DeepLabV3Plus(
        encoder_name=encoder, encoder_weights=None, encoder_output_stride=output_stride, classes=21
    )
    return calibrate_bn(model, 128)


class LogitsOnly(nn.Module):
    """torchvision's segmentation models return {"out": logits}; users take ["out"]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def torchvision_model(depth: int) -> nn.Module:
    from torchvision.models import segmentation

    build = getattr(segmentation, f"deeplabv3_resnet{depth}")
    model = build(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    return LogitsOnly(calibrate_bn(model, 129))


@dataclass(frozen=True)
class Row:
    """A configuration: how to build the atrous network and its peer, at which sizes."""

    key: str
    title: str
    peer_name: str
    size: tuple[int, int]
    build: Callable[[], tuple[atrous.DeepLab, nn.Module | None]]  # (atrous, peer)
    same_network: bool  # the atrous network is the peer converted (identical logits)
    peer_size: tuple[int, int] | None = None  # smp needs multiples of 16
    full: bool = False  # every peer path (compile, folded, bf16) and batch-4 throughput
    train: bool = False  # training steps
    checkpointing: bool = False  # training step with activation checkpointing too
    rounds: int | None = None  # latency rounds (default: --rounds)
    int8: bool = True  # int8 paths (left out at OS8 to keep the default run under 10 minutes)


def _converted_smp(encoder: str, output_stride: int) -> Callable:
    def build() -> tuple[atrous.DeepLab, nn.Module]:
        peer = smp_model(encoder, output_stride)
        return from_smp(peer), peer

    return build


def _converted_torchvision(depth: int) -> Callable:
    def build() -> tuple[atrous.DeepLab, nn.Module]:
        peer = torchvision_model(depth)
        return from_torchvision(peer.model), peer

    return build


def _named(name: str, peer: Callable[[], nn.Module] | None, **kwargs: Any) -> Callable:
    def build() -> tuple[atrous.DeepLab, nn.Module | None]:
        torch.manual_seed(0)
        model = calibrate_bn(atrous.create_model(name, num_classes=21, **kwargs), 129)
        return model, peer() if peer is not None else None

    return build


ROWS = {
    row.key: row
    for row in [
        Row(
            "r101_os16_512",
            "DeepLabV3+ ResNet-101 OS16 (smp's, converted)",
            "smp DeepLabV3Plus resnet101",
            (512, 512),
            _converted_smp("resnet101", 16),
            True,
            full=True,
            train=True,
        ),
        Row(
            "r50_os16_512",
            "DeepLabV3+ ResNet-50 OS16 (smp's, converted)",
            "smp DeepLabV3Plus resnet50",
            (512, 512),
            _converted_smp("resnet50", 16),
            True,
        ),
        Row(
            "r101_os8_513",
            "DeepLabV3 ResNet-101 OS8 (torchvision's, converted)",
            "torchvision deeplabv3_resnet101",
            (513, 513),
            _converted_torchvision(101),
            True,
            int8=False,
            train=True,
            checkpointing=True,
            rounds=3,
        ),
        Row(
            "r50_os8_513",
            "DeepLabV3 ResNet-50 OS8 (torchvision's, converted)",
            "torchvision deeplabv3_resnet50",
            (513, 513),
            _converted_torchvision(50),
            True,
            int8=False,
            train=True,
            checkpointing=True,
            rounds=3,
        ),
        Row(
            "x65_sc_os16_513",
            "DeepLabV3+ Xception-65 SC OS16 (paper)",
            "smp DeepLabV3Plus tu-xception65",
            (513, 513),
            _named("deeplabv3plus_xception65", lambda: smp_model("tu-xception65")),
            False,
            peer_size=(512, 512),
        ),
        Row(
            "r101_os16_513",
            "DeepLabV3+ ResNet-101 OS16 (paper)",
            "smp DeepLabV3Plus resnet101",
            (513, 513),
            _named("deeplabv3plus_resnet101", lambda: smp_model("resnet101")),
            False,
            peer_size=(512, 512),
        ),
        Row(
            "mnv2_os16_513",
            "DeepLabV3+ MobileNetV2 OS16 (paper)",
            "smp DeepLabV3Plus mobilenet_v2",
            (513, 513),
            _named("deeplabv3plus_mobilenetv2", lambda: smp_model("mobilenet_v2")),
            False,
            peer_size=(512, 512),
        ),
        Row(
            "mnv2_os16_769",
            "DeepLabV3+ MobileNetV2 OS16, Cityscapes crop (paper)",
            "smp DeepLabV3Plus mobilenet_v2",
            (769, 769),
            _named("deeplabv3plus_mobilenetv2", lambda: smp_model("mobilenet_v2")),
            False,
            peer_size=(768, 768),
        ),
        Row(
            "x65_sc_os16_769",
            "DeepLabV3+ Xception-65 SC OS16, Cityscapes crop (paper)",
            "smp DeepLabV3Plus tu-xception65",
            (769, 769),
            _named("deeplabv3plus_xception65", lambda: smp_model("tu-xception65")),
            False,
            peer_size=(768, 768),
        ),
    ]
}
DEFAULT_ROWS = ("r101_os16_512", "r50_os16_512", "r50_os8_513", "x65_sc_os16_513", "mnv2_os16_769")
