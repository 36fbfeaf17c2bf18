"""Whole models from torchvision and segmentation_models_pytorch, converted to give the same logits.

    model = from_torchvision(torchvision.models.segmentation.deeplabv3_resnet101(weights=...))
    model = from_smp("path/to/smp_model")  # a folder written by smp's save_pretrained
    convert("DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1", "torchvision", "models/voc")

torchvision ``deeplabv3_resnet50/101``: ASPP at OS8 (rates 12/24/36, dropout 0.5), then a 3×3
conv-BN-ReLU before the classifier, resizes without aligned corners. → DeepLabV3 with
``post_aspp_convs=1``, ``align_corners=False``. ``deeplabv3_mobilenet_v3_large``: the same head on
a MobileNetV3-Large at OS16, still with rates 12/24/36 → backbone ``mobilenetv3_large``. The
ResNets' auxiliary FCN head on ``layer3`` (a training aid) is dropped, or kept as our
``aux_head`` (same layout) with ``aux_head=True``, for fine-tuning with an auxiliary loss.

smp ``DeepLabV3Plus`` (ResNet-50/101 encoders, or ``tu-*`` timm encoders → ``timm:<name>``
backbones, dilated by timm's rule as in smp): separable convs with nothing between depthwise and
pointwise, one separable conv after ASPP and one in the decoder, fixed rates (12/24/36 by default at
any OS), and the whole dilated stage at the new rate. → ``separable_depthwise_bn=False``,
``post_aspp_convs=1``, ``decoder_convs=1``, ``dilate_removed_stride_units=True``. The converted
model returns logits: an smp ``activation`` is not part of the weights.

Names are mapped by explicit rules and every tensor must load, so a layout change in either library
is an error listing the tensors, never a silent partial load.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import hf_hub_download
from torch import nn
from torchvision.models import WeightsEnum, get_weight
from torchvision.models.segmentation import (
    DeepLabV3_MobileNet_V3_Large_Weights,
    DeepLabV3_ResNet50_Weights,
    DeepLabV3_ResNet101_Weights,
)

from atrous.data.palettes import VOC_CLASSES, VOC_PALETTE
from atrous.models.backbones.weights import WEIGHT_FILE_SUFFIXES
from atrous.models.checkpoint import load_weights, read_safetensors, read_weights
from atrous.models.config import ModelConfig
from atrous.models.model import DeepLab, build_model

Rules = tuple[tuple[str, str], ...]
State = dict[str, torch.Tensor]

#: torchvision DeepLabV3 names → ours (first matching rule wins).
TORCHVISION_RULES: Rules = (
    (r"^backbone\.", "backbone."),
    (r"^classifier\.0\.", "aspp."),  # ASPP: same branches, pooling and projection layout
    (r"^classifier\.1\.", "post_aspp.0.0."),  # 3×3 conv
    (r"^classifier\.2\.", "post_aspp.0.1."),  # its BN
    (r"^classifier\.4\.", "classifier."),
)
TORCHVISION_DROPPED = ("aux_classifier.",)
#: torchvision's FCNHead and ours have the same layers (3×3 conv to 256, BN, ReLU, dropout, 1×1).
TORCHVISION_AUX_RULES: Rules = ((r"^aux_classifier\.", "aux_head."),)
TORCHVISION_WEIGHTS = (
    DeepLabV3_ResNet50_Weights,
    DeepLabV3_ResNet101_Weights,
    DeepLabV3_MobileNet_V3_Large_Weights,
)
#: torchvision's MobileNetV3 backbone is its ``features`` under IntermediateLayerGetter.
TORCHVISION_MOBILENETV3_RULES: Rules = (
    (r"^backbone\.(\d+)\.", r"backbone.features.\1."),
    *TORCHVISION_RULES[1:],
)

#: smp DeepLabV3Plus names → ours; its SeparableConv2d is Sequential(depthwise, pointwise) + BN.
SMP_RULES: Rules = (
    (r"^encoder\.", "backbone."),
    (r"^decoder\.aspp\.0\.convs\.([123])\.0\.0\.", r"aspp.convs.\1.depthwise."),
    (r"^decoder\.aspp\.0\.convs\.([123])\.0\.1\.", r"aspp.convs.\1.pointwise."),
    (r"^decoder\.aspp\.0\.convs\.([123])\.1\.", r"aspp.convs.\1.pointwise_bn."),
    (r"^decoder\.aspp\.0\.", "aspp."),  # 1×1 branch, image pooling, projection
    (r"^decoder\.aspp\.1\.0\.", "post_aspp.0.depthwise."),
    (r"^decoder\.aspp\.1\.1\.", "post_aspp.0.pointwise."),
    (r"^decoder\.aspp\.2\.", "post_aspp.0.pointwise_bn."),
    (r"^decoder\.block1\.", "decoder.low_proj."),
    (r"^decoder\.block2\.0\.0\.", "decoder.fuse.0.depthwise."),
    (r"^decoder\.block2\.0\.1\.", "decoder.fuse.0.pointwise."),
    (r"^decoder\.block2\.1\.", "decoder.fuse.0.pointwise_bn."),
    (r"^segmentation_head\.0\.", "classifier."),
)
SMP_DROPPED = ("classification_head.",)
#: smp DeepLabV3Plus defaults for what its weights do not record.
SMP_DEFAULTS: dict[str, Any] = {
    "encoder_output_stride": 16,
    "decoder_atrous_rates": (12, 24, 36),
    "decoder_aspp_dropout": 0.5,
    "encoder_depth": 5,
    "upsampling": 4,
}
#: Units in ResNet stage 3 → our backbone name.
RESNET_BY_STAGE3 = {6: "resnet50", 23: "resnet101"}


def image_pool_last(projection: torch.Tensor) -> torch.Tensor:
    """An ASPP projection weight (out, branches·out, kh, kw) whose input puts the image-pooling
    branch first (the official TF code, transformers, mmsegmentation) → ours, which puts it last
    (torchvision's order). Every branch has as many channels as the projection's output."""
    width = projection.shape[0]
    return torch.cat([projection[:, width:], projection[:, :width]], 1)


def rename(state: Mapping[str, torch.Tensor], rules: Rules, dropped: Sequence[str]) -> State:
    """Map ``state`` to our names by the first matching rule; unmatched names are an error."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    out, unknown = {}, []
    for key, value in state.items():
        if key.startswith(tuple(dropped)):
            continue
        for pattern, replacement in compiled:
            if pattern.match(key):
                out[pattern.sub(replacement, key, count=1)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{len(unknown)} tensors have no counterpart in atrous: {', '.join(unknown[:5])}"
        )
    return out


def _resnet_name(state: Mapping[str, torch.Tensor], prefix: str, what: str) -> str:
    """resnet50/resnet101 from the number of stage-3 bottleneck units under ``prefix``."""
    units = {int(k.split(".")[2]) for k in state if k.startswith(f"{prefix}layer3.")}
    if f"{prefix}layer1.0.conv3.weight" not in state or len(units) not in RESNET_BY_STAGE3:
        raise ValueError(
            f"only {what} with a ResNet-50 or ResNet-101 backbone convert to atrous "
            f"(no bottleneck ResNet found under {prefix!r})"
        )
    return RESNET_BY_STAGE3[len(units)]


def _convert(state: State, config: ModelConfig, source: str) -> DeepLab:
    model = build_model(config)
    load_weights(model, state, strict=True, source=f"converted {source} weights")
    return model.eval()


def _is_file(source: str | os.PathLike) -> bool:
    """A path to a weights file, rather than a weights name or a folder/repo id."""
    return (
        isinstance(source, os.PathLike)
        or Path(source).is_file()
        or str(source).endswith(WEIGHT_FILE_SUFFIXES)
    )


def _torchvision_weights(source: WeightsEnum | str) -> WeightsEnum:
    try:
        weights = get_weight(source) if isinstance(source, str) else source
    except ValueError:
        weights = None
    if not isinstance(weights, TORCHVISION_WEIGHTS):
        choices = ", ".join(str(m) for family in TORCHVISION_WEIGHTS for m in family)
        raise ValueError(
            f"{source!r} is neither a weights file nor torchvision DeepLabV3 ResNet weights "
            f"({choices})"
        )
    return weights


def from_torchvision(
    source: nn.Module | Mapping[str, torch.Tensor] | WeightsEnum | str | os.PathLike,
    *,
    aux_head: bool = False,
) -> DeepLab:
    """A torchvision ``deeplabv3_resnet50/101`` or ``deeplabv3_mobilenet_v3_large`` as an atrous
    DeepLabV3 with the same logits.

    ``source``: the torchvision model, its state dict, a weights enum or name
    (``"DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1"``: downloaded by torchvision, or read
    from the torch hub cache offline), or a ``.pth`` file (read with ``weights_only=True``).
    Published weights come with their class names (PASCAL VOC) and palette. ``aux_head``: keep
    torchvision's auxiliary classifier (``aux_loss=True`` weights) as ``aux_head``, whose
    :meth:`~atrous.models.model.DeepLab.forward_train` output is torchvision's ``"aux"``.
    """
    rates = None
    class_names = None
    if isinstance(source, nn.Module):
        state = source.state_dict()
        convs = source.classifier[0].convs[1:-1]
        rates = tuple(branch[0].dilation[0] for branch in convs)
    elif isinstance(source, Mapping):
        state = dict(source)
    elif isinstance(source, WeightsEnum) or not _is_file(source):
        weights = _torchvision_weights(source)
        state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
        categories = weights.meta["categories"]
        class_names = ["background" if c == "__background__" else c for c in categories]
    else:
        state = read_weights(source)
    config = _torchvision_config(state, rates, aux_head)
    model = _convert(_torchvision_names(state, aux_head), config, "torchvision")
    if class_names is not None:
        model.class_names = tuple(class_names)
        model.palette = VOC_PALETTE if model.class_names == VOC_CLASSES else None
    return model


def _torchvision_config(state: State, rates: tuple[int, ...] | None, aux_head: bool) -> ModelConfig:
    """torchvision DeepLabV3: ResNet-50/101 at OS8 (rates 12/24/36), or MobileNetV3-Large at
    OS16 (rates 12/24/36 too, its last stage dilated as ``dilate_removed_stride_units``)."""
    common = {
        "decoder": False,
        "num_classes": state["classifier.4.weight"].shape[0],
        "aspp_dropout": 0.5,
        "post_aspp_convs": 1,
        "align_corners": False,
        "aux_head": aux_head,
    }
    if not _is_torchvision_mobilenetv3(state):
        return ModelConfig(
            backbone=_resnet_name(state, "backbone.", "torchvision DeepLabV3 models"),
            output_stride=8,  # replace_stride_with_dilation=[False, True, True]
            aspp_rates=None if rates in (None, (12, 24, 36)) else rates,  # None: 12/24/36 at OS8
            **common,
        )
    if aux_head:
        raise ValueError(
            "aux_head: torchvision's MobileNetV3 DeepLabV3 puts its auxiliary classifier on a "
            "stride-8 stage, atrous's aux head on the stride-16 one; convert without aux_head"
        )
    return ModelConfig(
        backbone="mobilenetv3_large",
        output_stride=16,
        aspp_rates=rates or (12, 24, 36),
        dilate_removed_stride_units=True,
        **common,
    )


def _is_torchvision_mobilenetv3(state: Mapping[str, torch.Tensor]) -> bool:
    """A MobileNetV3-Large backbone: torchvision's ``features`` numbering, 960 channels last."""
    last = state.get("backbone.16.0.weight")
    return last is not None and last.shape[0] == 960


def _torchvision_names(state: State, aux_head: bool) -> State:
    """torchvision DeepLabV3 tensors in our names, its auxiliary classifier kept or dropped."""
    if _is_torchvision_mobilenetv3(state):
        return rename(state, TORCHVISION_MOBILENETV3_RULES, TORCHVISION_DROPPED)
    if not aux_head:
        return rename(state, TORCHVISION_RULES, TORCHVISION_DROPPED)
    if "aux_classifier.4.weight" not in state:
        raise ValueError(
            "aux_head: these torchvision weights have no auxiliary classifier (aux_classifier.*; "
            "build the model with aux_loss=True)"
        )
    return rename(state, TORCHVISION_RULES + TORCHVISION_AUX_RULES, ())


def _read_smp_folder(source: str | os.PathLike) -> tuple[dict[str, Any], State]:
    """smp's ``save_pretrained`` output (a folder, or a Hub repo id): config.json + safetensors."""
    folder = Path(source)
    if folder.is_dir():
        config_file, weights_file = folder / "config.json", folder / "model.safetensors"
    else:
        config_file = Path(hf_hub_download(str(source), "config.json"))
        weights_file = Path(hf_hub_download(str(source), "model.safetensors"))
    settings = json.loads(config_file.read_text())
    model_class = settings.get("_model_class", "DeepLabV3Plus")
    if model_class != "DeepLabV3Plus":
        raise ValueError(f"{source} holds an smp {model_class}; only DeepLabV3Plus converts")
    return settings, read_safetensors(weights_file)


def _smp_module_settings(model: nn.Module) -> dict[str, Any]:
    """What an smp DeepLabV3Plus's weights do not record, read from its modules."""
    if type(model).__name__ != "DeepLabV3Plus":
        raise ValueError(f"expected an smp DeepLabV3Plus, got {type(model).__name__}")
    branches = model.decoder.aspp[0].convs[1:4]
    rates = [next(m for m in b.modules() if isinstance(m, nn.Conv2d)).dilation[0] for b in branches]
    encoder = model.encoder
    if type(encoder).__name__ == "TimmUniversalEncoder":
        return {
            "decoder_atrous_rates": rates,
            "encoder_output_stride": encoder._output_stride,
            "encoder_name": f"tu-{encoder.name}",
        }
    output_stride = 32
    for stage in (encoder.layer4, encoder.layer3):
        if stage[0].conv2.stride == (1, 1):
            output_stride //= 2
    return {"decoder_atrous_rates": rates, "encoder_output_stride": output_stride}


def from_smp(
    source: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike,
    *,
    output_stride: int | None = None,
    aspp_rates: Sequence[int] | None = None,
) -> DeepLab:
    """An smp ``DeepLabV3Plus`` (ResNet-50/101 or ``tu-*`` timm encoder) as an atrous
    DeepLabV3+ with the same logits.

    ``source``: the smp model, a folder or Hub repo id written by its ``save_pretrained``, a state
    dict, or a weights file (``.safetensors``, or ``.pth``/``.bin`` read with
    ``weights_only=True``). A bare state dict does not record the output stride or the ASPP
    rates: they default to smp's (16; 12, 24, 36) unless given here.
    """
    settings = dict(SMP_DEFAULTS)
    if isinstance(source, nn.Module):
        settings.update(_smp_module_settings(source))
        state = source.state_dict()
    elif isinstance(source, Mapping):
        state = dict(source)
    elif _is_file(source):
        state = read_weights(source)
    else:
        saved, state = _read_smp_folder(source)
        settings.update({k: v for k, v in saved.items() if v is not None})
    if output_stride is not None:
        settings["encoder_output_stride"] = output_stride
    if aspp_rates is not None:
        settings["decoder_atrous_rates"] = tuple(aspp_rates)
    if settings["encoder_depth"] != 5 or settings["upsampling"] != 4:
        raise ValueError(
            "only smp DeepLabV3Plus with encoder_depth=5 and upsampling=4 (the defaults) "
            f"converts, got {settings['encoder_depth']} and {settings['upsampling']}"
        )
    if "decoder.aspp.0.convs.1.0.0.weight" not in state:
        raise ValueError(
            "smp DeepLabV3Plus with decoder_aspp_separable=False mixes a dense ASPP with separable "
            "decoder convs; atrous has one separable switch for both, so it does not convert"
        )
    channels = state["decoder.aspp.0.project.0.weight"].shape[0]
    backbone, rules = _smp_backbone(state, settings)
    config = ModelConfig(
        backbone=backbone,
        num_classes=state["segmentation_head.0.weight"].shape[0],
        output_stride=settings["encoder_output_stride"],
        separable=True,
        aspp_channels=channels,
        aspp_rates=tuple(settings["decoder_atrous_rates"]),
        aspp_dropout=settings["decoder_aspp_dropout"],
        low_level_channels=state["decoder.block1.0.weight"].shape[0],
        decoder_channels=channels,
        decoder_convs=1,
        post_aspp_convs=1,
        separable_depthwise_bn=False,
        align_corners=True,
        dilate_removed_stride_units=not backbone.startswith("timm:"),  # timm: its own rule
    )
    return _convert(rename(state, rules, SMP_DROPPED), config, "smp")


def _smp_backbone(
    state: Mapping[str, torch.Tensor], settings: Mapping[str, Any]
) -> tuple[str, Rules]:
    """Our backbone name and the renaming rules for an smp encoder: its ResNet-50/101, or a
    ``tu-<name>`` timm encoder (``encoder.model``: timm's feature extractor, as ours)."""
    if not any(k.startswith("encoder.model.") for k in state):
        return _resnet_name(state, "encoder.", "smp DeepLabV3Plus models"), SMP_RULES
    name = str(settings.get("encoder_name", ""))
    if not name.startswith("tu-"):
        raise ValueError(
            "these smp weights hold a timm (tu-*) encoder but not its name: convert the smp "
            "model itself or the folder its save_pretrained wrote (config.json names it)"
        )
    return f"timm:{name[3:]}", ((r"^encoder\.model\.", "backbone.body."), *SMP_RULES[1:])


def convert(
    source: str,
    kind: Literal["torchvision", "smp", "checkpoint"],
    output: str,
    class_names: list[str] | None = None,
    palette: list[list[int]] | None = None,
    output_stride: int | None = None,
    aspp_rates: list[int] | None = None,
    aux_head: bool = False,
) -> Path:
    """Convert a model from torchvision, smp or an atrous training run into an atrous model folder.

    The folder holds ``model.safetensors`` and ``config.json`` and loads with
    ``atrous.load``. Nothing is unpickled: ``.pth`` files are read with ``weights_only=True``.

    Args:
        source: torchvision: a weights name such as
            ``DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1`` (downloaded, or read from the
            torch hub cache offline) or a ``.pth`` file; smp: a folder or Hub repo id written by
            smp's ``save_pretrained``, or a weights file; checkpoint: an atrous ``best.pt``.
        kind: the library the source comes from ("checkpoint": an atrous training checkpoint).
        output: folder to write the model to.
        class_names: one name per class (torchvision's published weights bring PASCAL VOC's).
        palette: one [r, g, b] colour per class.
        output_stride: smp weights files only: the output stride they were trained at (16).
        aspp_rates: smp weights files only: the ASPP rates (12, 24, 36).
        aux_head: torchvision only: keep its auxiliary FCN head in the folder, a starting point
            for fine-tuning with an auxiliary loss (``--run.init_from`` with
            ``--model.aux_head true``); saved inference models otherwise leave it out.
    """
    if kind != "smp" and (output_stride is not None or aspp_rates is not None):
        raise ValueError("output_stride and aspp_rates apply to smp sources only")
    if aux_head and kind != "torchvision":
        raise ValueError("aux_head applies to torchvision sources only")
    if kind == "torchvision":
        model = from_torchvision(source, aux_head=aux_head)
    elif kind == "smp":
        model = from_smp(source, output_stride=output_stride, aspp_rates=aspp_rates)
    elif kind == "checkpoint":
        model = DeepLab.from_checkpoint(source)
    else:
        raise ValueError(f"kind must be 'torchvision', 'smp' or 'checkpoint', got {kind!r}")
    model.save_pretrained(output, class_names=class_names, palette=palette, keep_aux_head=aux_head)
    return Path(output)
