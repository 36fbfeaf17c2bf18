"""Any timm encoder with atrous convolution: ``ModelConfig(backbone="timm:<name>")``.

timm builds the encoder (``features_only=True``) and dilates it itself when given
``output_stride``: each family has its own rule for which unit takes which rate, so atrous does
not walk the units as :func:`~atrous.models.backbones.base.apply_output_stride` does. The features
are chosen by the reductions timm declares in ``feature_info``: ``"low"`` is the feature at
stride 4, ``"high"`` the last one, ``"aux"`` the last whose stride is 16 at output stride 32 (at
OS8 the same stage, dilated). After building, a forward pass measures the reductions actually
reached; a model that cannot dilate (timm raises, or ignores ``output_stride``) is refused with the
reason.

:meth:`TimmBackbone.set_output_stride` rebuilds the encoder at the new stride and moves the same
``Parameter`` and buffer objects into it, so the weights, their device and an optimizer holding them
are unchanged.

ImageNet weights come through timm's own loading (``pretrained=True``: the Hugging Face cache,
``~/.cache/huggingface/hub``): ``backbone_weights="DEFAULT"`` or a timm tag such as ``"a1_in1k"``
(:func:`timm_state_dict`). timm is optional: ``pip install 'atrous[timm]'``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from atrous.models.backbones.base import Backbone, StridedUnit
from atrous.models.layers import check_output_stride

#: Backbone names of the form ``timm:<model name>`` are timm encoders.
TIMM_PREFIX = "timm:"
#: Side of the blank image whose features measure the reductions reached (a multiple of 32).
PROBE_SIZE = 64
#: Stride of the low-level feature the decoder reads (paper §3.1).
LOW_STRIDE = 4


def is_timm_name(name: str) -> bool:
    """Whether ``name`` names a timm encoder (``timm:<model name>``)."""
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def require_timm() -> ModuleType:
    """The timm package, or an ImportError naming the extra that installs it."""
    try:
        import timm
    except ImportError:
        raise ImportError(
            "timm backbones (timm:<name>) need the timm package: pip install 'atrous[timm]'"
        ) from None
    return timm


def timm_model_name(name: str) -> str:
    """``timm:resnet18`` → ``resnet18``, checked to be a timm model."""
    model = name[len(TIMM_PREFIX) :] if is_timm_name(name) else name
    timm = require_timm()
    if not model or not timm.is_model(model.split(".", 1)[0]):
        raise ValueError(
            f"unknown timm model {model!r} (backbone {name!r}); list them with "
            "timm.list_models('<pattern>'), e.g. timm.list_models('resnet*')"
        )
    return model


def timm_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the images timm's pretrained weights for ``name`` expect (ImageNet's for
    most)."""
    timm = require_timm()
    model = timm_model_name(name)
    config = timm.models.get_pretrained_cfg(model) or timm.models.get_pretrained_cfg(
        model.split(".", 1)[0]
    )
    mean = getattr(config, "mean", None) or (0.485, 0.456, 0.406)
    std = getattr(config, "std", None) or (0.229, 0.224, 0.225)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _create(
    model: str, output_stride: int, in_channels: int, device: str | None = None
) -> nn.Module:
    """timm's feature extractor for ``model`` at ``output_stride``, or a ValueError why not.
    On the ``"meta"`` device it is built without initialising weights (to receive others)."""
    timm = require_timm()
    kwargs: dict[str, Any] = {"output_stride": output_stride} if output_stride != 32 else {}
    try:
        with torch.device(device) if device else contextlib.nullcontext():
            return timm.create_model(model, features_only=True, in_chans=in_channels, **kwargs)
    except (TypeError, AssertionError) as error:
        if isinstance(error, TypeError) and "output_stride" not in str(error):
            raise
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise ValueError(
            f"timm model {model!r} cannot run at output stride {output_stride}: timm has no "
            f"atrous (dilated) version of it ({reason}); use output_stride 32 or another encoder"
        ) from None
    except RuntimeError as error:
        if "features_only" not in str(error):
            raise
        raise ValueError(
            f"timm model {model!r} has no feature extractor (features_only), so it cannot be a "
            f"DeepLab encoder: {error}"
        ) from None


def _nominal(reductions: list[int]) -> list[int]:
    """Reductions at output stride 32 from those reached: each timm feature level halves the
    resolution, so a level that kept its predecessor's stride was dilated by 2."""
    nominal: list[int] = []
    for index, reduction in enumerate(reductions):
        grew = index == 0 or reduction > reductions[index - 1]
        nominal.append(reduction if grew else nominal[-1] * 2)
    return nominal


@torch.no_grad()
def _measured_reductions(body: nn.Module, in_channels: int, channels_last: bool) -> list[int]:
    """Reductions reached by each feature on a PROBE_SIZE² image, run on the meta device (shapes
    only: no arithmetic, and the BN statistics are untouched)."""
    image = torch.empty(1, in_channels, PROBE_SIZE, PROBE_SIZE, device="meta")
    state = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in [*body.named_parameters(), *body.named_buffers()]
    }
    was_training = body.training
    body.eval()
    try:
        features = functional_call(body, state, (image,))
    finally:
        body.train(was_training)
    axis = 1 if channels_last else -1
    return [PROBE_SIZE // f.shape[axis] for f in features]


def _check_reductions(model: str, body: nn.Module, output_stride: int, in_channels: int) -> None:
    declared = list(body.feature_info.reduction())
    channels_last = getattr(body, "output_fmt", "NCHW") == "NHWC"
    measured = _measured_reductions(body, in_channels, channels_last)
    if measured[-1] != output_stride or declared[-1] != output_stride:
        raise ValueError(
            f"timm model {model!r} does not dilate: asked for output stride {output_stride}, its "
            f"last feature runs at stride {measured[-1]} (timm ignores output_stride for it); use "
            f"output_stride {measured[-1]} if DeepLab allows it, or another encoder"
        )
    if LOW_STRIDE not in declared or measured[declared.index(LOW_STRIDE)] != LOW_STRIDE:
        raise ValueError(
            f"timm model {model!r} has no feature at stride {LOW_STRIDE} for the decoder (its "
            f"features are at strides {declared})"
        )


def _adopt(old: nn.Module, new: nn.Module) -> None:
    """Put ``old``'s Parameter and buffer objects (and train/eval flags) into ``new``, whose
    layout must be the same."""
    old_modules = dict(old.named_modules())
    new_modules = dict(new.named_modules())
    old_state = {k: tuple(v.shape) for k, v in old.state_dict().items()}
    new_state = {k: tuple(v.shape) for k, v in new.state_dict().items()}
    if old_modules.keys() != new_modules.keys() or old_state != new_state:
        raise ValueError(
            "cannot change the output stride of this timm backbone: its modules are no longer "
            "those timm builds (converted to SyncBatchNorm, or folded for inference?); set the "
            "output stride before converting it"
        )
    for name, module in new_modules.items():
        source = old_modules[name]
        module._parameters.update(source._parameters)
        module._buffers.update(source._buffers)
        module.training = source.training
    left = [n for n, t in [*new.named_parameters(), *new.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"timm backbone rebuild left tensors without values: {left[:5]}")


class TimmBackbone(Backbone):
    """A timm feature extractor behind the backbone contract (``body``: timm's own module)."""

    stem_stride = 2

    def __init__(self, name: str, output_stride: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        self.model_name = timm_model_name(name)
        self._in_channels = in_channels
        self.set_output_stride(output_stride)
        self.input_conv = next(
            f"body.{n}" for n, m in self.body.named_modules() if isinstance(m, nn.Conv2d)
        )
        reductions = _nominal(list(self.body.feature_info.reduction()))
        channels = list(self.body.feature_info.channels())
        self.low_index = max(i for i, r in enumerate(reductions) if r == LOW_STRIDE)
        aux = [i for i, r in enumerate(reductions) if r == 16]
        self.aux_index = aux[-1] if aux else None
        self.out_channels = {"low": channels[self.low_index], "high": channels[-1]}
        if self.aux_index is not None:
            self.out_channels["aux"] = channels[self.aux_index]

    @property
    def channels_last(self) -> bool:
        """Whether timm returns (N, H, W, C) features (permuted to (N, C, H, W) here)."""
        return getattr(self.body, "output_fmt", "NCHW") == "NHWC"

    def strided_units(self) -> list[StridedUnit]:
        raise NotImplementedError(
            "timm backbones are dilated by timm itself (set_output_stride rebuilds them)"
        )

    def set_output_stride(self, output_stride: int) -> None:
        """Rebuild timm's encoder at ``output_stride`` and move this one's parameters and buffers
        into it (same objects: weights, device and optimizers are unchanged)."""
        check_output_stride(output_stride)
        if self.dilate_removed_stride_units:
            raise ValueError(
                "dilate_removed_stride_units does not apply to timm backbones: timm chooses the "
                "rate of each dilated unit"
            )
        if "body" in self._modules and output_stride == self.output_stride:
            return
        if "body" in self._modules:
            try:  # on the meta device: no time spent initialising weights that are replaced
                body = _create(self.model_name, output_stride, self._in_channels, device="meta")
            except (RuntimeError, NotImplementedError):  # a model whose init needs values
                body = _create(self.model_name, output_stride, self._in_channels)
            _adopt(self.body, body)
        else:
            body = _create(self.model_name, output_stride, self._in_channels)
        _check_reductions(self.model_name, body, output_stride, self._in_channels)
        self.body = body
        self.output_stride = output_stride
        if self.activation_checkpointing:
            self.activation_checkpointing = True

    @property
    def activation_checkpointing(self) -> bool:  # type: ignore[override]
        """timm's own gradient checkpointing of the encoder's stages."""
        return bool(self.__dict__.get("_checkpointing", False))

    @activation_checkpointing.setter
    def activation_checkpointing(self, enabled: bool) -> None:
        self.__dict__["_checkpointing"] = enabled
        if "body" in self._modules and hasattr(self.body, "set_grad_checkpointing"):
            self.body.set_grad_checkpointing(enabled)

    def forward(self, x: torch.Tensor, aux: bool = False) -> dict[str, torch.Tensor]:
        features = self.body(x)  # one per feature level, the last at stride OS
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        out = {"low": features[self.low_index], "high": features[-1]}
        if aux:
            if self.aux_index is None:
                raise ValueError(f"timm model {self.model_name!r} has no stride-16 stage for aux")
            out["aux"] = features[self.aux_index]
        return out


def timm_state_dict(
    name: str, weights: str | Mapping[str, torch.Tensor], backbone: Backbone | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of timm ImageNet weights under the backbone's names (``body.*``).

    ``weights``: ``"DEFAULT"`` (timm's default pretrained tag) or a tag (``"a1_in1k"``), loaded by
    timm (``pretrained=True``, through the Hugging Face cache); or a state dict in timm's or our
    names, whose classification head is dropped.
    """
    if isinstance(weights, str):
        weights = _pretrained_state(timm_model_name(name), weights)
    state = {k if k.startswith("body.") else f"body.{k}": v for k, v in weights.items()}
    if backbone is not None:
        wanted = backbone.state_dict().keys()
        state = {k: v for k, v in state.items() if k in wanted}
    return state


def _pretrained_state(model: str, tag: str) -> dict[str, torch.Tensor]:
    timm = require_timm()
    base = model.split(".", 1)[0]
    full = model if tag == "DEFAULT" else f"{base}.{tag}"
    if tag != "DEFAULT" and full not in timm.list_pretrained(f"{base}.*"):
        tags = ", ".join(n.split(".", 1)[1] for n in timm.list_pretrained(f"{base}.*")) or "none"
        raise ValueError(f"timm has no {full!r}; its {base} weights are: {tags}")
    try:
        return timm.create_model(full, pretrained=True, features_only=True).state_dict()
    except OSError as error:
        raise OSError(
            f"could not get timm's ImageNet weights for {full!r} ({error}). timm downloads them "
            "from the Hugging Face Hub into ~/.cache/huggingface/hub; on a machine with internet, "
            f"run: python -c \"import timm; timm.create_model('{full}', pretrained=True)\" and "
            "copy that cache here (HF_HOME), then set HF_HUB_OFFLINE=1 to read it offline"
        ) from None
