"""The network and its description: building blocks (conv-BN-ReLU, atrous separable conv, ASPP),
backbones, the decoder, ``DeepLab`` with its ``ModelConfig``, the zoo of named configurations,
profiling (parameters, Mult-Adds) and the saved-model format (safetensors + ``config.json``).

The bottom of the house with ``data`` and ``runtime``: it imports no other wing but ``data``.
"""

from atrous.models.backbones import (
    BACKBONES,
    Backbone,
    MobileNetV2,
    ResNet,
    Xception,
    build_backbone,
)
from atrous.models.config import ModelConfig
from atrous.models.decoder import Decoder
from atrous.models.layers import ASPP, SeparableConv2d
from atrous.models.model import DeepLab, DeepLabV3, DeepLabV3Plus
from atrous.models.profile import ModelProfile, profile_model
from atrous.models.zoo import build_model, create_model, get_config, list_models

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
