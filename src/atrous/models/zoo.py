"""Named model configurations and the builders: ``create_model``, ``list_models`` (and
``build_model``, from :mod:`atrous.models.model`).

Names are ``deeplabv3plus_<backbone>`` and ``deeplabv3_<backbone>``. Backbone defaults follow the
official implementation: Xception and MobileNetV2 use separable ASPP/decoder convs (the official
flags' defaults, the paper's "SC"); ResNets use dense ones (paper Table 3); MobileNetV2's ASPP has
no atrous branches, only the 1×1 and image-pooling branches (official MobileNetV2 setting).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from atrous.models.backbones.weights import BackboneWeights, load_backbone_weights
from atrous.models.config import ModelConfig
from atrous.models.model import DeepLab, build_model

_REGISTRY: dict[str, ModelConfig] = {}

_BACKBONE_DEFAULTS: dict[str, dict[str, object]] = {
    "resnet50": {},
    "resnet101": {},
    "resnet50_beta": {},
    "resnet101_beta": {},
    "resnet50_v1c": {},
    "resnet101_v1c": {},
    "xception41": {"separable": True},
    "xception65": {"separable": True},
    "xception71": {"separable": True},
    "mobilenetv2": {"separable": True, "aspp_rates": ()},
    "mobilenetv3_large": {},
}


def register(name: str, config: ModelConfig) -> None:
    """Add a named configuration; names are unique."""
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = config


#: Classes of a named configuration unless overridden: PASCAL VOC's 21, as the paper's models.
DEFAULT_NUM_CLASSES = 21

for _backbone, _defaults in _BACKBONE_DEFAULTS.items():
    _base = ModelConfig(backbone=_backbone, num_classes=DEFAULT_NUM_CLASSES, **_defaults)
    register(f"deeplabv3plus_{_backbone}", _base)
    register(f"deeplabv3_{_backbone}", _base.replace(decoder=False))


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_REGISTRY)


def get_config(name: str) -> ModelConfig:
    """The configuration registered under ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; available: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(
    name: str, *, backbone_weights: BackboneWeights | None = None, **overrides: Any
) -> DeepLab:
    """Build the named configuration, with any :class:`ModelConfig` field overridden by name.

    Every keyword but ``backbone_weights`` is a :class:`ModelConfig` field, set to the value
    given (an unknown name is a ValueError listing the fields). Example:
    ``create_model("deeplabv3plus_xception65", num_classes=19, output_stride=8)``.
    ``backbone_weights`` starts the backbone from ImageNet weights (torchvision names such as
    ``"IMAGENET1K_V2"`` for ResNets and MobileNetV2, timm tags such as ``"tf_in1k"`` for
    Xception, or a local file); see :func:`load_backbone_weights`. With ``in_channels`` other
    than 3 (e.g. 4 for RGB + NIR), those RGB weights adapt to the bands by
    :func:`~atrous.models.backbones.weights.rgb_to_bands`.
    """
    fields = {field.name for field in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"create_model got {', '.join(unknown)}, which ModelConfig does not have; its fields: "
            f"{', '.join(sorted(fields))}"
        )
    config = get_config(name).replace(**overrides)
    model = build_model(config)
    if backbone_weights is not None:
        load_backbone_weights(model.backbone, config.backbone, backbone_weights)
    return model
