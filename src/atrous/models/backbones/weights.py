"""ImageNet weights for the backbones, read through the libraries that publish them.

    create_model("deeplabv3plus_resnet101", backbone_weights="IMAGENET1K_V2")  # torchvision
    create_model("deeplabv3plus_xception65", backbone_weights="tf_in1k")  # timm's official TF port
    create_model("deeplabv3plus_resnet101", backbone_weights="resnet101.pth")  # a local file

Named weights go through each library's own code: torchvision's ``WeightsEnum.get_state_dict``
(``$TORCH_HOME/hub/checkpoints/<file>``, checked by hash when downloaded, read with
``weights_only=True``) and timm's ``create_model(pretrained=True)`` (the Hugging Face cache).
Offline, a file already in those caches is used as it is. Classification heads are dropped, timm's
Xception names are mapped to ours (one to one), and every backbone tensor must then load.

A backbone reading other than 3 bands (``in_channels``: RGB + NIR, multispectral) takes RGB
weights through :func:`adapt_input_conv`, the rule segmentation_models_pytorch uses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TypeAlias

import torch
from torchvision.models import (
    MobileNet_V2_Weights,
    MobileNet_V3_Large_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    WeightsEnum,
)

from atrous.models.backbones.base import Backbone
from atrous.models.backbones.timm import is_timm_name, timm_state_dict
from atrous.models.checkpoint import load_weights, read_weights

#: Weights for a backbone: a torchvision/timm name, a torchvision enum, a file, or a state dict.
BackboneWeights: TypeAlias = str | os.PathLike | WeightsEnum | Mapping[str, torch.Tensor]

#: torchvision's ImageNet classification weights that load into our torchvision-layout backbones.
TORCHVISION_WEIGHTS: dict[str, type[WeightsEnum]] = {
    "resnet50": ResNet50_Weights,
    "resnet101": ResNet101_Weights,
    "mobilenetv2": MobileNet_V2_Weights,
    "mobilenetv3_large": MobileNet_V3_Large_Weights,
}
#: timm models whose ImageNet weights map one to one into our Xception.
TIMM_MODELS = {"xception41": "xception41", "xception65": "xception65", "xception71": "xception71"}
#: timm's port of the official TensorFlow ImageNet checkpoint.
DEFAULT_TIMM_TAG = "tf_in1k"
#: Suffixes that mark a string as a file rather than a weights name.
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: Classification heads of the source networks (torchvision ResNet ``fc``, MobileNetV2
#: ``features.18`` and ``classifier``, timm ``head``); no atrous backbone has these names.
HEAD_PREFIXES = ("fc.", "classifier.", "head.", "features.18.")
#: timm Xception names → ours (``blocks.N.stack.convK.conv_dw`` → ``blocks.N.convs.K-1.depthwise``).
TIMM_XCEPTION_RENAMES = (
    (re.compile(r"\.stack\.conv(\d)\."), lambda m: f".convs.{int(m[1]) - 1}."),
    (re.compile(r"\.conv_dw\."), lambda m: ".depthwise."),
    (re.compile(r"\.bn_dw\."), lambda m: ".depthwise_bn."),
    (re.compile(r"\.conv_pw\."), lambda m: ".pointwise."),
    (re.compile(r"\.bn_pw\."), lambda m: ".pointwise_bn."),
    (re.compile(r"^(stem\.\d+|blocks\.\d+\.shortcut)\.conv\."), lambda m: f"{m[1]}.0."),
    (re.compile(r"^(stem\.\d+|blocks\.\d+\.shortcut)\.bn\."), lambda m: f"{m[1]}.1."),
)


def load_backbone_weights(backbone: Backbone, name: str, weights: BackboneWeights) -> None:
    """Load classification weights into ``backbone`` (``name``: its key in ``BACKBONES``).

    ``weights`` is one of: a torchvision weights enum or name (``"IMAGENET1K_V2"``, ``"DEFAULT"``,
    ``"ResNet101_Weights.IMAGENET1K_V2"``) for ``resnet50``/``resnet101``/``mobilenetv2``; a timm
    pretrained tag (``"tf_in1k"``, ``"DEFAULT"``) for the Xceptions (41, 65, 71) and for
    ``timm:<name>`` backbones (loaded by timm, ``pretrained=True``); a local
    ``.safetensors`` file, or ``.pth``/``.pt``/``.bin`` read with ``weights_only=True``; or a state
    dict. Files and state dicts may be in the source library's names or ours. RGB weights for a
    backbone of other ``in_channels`` adapt by :func:`rgb_to_bands`. Every backbone tensor must
    load: anything else is a ValueError listing the first mismatches.
    """
    state = adapt_input_conv(backbone_state_dict(name, weights, backbone), backbone)
    load_weights(backbone, state, strict=True, source=f"{name} backbone weights")


def adapt_input_conv(
    state: Mapping[str, torch.Tensor], backbone: Backbone
) -> dict[str, torch.Tensor]:
    """``state`` with its RGB first-conv weight adapted to ``backbone.in_channels`` bands by
    :func:`rgb_to_bands`; unchanged when the weight already fits (or has not 3 input channels,
    which the strict load then reports)."""
    key = f"{backbone.input_conv}.weight"
    state = dict(state)
    weight = state.get(key)
    if weight is not None and weight.shape[1] == 3 and backbone.in_channels != 3:
        state[key] = rgb_to_bands(weight, backbone.in_channels)
    return state


def rgb_to_bands(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB conv weight (out, 3, kh, kw) → (out, in_channels, kh, kw), the rule of
    segmentation_models_pytorch's ``patch_first_conv``.

    One band takes the sum of the RGB filters: a grey image (R = G = B) gives the RGB response.
    Otherwise band ``i`` takes filter ``i % 3`` (R, G, B, R, G, ...) and every filter is scaled by
    ``3 / in_channels``, so the response keeps its scale: an input repeating R, G, B (6, 9, ...
    bands) gives the RGB response exactly. To match, band ``i`` is normalised by default with
    RGB statistic ``i % 3`` (:attr:`atrous.models.config.ModelConfig.mean`).
    """
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    bands = torch.arange(in_channels) % weight.shape[1]
    return weight[:, bands] * (weight.shape[1] / in_channels)


def backbone_state_dict(
    name: str, weights: BackboneWeights, backbone: Backbone | None = None
) -> dict[str, torch.Tensor]:
    """The backbone tensors of ``weights`` under our names (see :func:`load_backbone_weights`).

    ``backbone``, when given, lets a named download be refused before it starts if it cannot fit
    (MobileNetV2 at another width).
    """
    if isinstance(weights, Mapping):
        state = dict(weights)
    elif isinstance(weights, os.PathLike) or (
        isinstance(weights, str) and (weights.endswith(WEIGHT_FILE_SUFFIXES) or os.sep in weights)
    ):
        state = read_weights(Path(weights))
    elif is_timm_name(name):
        if not isinstance(weights, str):
            raise ValueError(f"{name} weights come from timm (DEFAULT or a tag), not {weights!r}")
        state = weights
    elif isinstance(weights, WeightsEnum | str):
        if name in TIMM_MODELS:
            if not isinstance(weights, str):
                raise ValueError(
                    f"{name} weights come from timm (tags such as {DEFAULT_TIMM_TAG!r}), "
                    f"not torchvision's {weights!r}"
                )
            state = _timm_state(name, weights)
        else:
            state = _torchvision_state(name, weights, backbone)
    else:
        raise TypeError(f"cannot read backbone weights from a {type(weights).__name__}")
    if is_timm_name(name):
        return timm_state_dict(name, state, backbone)
    return to_atrous_names(name, state)


def to_atrous_names(name: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the classification head and rename timm Xception tensors to ours."""
    out = {}
    for key, value in state.items():
        if key.startswith(HEAD_PREFIXES):
            continue
        if name in TIMM_MODELS:
            for pattern, replacement in TIMM_XCEPTION_RENAMES:
                key = pattern.sub(replacement, key)
        out[key] = value
    return out


def torchvision_weights(name: str, weights: WeightsEnum | str) -> WeightsEnum:
    """The torchvision weights enum member for backbone ``name``, checked to be of its family."""
    if name not in TORCHVISION_WEIGHTS:
        hint = (
            " The official resnet_v1_beta ImageNet checkpoints are TensorFlow files, which atrous "
            "does not read; use the torchvision layout (resnet50/resnet101) for ImageNet weights, "
            "or pass a state dict in atrous names."
            if name.endswith("_beta")
            else ""
        )
        raise ValueError(
            f"torchvision publishes no weights for backbone {name!r} (it has weights for "
            f"{', '.join(TORCHVISION_WEIGHTS)}).{hint}"
        )
    family = TORCHVISION_WEIGHTS[name]
    try:
        return family.verify(weights)
    except (KeyError, TypeError):
        raise ValueError(
            f"{weights!r} are not torchvision weights for {name}; choose one of "
            f"{', '.join(f'{family.__name__}.{m}' for m in family.__members__)}"
        ) from None


def _torchvision_state(
    name: str, weights: WeightsEnum | str, backbone: Backbone | None
) -> dict[str, torch.Tensor]:
    member = torchvision_weights(name, weights)
    if name == "mobilenetv2" and backbone is not None and backbone.out_channels["high"] != 320:
        raise ValueError(
            "torchvision's MobileNetV2 ImageNet weights are for width_multiplier 1.0; this "
            f"backbone has {backbone.out_channels['high']} output channels instead of 320"
        )
    return member.get_state_dict(progress=False, check_hash=True, weights_only=True)


def _timm_state(name: str, tag: str) -> dict[str, torch.Tensor]:
    try:
        import timm  # optional: only Xception's ImageNet weights need it
    except ImportError:
        raise ImportError(f"{name} ImageNet weights come from timm: pip install timm") from None
    tag = DEFAULT_TIMM_TAG if tag == "DEFAULT" else tag
    model_name = f"{TIMM_MODELS[name]}.{tag}"
    available = timm.list_pretrained(f"{TIMM_MODELS[name]}.*")
    if model_name not in available:
        tags = ", ".join(n.split(".", 1)[1] for n in available)
        raise ValueError(
            f"timm has no {model_name!r}; its {name} weights are: {tags} "
            f"({DEFAULT_TIMM_TAG}: the official TensorFlow checkpoint)"
        )
    return timm.create_model(model_name, pretrained=True).state_dict()
