"""Hugging Face transformers' ``MobileNetV2ForSemanticSegmentation``, converted to equal logits.

    model = from_transformers("google/deeplabv3_mobilenet_v2_1.0_513")   # or a saved folder

That Hub model is the official DeepLabV3 MobileNetV2 PASCAL VOC checkpoint, converted by
transformers. Its layout: the MobileNetV2 backbone with BN eps 1e-3 (ours: torchvision's 1e-5, so
the moving variances take the difference, exact in inference), TensorFlow "SAME" padding when
``tf_padding`` (ours: ``ModelConfig.tf_padding``), a DeepLabV3 head of a global image pool and a
1×1 branch, concatenated pool first (ours: last, so the projection's input channels are
rotated), and logits at the output stride (ours are upsampled to the input, corners aligned).
The 1280-channel ``conv_1x1`` is not used by segmentation and is dropped. transformers itself is
not needed: ``config.json`` and the weights are read directly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.utils import EntryNotFoundError

from atrous.convert.torch_models import image_pool_last, rename
from atrous.data.palettes import VOC_CLASSES, VOC_PALETTE
from atrous.models.checkpoint import load_weights, read_weights
from atrous.models.config import ModelConfig
from atrous.models.model import DeepLab, build_model

#: transformers names → ours (first matching rule wins).
HF_RULES = (
    (r"^mobilenet_v2\.conv_stem\.first_conv\.convolution\.", "backbone.features.0.0."),
    (r"^mobilenet_v2\.conv_stem\.first_conv\.normalization\.", "backbone.features.0.1."),
    (r"^mobilenet_v2\.conv_stem\.conv_3x3\.convolution\.", "backbone.features.1.conv.0.0."),
    (r"^mobilenet_v2\.conv_stem\.conv_3x3\.normalization\.", "backbone.features.1.conv.0.1."),
    (r"^mobilenet_v2\.conv_stem\.reduce_1x1\.convolution\.", "backbone.features.1.conv.1."),
    (r"^mobilenet_v2\.conv_stem\.reduce_1x1\.normalization\.", "backbone.features.1.conv.2."),
    (r"^mobilenet_v2\.layer\.(\d+)\.expand_1x1\.convolution\.", r"backbone.features.L\1.conv.0.0."),
    (r"^mobilenet_v2\.layer\.(\d+)\.expand_1x1\.normalization\.",
     r"backbone.features.L\1.conv.0.1."),
    (r"^mobilenet_v2\.layer\.(\d+)\.conv_3x3\.convolution\.", r"backbone.features.L\1.conv.1.0."),
    (r"^mobilenet_v2\.layer\.(\d+)\.conv_3x3\.normalization\.", r"backbone.features.L\1.conv.1.1."),
    (r"^mobilenet_v2\.layer\.(\d+)\.reduce_1x1\.convolution\.", r"backbone.features.L\1.conv.2."),
    (r"^mobilenet_v2\.layer\.(\d+)\.reduce_1x1\.normalization\.", r"backbone.features.L\1.conv.3."),
    (r"^segmentation_head\.conv_aspp\.convolution\.", "aspp.convs.0.0."),
    (r"^segmentation_head\.conv_aspp\.normalization\.", "aspp.convs.0.1."),
    (r"^segmentation_head\.conv_pool\.convolution\.", "aspp.convs.1.1."),
    (r"^segmentation_head\.conv_pool\.normalization\.", "aspp.convs.1.2."),
    (r"^segmentation_head\.conv_projection\.convolution\.", "aspp.project.0."),
    (r"^segmentation_head\.conv_projection\.normalization\.", "aspp.project.1."),
    (r"^segmentation_head\.classifier\.convolution\.", "classifier."),
)  # fmt: skip
HF_DROPPED = ("mobilenet_v2.conv_1x1.",)
#: Our BN epsilon (torchvision's MobileNetV2 and every head BN).
OUR_EPS = 1e-5


def _read(source: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """config.json and the weights of a ``save_pretrained`` folder or a Hub repo."""
    folder = Path(source)
    if folder.is_dir():
        config_file = folder / "config.json"
        weights = next(
            (
                folder / n
                for n in ("model.safetensors", "pytorch_model.bin")
                if (folder / n).is_file()
            ),
            folder / "model.safetensors",
        )
    else:
        config_file = Path(hf_hub_download(str(source), "config.json"))
        try:
            weights = Path(hf_hub_download(str(source), "model.safetensors"))
        except EntryNotFoundError:  # an older repo: its pickle, read tensors-only
            weights = Path(hf_hub_download(str(source), "pytorch_model.bin"))
    settings = json.loads(config_file.read_text())
    if settings.get("model_type") != "mobilenet_v2" or "MobileNetV2ForSemanticSegmentation" not in (
        settings.get("architectures") or []
    ):
        raise ValueError(f"{source} is not a transformers MobileNetV2ForSemanticSegmentation")
    return settings, read_weights(weights)


def _config(settings: dict[str, Any]) -> ModelConfig:
    for key, expected in (("depth_multiplier", 1.0), ("first_layer_is_expansion", True)):
        if settings.get(key, expected) != expected:
            raise ValueError(f"only {key}={expected} converts, got {settings[key]!r}")
    labels = settings.get("id2label") or {}
    return ModelConfig(
        backbone="mobilenetv2",
        decoder=False,
        num_classes=len(labels) or int(settings.get("num_labels", 21)),
        output_stride=int(settings.get("output_stride", 32)),
        separable=True,
        aspp_rates=(),
        tf_padding=bool(settings.get("tf_padding", True)),
        input_mean=(0.5, 0.5, 0.5),  # the image processor scales pixels to [-1, 1]
        input_std=(0.5, 0.5, 0.5),
    )


def _adjust(state: dict[str, torch.Tensor], backbone_eps: float) -> dict[str, torch.Tensor]:
    """Units numbered as torchvision's features, BN eps folded in, projection pool-last."""
    out = {}
    for key, value in state.items():
        if ".L" in key:  # layer.i is torchvision's features.(i + 2)
            head, rest = key.split(".L", 1)
            index, tail = rest.split(".", 1)
            key = f"{head}.{int(index) + 2}.{tail}"
        if key.startswith("backbone.") and key.endswith("running_var"):
            value = value + (backbone_eps - OUR_EPS)
        out[key] = value
    out["aspp.project.0.weight"] = image_pool_last(out["aspp.project.0.weight"])
    return out


def from_transformers(source: str | os.PathLike) -> tuple[DeepLab, tuple[str, ...]]:
    """The converted model and its class names (from the config's ``id2label``)."""
    settings, state = _read(source)
    config = _config(settings)
    state = _adjust(rename(state, HF_RULES, HF_DROPPED), settings.get("layer_norm_eps", 1e-3))
    model = build_model(config)
    load_weights(model, state, source=f"transformers weights from {source}")
    labels = settings.get("id2label") or {}
    names = tuple(labels[k] for k in sorted(labels, key=int)) if labels else ()
    return model.eval(), names


def convert_transformers(
    source: str | os.PathLike, output: str | os.PathLike, palette: list | None = None
) -> Path:
    """A transformers model folder or Hub repo → a saved atrous model folder."""
    model, names = from_transformers(source)
    if palette is None and names == VOC_CLASSES:
        palette = VOC_PALETTE
    model.save_pretrained(output, class_names=names or None, palette=palette)
    return Path(output)
