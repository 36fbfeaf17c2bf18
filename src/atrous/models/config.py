"""Model configuration: a dataclass that round-trips through dicts (and so JSON/YAML).

Defaults are the paper's (DeepLabV3+, OS16, ASPP 256 channels with rates 6/12/18, decoder 48/256
with two 3×3 convs, dropout 0.1). Each field is one documented option. The fields from
``post_aspp_convs`` to ``input_std`` exist so that models from other libraries convert exactly
(``atrous.convert.torch_models``); their defaults are the paper's.

``in_channels`` other than 3 (RGB + NIR, multispectral bands) changes the first conv only; ImageNet
RGB weights then adapt to it (:func:`atrous.models.backbones.weights.adapt_input_conv`). Without
``input_mean``/``input_std``, band ``i`` is normalised with the backbone's RGB statistic ``i % 3``
(R, G, B, R, G, ...), the same cycle by which the first conv's RGB filters are reused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from atrous.data.base import Task
from atrous.models.backbones import backbone_spec
from atrous.models.layers import check_output_stride


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a DeepLab model."""

    backbone: str = "xception65"  # a key of atrous.models.backbones.BACKBONES, or timm:<name>
    decoder: bool = True  # True: DeepLabV3+, False: DeepLabV3
    num_classes: int | None = None  # output classes (PASCAL VOC: 21); None: the dataset's count
    task: Task = "multiclass"  # multiclass (softmax), binary (2 classes), multilabel (sigmoids)
    output_stride: int = 16  # 8, 16 or 32; switchable later with set_output_stride
    separable: bool = False  # atrous separable convs in ASPP and decoder (the paper's "SC")
    aspp_channels: int = 256  # channels of every ASPP branch and of its projection
    aspp_rates: tuple[int, ...] | None = None  # None: 6/12/18 at OS16, scaled by 16/OS
    aspp_dropout: float = 0.1  # after the ASPP projection (official keep_prob 0.9)
    image_pool_crop_size: tuple[int, int] | None = None  # training crop: local image pooling
    low_level_channels: int = 48  # decoder 1×1 projection of the low-level feature (Table 1)
    decoder_channels: int = 256  # channels of the decoder's 3×3 convs (Table 2)
    decoder_convs: int = 2  # number of decoder 3×3 convs (Table 2)
    multi_grid: tuple[int, ...] | None = None  # last-block rate factors; None: backbone default
    width_multiplier: float = 1.0  # MobileNetV2 channel multiplier
    divisible_by: int = 8  # MobileNetV2 channels: multiples of this (official DeepLab below 1.0: 1)
    min_depth: int = 8  # MobileNetV2 channels: at least this many (official below 1.0: 1)
    post_aspp_convs: int = 0  # 3×3 conv-BN-ReLU layers after ASPP (torchvision, smp: 1; paper: 0)
    separable_depthwise_bn: bool = True  # BN+ReLU between depthwise and pointwise (smp: none)
    align_corners: bool = True  # bilinear resizes align corners (official; torchvision: False)
    dilate_removed_stride_units: bool = False  # unit losing its stride takes the new rate (smp)
    aspp_projection_kernel: int = 1  # ASPP projection conv: 1×1 (paper); mmsegmentation: 3×3
    tf_padding: bool = False  # strided convs pad as TF's SAME (extra bottom/right on even sizes)
    input_mean: tuple[float, ...] | None = None  # one per input channel; None: the backbone's
    input_std: tuple[float, ...] | None = None  # (official TF MobileNetV2: [-1, 1])
    in_channels: int = 3  # input bands (4: RGB + NIR); the first conv takes this many
    aux_head: bool = False  # FCN head on the stride-16 stage for an auxiliary loss (training)

    def __post_init__(self) -> None:
        backbone_spec(self.backbone)  # an unknown name is a ValueError listing the known ones
        check_output_stride(self.output_stride)
        if self.num_classes is not None and (
            not isinstance(self.num_classes, int) or self.num_classes < 1
        ):
            raise ValueError(
                f"num_classes must be an integer of at least 1, got {self.num_classes!r}"
            )
        if self.task not in ("multiclass", "binary", "multilabel"):
            raise ValueError(f"task must be multiclass, binary or multilabel, got {self.task!r}")
        if self.task == "binary" and self.num_classes not in (None, 2):
            raise ValueError(
                f"a binary model has 2 classes (background, foreground), got {self.num_classes}"
            )
        if not isinstance(self.post_aspp_convs, int) or self.post_aspp_convs < 0:
            raise ValueError(
                f"post_aspp_convs must be a non-negative integer, got {self.post_aspp_convs!r}"
            )
        if not 0.0 <= self.aspp_dropout < 1.0:
            raise ValueError(f"aspp_dropout must be in [0, 1), got {self.aspp_dropout!r}")
        for name in ("aspp_rates", "image_pool_crop_size", "multi_grid", "input_mean", "input_std"):
            value = getattr(self, name)
            if value is not None:
                kind = float if name.startswith("input_") else int
                if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
                    raise ValueError(f"{name} must be a list of numbers, got {value!r}")
                object.__setattr__(self, name, tuple(kind(v) for v in value))
        self._check_input_channels()

    def _check_input_channels(self) -> None:
        if isinstance(self.in_channels, bool) or not isinstance(self.in_channels, int):
            raise ValueError(f"in_channels must be an integer, got {self.in_channels!r}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {self.in_channels}")
        for name in ("input_mean", "input_std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.in_channels:
                raise ValueError(
                    f"{name} needs one value per input channel ({self.in_channels}), "
                    f"got {len(value)}: {list(value)}"
                )
        if self.input_std is not None and min(self.input_std) <= 0:
            raise ValueError(f"input_std must be positive, got {list(self.input_std)}")

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the input normalisation (on [0, 1]), ``in_channels`` values: the
        backbone's RGB means repeated as R, G, B, R, ... unless ``input_mean`` is given."""
        return self.input_mean or _cycle(backbone_spec(self.backbone).mean, self.in_channels)

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel std of the input normalisation, as :attr:`mean`."""
        return self.input_std or _cycle(backbone_spec(self.backbone).std, self.in_channels)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (tuples as lists) for JSON/YAML."""
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            known = ", ".join(sorted(names))
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}; known: {known}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def input_channels(model: object) -> int:
    """Bands of the images ``model`` reads: its ``config.in_channels``, or 3 (RGB) for a network
    without a :class:`ModelConfig` (profiling, export and the fast paths size their examples)."""
    config = getattr(model, "config", None)
    return config.in_channels if isinstance(config, ModelConfig) else 3


def _cycle(rgb: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Channel ``i`` takes RGB statistic ``i % 3``."""
    return tuple(rgb[i % len(rgb)] for i in range(channels))
