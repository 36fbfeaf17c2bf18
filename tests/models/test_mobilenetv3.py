"""MobileNetV3-Large in torchvision's layout: its ImageNet tensors load by name, and its dilation
at OS16 with ``dilate_removed_stride_units`` is torchvision's ``dilated=True`` network's."""

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large

from atrous.models.backbones import build_backbone
from atrous.models.backbones.weights import load_backbone_weights


def depthwise_layout(module: nn.Module) -> list[tuple[int, int]]:
    return [
        (m.stride[0], m.dilation[0])
        for m in module.modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1
    ]


def test_torchvision_imagenet_tensors_load_and_dilation_matches_torchvision():
    torch.manual_seed(0)
    reference = mobilenet_v3_large(dilated=True).eval()
    backbone = build_backbone(
        "mobilenetv3_large", output_stride=16, dilate_removed_stride_units=True
    ).eval()
    load_backbone_weights(backbone, "mobilenetv3_large", reference.state_dict())  # strict
    assert depthwise_layout(backbone) == depthwise_layout(reference.features)
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        features = backbone(x, aux=True)
        assert torch.allclose(features["high"], reference.features(x), atol=1e-5)
    assert {k: v.shape[1:] for k, v in features.items()} == {
        "low": (24, 17, 17),
        "aux": (112, 5, 5),
        "high": (960, 5, 5),
    }
