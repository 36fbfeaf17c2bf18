"""mmsegmentation's DeepLabV3+ checkpoints (ResNetV1c-50/101-D8), converted to equal logits.

    model, names = from_mmseg("deeplabv3plus_r101-d8_512x512_40k_voc12aug_20200613_205333.pth")

Its layout, as atrous options: ``ResNetV1c`` (a 32/32/64 deep stem, torchvision's stride
placement; ``resnet*_v1c``) at output stride 8; ``DepthwiseSeparableASPPHead`` with 512-channel
branches at rates 12/24/36, separable convs with BN + ReLU between depthwise and pointwise, the
image-pooling branch concatenated first (ours: last, so the projection's input channels rotate)
and a 3×3 projection (``aspp_projection_kernel=3``); a decoder of 48 low-level channels and two
512-channel separable convs; every resize without aligned corners; BN eps 1e-5. The auxiliary
FCN head is a training aid and is dropped. Checkpoints are read with ``weights_only=True``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from atrous.convert.torch_models import RESNET_BY_STAGE3, image_pool_last, rename
from atrous.models.checkpoint import load_checkpoint, load_weights
from atrous.models.config import ModelConfig
from atrous.models.model import DeepLab, build_model

MMSEG_RULES = (
    (r"^backbone\.stem\.([0134])\.", r"backbone.conv1.\1."),
    (r"^backbone\.stem\.6\.", "backbone.conv1.6."),
    (r"^backbone\.stem\.7\.", "backbone.bn1."),
    (r"^backbone\.", "backbone."),
    (r"^decode_head\.image_pool\.1\.conv\.", "aspp.convs.POOL.1."),
    (r"^decode_head\.image_pool\.1\.bn\.", "aspp.convs.POOL.2."),
    (r"^decode_head\.aspp_modules\.0\.conv\.", "aspp.convs.0.0."),
    (r"^decode_head\.aspp_modules\.0\.bn\.", "aspp.convs.0.1."),
    (r"^decode_head\.aspp_modules\.(\d)\.depthwise_conv\.conv\.", r"aspp.convs.\1.depthwise."),
    (r"^decode_head\.aspp_modules\.(\d)\.depthwise_conv\.bn\.", r"aspp.convs.\1.depthwise_bn."),
    (r"^decode_head\.aspp_modules\.(\d)\.pointwise_conv\.conv\.", r"aspp.convs.\1.pointwise."),
    (r"^decode_head\.aspp_modules\.(\d)\.pointwise_conv\.bn\.", r"aspp.convs.\1.pointwise_bn."),
    (r"^decode_head\.bottleneck\.conv\.", "aspp.project.0."),
    (r"^decode_head\.bottleneck\.bn\.", "aspp.project.1."),
    (r"^decode_head\.c1_bottleneck\.conv\.", "decoder.low_proj.0."),
    (r"^decode_head\.c1_bottleneck\.bn\.", "decoder.low_proj.1."),
    (r"^decode_head\.sep_bottleneck\.(\d)\.depthwise_conv\.conv\.", r"decoder.fuse.\1.depthwise."),
    (r"^decode_head\.sep_bottleneck\.(\d)\.depthwise_conv\.bn\.", r"decoder.fuse.\1.depthwise_bn."),
    (r"^decode_head\.sep_bottleneck\.(\d)\.pointwise_conv\.conv\.", r"decoder.fuse.\1.pointwise."),
    (r"^decode_head\.sep_bottleneck\.(\d)\.pointwise_conv\.bn\.", r"decoder.fuse.\1.pointwise_bn."),
    (r"^decode_head\.conv_seg\.", "classifier."),
)  # fmt: skip
MMSEG_DROPPED = ("auxiliary_head.",)
#: What mmsegmentation's DeepLabV3+ configs use and its weights do not record.
MMSEG_OUTPUT_STRIDE, MMSEG_RATES = 8, (12, 24, 36)


def mmseg_config(
    state: dict[str, torch.Tensor],
    output_stride: int = MMSEG_OUTPUT_STRIDE,
    rates: Sequence[int] = MMSEG_RATES,
) -> ModelConfig:
    """The atrous configuration of an mmsegmentation DeepLabV3+ state dict."""
    if "decode_head.sep_bottleneck.0.depthwise_conv.conv.weight" not in state:
        raise ValueError("not an mmsegmentation DeepLabV3+ (no decode_head.sep_bottleneck)")
    units = {int(k.split(".")[2]) for k in state if k.startswith("backbone.layer3.")}
    if "backbone.stem.0.weight" not in state or len(units) not in RESNET_BY_STAGE3:
        raise ValueError("only ResNetV1c-50/101 backbones (deep stem) convert from mmsegmentation")
    aspp = state["decode_head.aspp_modules.0.conv.weight"].shape[0]
    return ModelConfig(
        backbone=f"{RESNET_BY_STAGE3[len(units)]}_v1c",
        num_classes=state["decode_head.conv_seg.weight"].shape[0],
        output_stride=output_stride,
        separable=True,
        aspp_channels=aspp,
        aspp_rates=tuple(rates),
        low_level_channels=state["decode_head.c1_bottleneck.conv.weight"].shape[0],
        decoder_channels=state["decode_head.sep_bottleneck.0.pointwise_conv.conv.weight"].shape[0],
        aspp_projection_kernel=state["decode_head.bottleneck.conv.weight"].shape[-1],
        align_corners=False,
    )


def _read(source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], tuple[str, ...] | None]:
    """The state dict and, when the checkpoint's metadata has them, the class names."""
    checkpoint = load_checkpoint(source)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{source} holds no mmsegmentation checkpoint")
    state = checkpoint.get("state_dict", checkpoint)
    meta = checkpoint.get("meta") or {}
    classes = (meta.get("dataset_meta") or {}).get("classes") or meta.get("CLASSES")
    return state, tuple(classes) if classes else None


def from_mmseg(
    source: str | os.PathLike | dict[str, torch.Tensor],
    output_stride: int = MMSEG_OUTPUT_STRIDE,
    rates: Sequence[int] = MMSEG_RATES,
) -> tuple[DeepLab, tuple[str, ...] | None]:
    """The converted model and the checkpoint's class names (None when it records none)."""
    state, names = (dict(source), None) if isinstance(source, dict) else _read(source)
    config = mmseg_config(state, output_stride, rates)
    model = build_model(config)
    pool = len(model.aspp.convs) - 1
    renamed = {
        key.replace("POOL", str(pool)): value
        for key, value in rename(state, MMSEG_RULES, MMSEG_DROPPED).items()
    }
    renamed["aspp.project.0.weight"] = image_pool_last(renamed["aspp.project.0.weight"])
    load_weights(model, renamed, source="mmsegmentation weights")
    return model.eval(), names


def convert_mmseg(
    source: str | os.PathLike,
    output: str | os.PathLike,
    output_stride: int | None = None,
    rates: Sequence[int] | None = None,
    dataset_labels: tuple[Sequence[str], Sequence] | None = None,
) -> Path:
    """An mmsegmentation checkpoint → a saved atrous model folder (class names from the
    checkpoint's metadata, or ``dataset_labels`` = (names, palette))."""
    model, names = from_mmseg(source, output_stride or MMSEG_OUTPUT_STRIDE, rates or MMSEG_RATES)
    palette = None
    if dataset_labels is not None:
        names, palette = dataset_labels
    model.save_pretrained(output, class_names=names, palette=palette)
    return Path(output)
