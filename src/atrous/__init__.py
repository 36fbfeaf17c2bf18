"""atrous: DeepLabV3+ semantic segmentation, faithful to the paper (Chen et al., ECCV 2018)."""

from atrous.backbones import BACKBONES, Backbone, MobileNetV2, ResNet, Xception, build_backbone
from atrous.config import ModelConfig
from atrous.decoder import Decoder
from atrous.layers import ASPP, SeparableConv2d
from atrous.model import DeepLab, DeepLabV3, DeepLabV3Plus
from atrous.profile import ModelProfile, profile_model
from atrous.zoo import build_model, create_model, get_config, list_models

__version__ = "0.1.0"

__all__ = [
    "ASPP",
    "BACKBONES",
    "Backbone",
    "Decoder",
    "DeepLab",
    "DeepLabV3",
    "DeepLabV3Plus",
    "MobileNetV2",
    "ModelConfig",
    "ModelProfile",
    "ResNet",
    "SeparableConv2d",
    "Xception",
    "build_backbone",
    "build_model",
    "create_model",
    "get_config",
    "list_models",
    "profile_model",
]
