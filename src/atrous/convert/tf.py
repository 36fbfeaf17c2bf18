"""The official TensorFlow DeepLab checkpoints (research/deeplab model zoo), converted exactly.

    model = from_tf_checkpoint("deeplabv3_pascal_train_aug_2018_01_04.tar.gz", crop_size=(513, 513))

Every variable is accounted for: each model tensor comes from exactly one named variable, and
what is left over must be one of :data:`DROPPED` (optimizer slots, the step counter, ImageNet
classifiers), or the conversion fails listing it. The configuration is read from the variables
themselves (backbone, DeepLabV3 or V3+, separable or dense ASPP/decoder, atrous branches, class
count); what they cannot tell (the training crop, for the image-pooling kernel) is an argument.

Layouts: conv kernels are (kh, kw, in, out) in TF and (out, in, kh, kw) here; depthwise kernels
(kh, kw, in, 1) become (in, 1, kh, kw). The official ASPP concatenates the image-pooling branch
first, ours last (torchvision's order), so the projection's input channels are rotated. BN
epsilon is 1e-3 in the official Xception and MobileNetV2 backbones and 1e-5 elsewhere; atrous's
MobileNetV2 (torchvision's layers) uses 1e-5, so its moving variances take the difference (exact
in inference: BN divides by sqrt(var + eps)). Every official backbone scales pixels to [-1, 1],
which the converted configuration records (``input_mean``/``input_std``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from atrous.convert.tf_checkpoint import read_tf_checkpoint
from atrous.convert.torch_models import image_pool_last
from atrous.data import DataConfig, dataset_labels
from atrous.models.backbones.mobilenet import make_divisible, official_channels
from atrous.models.checkpoint import load_weights
from atrous.models.config import ModelConfig
from atrous.models.model import DeepLab, build_model

#: Variables a converted model does not use, and why.
DROPPED: tuple[tuple[str, str], ...] = (
    (r"(^|/)global_step$", "the training step counter"),
    (r"/(Momentum|Adam(_1)?|RMSProp(_1)?)$", "an optimizer slot"),
    (r"/ExponentialMovingAverage$", "a moving average kept for evaluation by the trainer"),
    (r"^(xception_\d+|resnet_v1_\d+)/logits/", "the ImageNet classifier"),
    (r"^MobilenetV2/(Logits|Conv_1)/", "MobileNetV2's ImageNet head (DeepLab stops at layer 18)"),
)
#: The official backbone scopes → atrous backbone names.
BACKBONE_SCOPES = {
    "xception_41": "xception41",
    "xception_65": "xception65",
    "xception_71": "xception71",
    "resnet_v1_50": "resnet50_beta",
    "resnet_v1_101": "resnet101_beta",
    "MobilenetV2": "mobilenetv2",
}
#: Official variants atrous cannot build: a variable-name pattern → what atrous lacks for it.
UNSUPPORTED = (
    (r"^MobilenetV3", "a MobileNetV3 backbone (and its LR-ASPP head)"),
    (r"^MobilenetEdgeTPU", "a MobileNet-EdgeTPU backbone"),
    (r"^dense_prediction_cell/", "the dense prediction cell (DPC) head"),
    (r"^(cell_\d+|.*nasnet)/", "a NAS backbone (PNASNet, Auto-DeepLab/HNASNet)"),
)
#: MobileNetV2 channel roundings (divisible_by, min_depth) tried on a checkpoint's shapes:
#: torchvision's and the official at depth 1.0, then the official at any other depth.
MOBILENET_ROUNDINGS = ((8, 8), (1, 1))
#: The official preprocessing: pixels on [0, 1] to [-1, 1].
TF_MEAN, TF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
#: BN epsilon of the official MobileNetV2 (slim's mobilenet training scope).
MOBILENET_TF_EPS = 1e-3
_BN = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}


@dataclass(frozen=True)
class Variable:
    """Where one model tensor comes from: a TF variable name and how its layout changes."""

    name: str
    layout: str  # "conv", "depthwise", "vector", "pool_first" or "mobilenet_var"


Sources = dict[str, Variable]


def _conv_bn(ours: str, conv: str, bn: str | None, theirs: str, depthwise: bool = False) -> Sources:
    """A conv (no bias) and the BN after it: ``ours.conv``/``ours.bn`` ← ``theirs/...``."""
    kernel = "depthwise_weights" if depthwise else "weights"
    out = {
        f"{ours}{conv}.weight": Variable(f"{theirs}/{kernel}", "depthwise" if depthwise else "conv")
    }
    if bn is not None:
        for param, tf_param in _BN.items():
            out[f"{ours}{bn}.{param}"] = Variable(f"{theirs}/BatchNorm/{tf_param}", "vector")
    return out


def _xception_units(variant: str) -> list[str]:
    """Official unit scopes in order: entry blocks, middle units, the two exit blocks."""
    entry = 5 if variant == "xception71" else 3
    middle = 8 if variant == "xception41" else 16
    return (
        [f"entry_flow/block{i}/unit_1" for i in range(1, entry + 1)]
        + [f"middle_flow/block1/unit_{i}" for i in range(1, middle + 1)]
        + ["exit_flow/block1/unit_1", "exit_flow/block2/unit_1"]
    )


def _xception(variant: str, scope: str, model: DeepLab) -> Sources:
    out = _conv_bn("backbone.stem.0.", "0", "1", f"{scope}/entry_flow/conv1_1")
    out |= _conv_bn("backbone.stem.1.", "0", "1", f"{scope}/entry_flow/conv1_2")
    for index, unit in enumerate(_xception_units(variant)):
        ours, theirs = f"backbone.blocks.{index}.", f"{scope}/{unit}/xception_module"
        for j in range(3):
            conv = f"{theirs}/separable_conv{j + 1}"
            out |= _conv_bn(
                f"{ours}convs.{j}.", "depthwise", "depthwise_bn", f"{conv}_depthwise", True
            )
            out |= _conv_bn(f"{ours}convs.{j}.", "pointwise", "pointwise_bn", f"{conv}_pointwise")
        if model.backbone.blocks[index].shortcut is not None:
            out |= _conv_bn(f"{ours}shortcut.", "0", "1", f"{theirs}/shortcut")
    return out


def _resnet_beta(scope: str, model: DeepLab) -> Sources:
    out = _conv_bn("backbone.conv1.", "0", "1", f"{scope}/conv1_1")
    out |= _conv_bn("backbone.conv1.", "3", "4", f"{scope}/conv1_2")
    out |= _conv_bn("backbone.", "conv1.6", "bn1", f"{scope}/conv1_3")
    for stage in range(1, 5):
        for index, unit in enumerate(getattr(model.backbone, f"layer{stage}")):
            ours = f"backbone.layer{stage}.{index}."
            theirs = f"{scope}/block{stage}/unit_{index + 1}/bottleneck_v1"
            for k in (1, 2, 3):
                out |= _conv_bn(ours, f"conv{k}", f"bn{k}", f"{theirs}/conv{k}")
            if isinstance(unit.downsample, torch.nn.Sequential):  # a conv, not a subsample
                out |= _conv_bn(f"{ours}downsample.", "0", "1", f"{theirs}/shortcut")
    return out


def _mobilenet(scope: str, model: DeepLab) -> Sources:
    out = _conv_bn("backbone.features.0.", "0", "1", f"{scope}/Conv")
    for index in range(1, len(model.backbone.features)):
        ours = f"backbone.features.{index}.conv."
        theirs = f"{scope}/expanded_conv" + (f"_{index - 1}" if index > 1 else "")
        parts = [] if index == 1 else [("0.0", "0.1", "expand", False)]
        offset = 0 if index == 1 else 1
        parts.append((f"{offset}.0", f"{offset}.1", "depthwise", True))
        parts.append((f"{offset + 1}", f"{offset + 2}", "project", False))
        for conv, bn, name, depthwise in parts:
            out |= _conv_bn(ours, conv, bn, f"{theirs}/{name}", depthwise)
    return {
        key: Variable(v.name, "mobilenet_var") if key.endswith("running_var") else v
        for key, v in out.items()
    }


def _aspp(model: DeepLab) -> Sources:
    config, aspp = model.config, model.aspp
    out = _conv_bn("aspp.convs.0.", "0", "1", "aspp0")
    atrous_branches = len(aspp.convs) - 2
    for i in range(1, atrous_branches + 1):
        if config.separable:
            out |= _conv_bn(
                f"aspp.convs.{i}.", "depthwise", "depthwise_bn", f"aspp{i}_depthwise", True
            )
            out |= _conv_bn(f"aspp.convs.{i}.", "pointwise", "pointwise_bn", f"aspp{i}_pointwise")
        else:
            out |= _conv_bn(f"aspp.convs.{i}.", "0", "1", f"aspp{i}")
    out |= _conv_bn(f"aspp.convs.{atrous_branches + 1}.", "1", "2", "image_pooling")
    out |= _conv_bn("aspp.project.", "0", "1", "concat_projection")
    out["aspp.project.0.weight"] = Variable("concat_projection/weights", "pool_first")
    return out


def _decoder(model: DeepLab) -> Sources:
    out = _conv_bn("decoder.low_proj.", "0", "1", "decoder/feature_projection0")
    for i in range(model.config.decoder_convs):
        ours, theirs = f"decoder.fuse.{i}.", f"decoder/decoder_conv{i}"
        if model.config.separable:
            out |= _conv_bn(ours, "depthwise", "depthwise_bn", f"{theirs}_depthwise", True)
            out |= _conv_bn(ours, "pointwise", "pointwise_bn", f"{theirs}_pointwise")
        else:
            out |= _conv_bn(ours, "0", "1", theirs)
    return out


def backbone_variables(model: DeepLab, scope: str) -> Sources:
    """Our backbone tensor names → the official variables they come from."""
    name = model.config.backbone
    if name.startswith("xception"):
        return _xception(name, scope, model)
    if name.startswith("resnet"):
        return _resnet_beta(scope, model)
    return _mobilenet(scope, model)


def model_variables(model: DeepLab, scope: str) -> Sources:
    """Every tensor of ``model`` (BN counters aside) → the official variable it comes from."""
    out = backbone_variables(model, scope) | _aspp(model)
    if model.config.decoder:
        out |= _decoder(model)
    out["classifier.weight"] = Variable("logits/semantic/weights", "conv")
    out["classifier.bias"] = Variable("logits/semantic/biases", "vector")
    return out


def _refuse_unsupported(names: Mapping[str, object]) -> None:
    for pattern, what in UNSUPPORTED:
        hit = next((name for name in names if re.search(pattern, name)), None)
        if hit is not None:
            raise ValueError(
                f"this checkpoint needs {what}, which atrous does not have (variable {hit}); "
                f"supported: DeepLabV3/V3+ with ASPP on {', '.join(BACKBONE_SCOPES)}"
            )


def _mobilenet_channels(variables: Mapping[str, np.ndarray], scope: str) -> list[int]:
    """The stem's and the 17 units' output channels, read from the checkpoint's kernels."""
    units = [f"{scope}/expanded_conv" + (f"_{i}" if i else "") for i in range(17)]
    names = [f"{scope}/Conv/weights", *(f"{unit}/project/weights" for unit in units)]
    missing = [name for name in names if name not in variables]
    if missing:
        raise ValueError(f"not the official MobileNetV2 layout: no {', '.join(missing[:3])}")
    return [int(variables[name].shape[-1]) for name in names]


def mobilenet_options(variables: Mapping[str, np.ndarray], scope: str) -> dict[str, object]:
    """The width multiplier and channel rounding that give exactly the checkpoint's channels
    (its expansions included), as ModelConfig fields."""
    channels = _mobilenet_channels(variables, scope)
    width = channels[-1] / 320
    for divisible_by, min_depth in MOBILENET_ROUNDINGS:
        if official_channels(width, divisible_by, min_depth) != channels:
            continue
        expansions = [
            (variables[f"{scope}/expanded_conv_{i}/expand/weights"].shape[-1], channels[i])
            for i in range(1, 17)
        ]
        if all(hidden == make_divisible(6 * inp, 8, 8) for hidden, inp in expansions):
            return {"width_multiplier": width, "divisible_by": divisible_by, "min_depth": min_depth}
    raise ValueError(
        f"MobileNetV2 channels {'/'.join(map(str, channels))} fit no width multiplier with "
        "slim's channel rounding (divisible_by 8 or 1); atrous cannot build this network"
    )


def _backbone_options(variables: Mapping[str, np.ndarray], scope: str) -> dict[str, object]:
    return mobilenet_options(variables, scope) if scope == "MobilenetV2" else {}


def _backbone_scope(names: Mapping[str, object]) -> str:
    _refuse_unsupported(names)
    scopes = sorted({name.split("/")[0] for name in names} & BACKBONE_SCOPES.keys())
    if len(scopes) != 1:
        found = ", ".join(scopes) or "none"
        raise ValueError(
            f"expected the variables of one official backbone ({', '.join(BACKBONE_SCOPES)}), "
            f"found {found}; plain resnet_v1 (7×7 root) and NAS backbones are not supported"
        )
    return scopes[0]


def _separable(variables: Mapping[str, np.ndarray]) -> bool:
    aspp = "aspp1_depthwise/depthwise_weights" in variables
    decoder = "decoder/decoder_conv0_depthwise/depthwise_weights" in variables
    has_decoder = "decoder/feature_projection0/weights" in variables
    if _has_atrous_branches(variables) and has_decoder and aspp != decoder:
        raise ValueError("separable ASPP with a dense decoder (or the reverse) is not supported")
    return aspp or decoder


def config_from_variables(
    variables: Mapping[str, np.ndarray], crop_size: tuple[int, int] | None = None
) -> ModelConfig:
    """The model a DeepLab checkpoint's variables describe (``crop_size``: the training crop,
    which sets the image-pooling kernel as the official ``crop_size`` flag does)."""
    if "logits/semantic/weights" not in variables:
        raise ValueError(
            "no logits/semantic/weights: this is a backbone (ImageNet) checkpoint, not a "
            "segmentation model; convert it with from_tf_backbone"
        )
    decoder_convs = sum(
        f"decoder/decoder_conv{i}{suffix}" in variables
        for i in range(4)
        for suffix in ("/weights", "_pointwise/weights")
    )
    scope = _backbone_scope(variables)
    return ModelConfig(
        backbone=BACKBONE_SCOPES[scope],
        decoder="decoder/feature_projection0/weights" in variables,
        num_classes=int(variables["logits/semantic/weights"].shape[-1]),
        separable=_separable(variables),
        aspp_rates=None if _has_atrous_branches(variables) else (),
        image_pool_crop_size=crop_size,
        decoder_convs=decoder_convs or 2,
        input_mean=TF_MEAN,  # every official backbone here scales pixels to [-1, 1]
        input_std=TF_STD,
        **_backbone_options(variables, scope),
    )


def _has_atrous_branches(variables: Mapping[str, np.ndarray]) -> bool:
    return any(name.startswith("aspp1") for name in variables)


def _tensor(variable: Variable, array: np.ndarray) -> torch.Tensor:
    if variable.layout == "conv":  # (kh, kw, in, out) → (out, in, kh, kw)
        array = array.transpose(3, 2, 0, 1)
    elif variable.layout == "depthwise":  # (kh, kw, in, 1) → (in, 1, kh, kw)
        kh, kw, channels, multiplier = array.shape
        array = array.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw)
    elif variable.layout == "pool_first":  # the official concat puts image pooling first
        return image_pool_last(_tensor(Variable(variable.name, "conv"), array))
    elif variable.layout == "mobilenet_var":  # the official eps 1e-3 on our eps-1e-5 BN
        array = array + (MOBILENET_TF_EPS - 1e-5)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


@dataclass(frozen=True)
class TFConversion:
    """What a conversion used and what it left out (reason → variable count)."""

    converted: int
    dropped: dict[str, int]

    def describe(self) -> str:
        left = ", ".join(f"{n} {reason}" for reason, n in self.dropped.items()) or "none"
        return f"{self.converted} variables converted; dropped: {left}"


def _account(variables: Mapping[str, np.ndarray], wanted: Sources) -> TFConversion:
    """Check that every wanted variable exists and every other one is a known drop."""
    missing = sorted({v.name for v in wanted.values()} - set(variables))
    used = {v.name for v in wanted.values()}
    dropped: dict[str, int] = {}
    unknown = []
    for name in sorted(set(variables) - used):
        reason = next((why for pattern, why in DROPPED if re.search(pattern, name)), None)
        if reason is None:
            unknown.append(name)
        else:
            dropped[reason] = dropped.get(reason, 0) + 1
    if missing or unknown:
        lines = []
        if missing:
            lines.append(f"{len(missing)} missing: {', '.join(missing[:5])}")
        if unknown:
            lines.append(f"{len(unknown)} with no counterpart in atrous: {', '.join(unknown[:5])}")
        raise ValueError("the checkpoint does not fit the model it describes:\n" + "\n".join(lines))
    return TFConversion(len(used), dropped)


def from_tf_variables(
    variables: Mapping[str, np.ndarray], crop_size: tuple[int, int] | None = None
) -> tuple[DeepLab, TFConversion]:
    """A DeepLab model with the checkpoint's weights, and the account of its variables."""
    config = config_from_variables(variables, crop_size)
    model = build_model(config)
    wanted = model_variables(model, _backbone_scope(variables))
    report = _account(variables, wanted)
    state = {key: _tensor(v, variables[v.name]) for key, v in wanted.items()}
    load_weights(model, state, source="TensorFlow checkpoint")
    return model.eval(), report


def tf_backbone_state(variables: Mapping[str, np.ndarray]) -> tuple[str, dict, TFConversion]:
    """An ImageNet checkpoint's backbone as (backbone name, our state dict, account): ready for
    ``run.backbone_weights`` once saved as safetensors."""
    scope = _backbone_scope(variables)
    name = BACKBONE_SCOPES[scope]
    with torch.device("meta"):
        config = ModelConfig(backbone=name, num_classes=1, **_backbone_options(variables, scope))
        model = build_model(config)
    wanted = {
        key.removeprefix("backbone."): v for key, v in backbone_variables(model, scope).items()
    }
    report = _account(variables, wanted)
    return name, {key: _tensor(v, variables[v.name]) for key, v in wanted.items()}, report


def from_tf_checkpoint(
    source: str | os.PathLike, crop_size: tuple[int, int] | None = None
) -> tuple[DeepLab, TFConversion]:
    """Read a model-zoo tarball, its folder or a checkpoint prefix and convert it."""
    return from_tf_variables(read_tf_checkpoint(source), crop_size)


def drop_first_class(model: DeepLab) -> DeepLab:
    """The model without class 0: the official ADE20K models predict 151 classes whose 0
    ("other") is the ignore label in training; atrous's ADE20K reader has the other 150."""
    config = model.config.replace(num_classes=model.num_classes - 1)
    smaller = build_model(config)
    state = model.state_dict()
    state["classifier.weight"] = state["classifier.weight"][1:]
    state["classifier.bias"] = state["classifier.bias"][1:]
    smaller.load_state_dict(state)
    return smaller.eval()


def convert_tf(
    source: str | os.PathLike,
    output: str | os.PathLike,
    crop_size: tuple[int, int] | None = None,
    dataset: str | None = None,
) -> tuple[Path, TFConversion]:
    """An official checkpoint → a saved atrous model folder, or for an ImageNet (backbone-only)
    checkpoint ``backbone.safetensors`` for ``run.backbone_weights``. ``dataset`` (voc,
    cityscapes, ade20k) names the classes and their colours."""
    variables = read_tf_checkpoint(source)
    output = Path(output)
    if "logits/semantic/weights" not in variables:
        _, state, report = tf_backbone_state(variables)
        output.mkdir(parents=True, exist_ok=True)
        save_file(state, output / "backbone.safetensors")
        return output / "backbone.safetensors", report
    model, report = from_tf_variables(variables, crop_size)
    names = palette = None
    if dataset is not None:
        names, palette = dataset_labels(DataConfig(dataset=dataset))
        if dataset == "ade20k" and model.num_classes == len(names) + 1:
            model = drop_first_class(model)
    model.save_pretrained(output, class_names=names, palette=palette)
    return output, report
