"""The backbone contract and the one output-stride routine every backbone uses (paper §3.1).

A backbone returns ``{"low": stride-4 features, "high": stride-OS features}`` and declares their
channels in ``out_channels``. Asked with ``aux=True``, it also returns ``"aux"``: the output of its
stride-16 stage (ResNet ``layer3``, the end of Xception's middle flow, MobileNetV2's last 96-channel
unit), where an auxiliary FCN head attaches in training (PSPNet §3.3; torchvision, mmsegmentation).
At OS8 that stage is dilated and runs at stride 8; it is still the stage tapped.

Atrous convolution lets the same weights run at OS 8, 16 or 32: the backbone lists its units in
order, and :func:`apply_output_stride` walks them the way the official ``stack_blocks_dense``
does. Once the running stride reaches the target, each later unit runs at
stride 1 and the dilation grows by the stride it skipped. segmentation_models_pytorch gives the
unit that loses its stride the grown dilation already; ``dilate_removed_stride_units`` reproduces
that for converted weights.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from atrous.models.layers import check_output_stride, set_conv_dilation


@dataclass
class StridedUnit:
    """One unit of a backbone as the output-stride walk sees it.

    ``stride`` is the unit's own stride at full resolution; ``strided`` are the modules carrying it
    (its strided conv and its shortcut); ``dilated`` are its k×k convs with their multi-grid factor
    (paper §3.1, "Multi-grid"; 1 elsewhere).
    """

    stride: int
    strided: list[nn.Module] = field(default_factory=list)
    dilated: list[tuple[nn.Conv2d, int]] = field(default_factory=list)


def _set_stride(module: nn.Module, stride: int) -> None:
    if isinstance(module, nn.Conv2d):
        module.stride = (stride, stride)
    elif isinstance(module, nn.MaxPool2d):
        module.stride = stride
    else:
        raise TypeError(f"cannot set the stride of {type(module).__name__}")


def apply_output_stride(
    units: list[StridedUnit],
    output_stride: int,
    input_stride: int,
    dilate_removed_stride_units: bool = False,
) -> None:
    """Set strides and dilations in place so the units end at ``output_stride``.

    ``input_stride`` is the stride of the stem before the first unit. A unit reached at the target
    stride runs at stride 1 with the current rate, and the rate is then multiplied by the stride it
    skipped (TF-slim ``stack_blocks_dense``, torchvision). With ``dilate_removed_stride_units`` the
    rate is multiplied first, so that unit already runs at the grown rate (smp's ``make_dilated``).
    """
    check_output_stride(output_stride)
    current, rate = input_stride, 1
    for unit in units:
        if current == output_stride:
            grown = rate * unit.stride
            stride, unit_rate = 1, grown if dilate_removed_stride_units else rate
            rate = grown
        else:
            stride, unit_rate = unit.stride, 1
            current *= unit.stride
        for module in unit.strided:
            _set_stride(module, stride)
        for conv, multi_grid in unit.dilated:
            set_conv_dilation(conv, unit_rate * multi_grid)
    if current != output_stride:
        raise ValueError(
            f"this backbone reaches stride {current} at most; output_stride {output_stride} "
            "is out of reach"
        )


@contextlib.contextmanager
def bn_statistics_kept(module: nn.Module) -> Iterator[None]:
    """Undo, on exit, what the block does to the BN running statistics inside ``module``."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, buffers in zip(norms, saved, strict=True):
                for name, value in buffers.items():
                    getattr(norm, name).copy_(value)


class Backbone(nn.Module, abc.ABC):
    """Feature extractor returning ``{"low": stride 4, "high": stride OS}`` (and ``"aux"``)."""

    #: Channels of each feature, e.g. ``{"low": 256, "high": 2048, "aux": 1024}``.
    out_channels: dict[str, int]
    #: Stride of the stem, before the first unit of :meth:`strided_units`.
    stem_stride: int
    #: Dotted name of the conv that reads the image (its weight follows ``in_channels``).
    input_conv: str
    #: Units that lose their stride run at the grown rate (see :func:`apply_output_stride`).
    dilate_removed_stride_units: bool = False
    #: Training keeps only each unit's input and recomputes the rest during backward.
    activation_checkpointing: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.output_stride = 32

    @property
    def in_channels(self) -> int:
        """Channels of the input images (3: RGB)."""
        return self.get_submodule(self.input_conv).in_channels

    @property
    def strides(self) -> dict[str, int]:
        """Stride of each feature with respect to the input."""
        return {"low": 4, "high": self.output_stride, "aux": self.aux_stride}

    @property
    def aux_stride(self) -> int:
        """Stride of the ``"aux"`` feature: 16, or the output stride when that is smaller."""
        return min(16, self.output_stride)

    @abc.abstractmethod
    def strided_units(self) -> list[StridedUnit]:
        """The units after the stem, in order, for the output-stride walk."""

    def set_output_stride(self, output_stride: int) -> None:
        """Switch to output stride 8, 16 or 32 in place; the parameters are unchanged."""
        apply_output_stride(
            self.strided_units(), output_stride, self.stem_stride, self.dilate_removed_stride_units
        )
        self.output_stride = output_stride

    def run_unit(self, unit: Callable[..., Any], module: nn.Module, *inputs: torch.Tensor) -> Any:
        """``unit(*inputs)``, checkpointed when ``activation_checkpointing`` is on and gradients
        are being recorded: memory at OS8 drops to the units' inputs plus one unit's activations,
        for one more forward pass. The recomputation leaves ``module``'s BN statistics as the
        first pass set them, so training is the same as without checkpointing."""
        if not (self.activation_checkpointing and self.training and torch.is_grad_enabled()):
            return unit(*inputs)
        return checkpoint(
            unit,
            *inputs,
            use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), bn_statistics_kept(module)),
        )

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, aux: bool = False) -> dict[str, torch.Tensor]:
        """Return ``{"low": (N, C_low, H/4, W/4), "high": (N, C_high, H/OS, W/OS)}``, and with
        ``aux`` also ``"aux": (N, C_aux, H/s, W/s)`` at ``s = strides["aux"]``."""
