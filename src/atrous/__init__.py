"""atrous: DeepLabV3+ semantic segmentation, faithful to the paper (Chen et al., ECCV 2018)."""

from atrous.hub.load import load
from atrous.hub.registry import list_published
from atrous.inference.fast import FastNetwork, optimize_for_inference
from atrous.models.backbones import (
    BACKBONES,
    Backbone,
    MobileNetV2,
    ResNet,
    Xception,
    build_backbone,
)
from atrous.models.backbones.weights import load_backbone_weights
from atrous.models.checkpoint import LoadReport, load_weights
from atrous.models.config import ModelConfig
from atrous.models.decoder import Decoder
from atrous.models.layers import ASPP, SeparableConv2d
from atrous.models.model import DeepLab, DeepLabV3, DeepLabV3Plus
from atrous.models.profile import ModelProfile, profile_model
from atrous.models.zoo import build_model, create_model, get_config, list_models

__version__ = "0.1.0"

__all__ = [
    "ASPP",
    "BACKBONES",
    "Backbone",
    "Decoder",
    "DeepLab",
    "DeepLabV3",
    "DeepLabV3Plus",
    "FastNetwork",
    "LoadReport",
    "MobileNetV2",
    "ModelConfig",
    "ModelProfile",
    "ResNet",
    "SeparableConv2d",
    "Xception",
    "build_backbone",
    "build_model",
    "convert",
    "create_model",
    "get_config",
    "list_models",
    "list_published",
    "load",
    "load_backbone_weights",
    "load_weights",
    "optimize_for_inference",
    "profile_model",
]
