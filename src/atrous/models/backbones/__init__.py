"""Backbones behind one contract: ``forward`` returns ``{"low", "high"}`` features, and ``"aux"``
when asked (``base``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from atrous.models.backbones.base import Backbone, StridedUnit, apply_output_stride
from atrous.models.backbones.mobilenet import MobileNetV2
from atrous.models.backbones.mobilenetv3 import MobileNetV3Large
from atrous.models.backbones.resnet import ResNet
from atrous.models.backbones.timm import TimmBackbone, is_timm_name, timm_normalisation
from atrous.models.backbones.xception import Xception

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Official DeepLab preprocessing for beta ResNets and Xception: pixels scaled to [-1, 1].
SYMMETRIC_MEAN = (0.5, 0.5, 0.5)
SYMMETRIC_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone and how its input is normalised (on [0, 1] RGB).

    ``build(output_stride, multi_grid, width_multiplier, in_channels, rounding)`` (``rounding``:
    MobileNetV2's ``(divisible_by, min_depth)``); :func:`build_backbone` checks that the options
    apply before calling it.
    """

    build: Callable[..., Backbone]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    supports_multi_grid: bool
    supports_width: bool = False


def _resnet(depth: int, layout: str) -> Callable[..., Backbone]:
    def build(
        output_stride: int,
        multi_grid: Sequence[int] | None,
        width: float,
        in_channels: int,
        rounding: tuple[int, int],
    ) -> Backbone:
        return ResNet(depth, layout, multi_grid, output_stride, in_channels)

    return build


def _xception(variant: str) -> Callable[..., Backbone]:
    def build(
        output_stride: int,
        multi_grid: Sequence[int] | None,
        width: float,
        in_channels: int,
        rounding: tuple[int, int],
    ) -> Backbone:
        return Xception(variant, multi_grid, output_stride, in_channels)

    return build


def _mobilenetv2(
    output_stride: int,
    multi_grid: Sequence[int] | None,
    width: float,
    in_channels: int,
    rounding: tuple[int, int],
) -> Backbone:
    return MobileNetV2(width, output_stride, in_channels, *rounding)


def _mobilenetv3_large(
    output_stride: int,
    multi_grid: Sequence[int] | None,
    width: float,
    in_channels: int,
    rounding: tuple[int, int],
) -> Backbone:
    return MobileNetV3Large(output_stride, in_channels)


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec(_resnet(50, "torchvision"), IMAGENET_MEAN, IMAGENET_STD, True),
    "resnet101": BackboneSpec(_resnet(101, "torchvision"), IMAGENET_MEAN, IMAGENET_STD, True),
    "resnet50_beta": BackboneSpec(_resnet(50, "beta"), SYMMETRIC_MEAN, SYMMETRIC_STD, True),
    "resnet101_beta": BackboneSpec(_resnet(101, "beta"), SYMMETRIC_MEAN, SYMMETRIC_STD, True),
    "resnet50_v1c": BackboneSpec(_resnet(50, "v1c"), IMAGENET_MEAN, IMAGENET_STD, True),
    "resnet101_v1c": BackboneSpec(_resnet(101, "v1c"), IMAGENET_MEAN, IMAGENET_STD, True),
    "xception41": BackboneSpec(_xception("xception41"), SYMMETRIC_MEAN, SYMMETRIC_STD, True),
    "xception65": BackboneSpec(_xception("xception65"), SYMMETRIC_MEAN, SYMMETRIC_STD, True),
    "xception71": BackboneSpec(_xception("xception71"), SYMMETRIC_MEAN, SYMMETRIC_STD, True),
    "mobilenetv2": BackboneSpec(_mobilenetv2, IMAGENET_MEAN, IMAGENET_STD, False, True),
    "mobilenetv3_large": BackboneSpec(_mobilenetv3_large, IMAGENET_MEAN, IMAGENET_STD, False),
}


def _timm(name: str) -> Callable[..., Backbone]:
    def build(
        output_stride: int,
        multi_grid: Sequence[int] | None,
        width: float,
        in_channels: int,
        rounding: tuple[int, int],
    ) -> Backbone:
        return TimmBackbone(name, output_stride, in_channels)

    return build


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a backbone name: a key of ``BACKBONES``, or ``timm:<model>`` for any timm
    encoder (``pip install 'atrous[timm]'``) that timm can dilate."""
    if is_timm_name(name):
        mean, std = timm_normalisation(name)
        return BackboneSpec(_timm(name), mean, std, supports_multi_grid=False)
    if name not in BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; available: {', '.join(sorted(BACKBONES))}, "
            "or timm:<name> for a timm encoder"
        )
    return BACKBONES[name]


def build_backbone(
    name: str,
    *,
    output_stride: int = 16,
    multi_grid: Sequence[int] | None = None,
    width_multiplier: float = 1.0,
    dilate_removed_stride_units: bool = False,
    in_channels: int = 3,
    divisible_by: int = 8,
    min_depth: int = 8,
) -> Backbone:
    """Build a backbone by name, checking that the options apply to it; ``in_channels`` is the
    number of input bands its first conv reads (3: RGB); ``divisible_by``/``min_depth`` round
    MobileNetV2's channels (8/8: torchvision's; official DeepLab below depth 1.0: 1/1)."""
    spec = backbone_spec(name)
    if multi_grid is not None and not spec.supports_multi_grid:
        raise ValueError(f"backbone {name!r} has no multi-grid option (got {tuple(multi_grid)})")
    if width_multiplier != 1.0 and not spec.supports_width:
        raise ValueError(
            f"backbone {name!r} has no width_multiplier option (got {width_multiplier})"
        )
    if (divisible_by, min_depth) != (8, 8) and not spec.supports_width:
        raise ValueError(
            f"backbone {name!r} has no channel rounding options (divisible_by, min_depth)"
        )
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, got {in_channels}")
    rounding = (divisible_by, min_depth)
    backbone = spec.build(output_stride, multi_grid, width_multiplier, in_channels, rounding)
    if dilate_removed_stride_units:
        backbone.dilate_removed_stride_units = True
        backbone.set_output_stride(output_stride)
    return backbone


__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneSpec",
    "MobileNetV2",
    "MobileNetV3Large",
    "ResNet",
    "StridedUnit",
    "TimmBackbone",
    "Xception",
    "apply_output_stride",
    "backbone_spec",
    "build_backbone",
]
