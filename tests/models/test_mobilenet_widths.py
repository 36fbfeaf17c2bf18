"""MobileNetV2 at any width, in torchvision's rounding or the official DeepLab one."""

import pytest
import torch
from torchvision.models.mobilenetv2 import mobilenet_v2

from atrous.models.backbones import build_backbone
from atrous.models.backbones.mobilenet import official_channels, official_features
from atrous.models.config import ModelConfig
from atrous.models.model import build_model


def test_the_official_depth_05_channels():
    assert sorted(set(official_channels(0.5, 1, 1))) == [8, 12, 16, 32, 48, 80, 160]
    assert official_channels(0.5, 1, 1)[:2] == [16, 8]
    assert official_channels(0.5, 8, 8)[:3] == [16, 8, 16]  # torchvision's: 12 becomes 16


@pytest.mark.parametrize("width", [0.35, 0.5, 0.75, 1.0, 1.4])
def test_slims_rounding_at_8_is_torchvisions_network(width):
    """So the default (8, 8) may keep building torchvision's own modules."""
    ours = {k: v.shape for k, v in official_features(width, 8, 8).state_dict().items()}
    torchvision = mobilenet_v2(width_mult=width).features[:18]
    assert ours == {k: v.shape for k, v in torchvision.state_dict().items()}


def test_the_rounding_options_pass_through_the_config():
    config = ModelConfig(backbone="mobilenetv2", num_classes=3, width_multiplier=0.35)
    model = build_model(config.replace(divisible_by=1, min_depth=1, output_stride=8)).eval()
    assert (
        model.backbone.out_channels["high"] == 112
        and model.backbone.features[0][0].out_channels == 11
    )
    expand = model.backbone.features[2].conv[0][0]  # 6 × 6 = 36 rounds up to 40, as slim does
    assert (expand.in_channels, expand.out_channels) == (6, 40)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 33)).shape == (1, 3, 33, 33)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="no channel rounding options"):
        build_backbone("xception65", divisible_by=1)
