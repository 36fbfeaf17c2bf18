"""Building blocks of DeepLabV3+: conv-BN-ReLU, atrous separable conv, ASPP (paper §3.1-3.2).

Every resize in DeepLab is bilinear with ``align_corners=True`` (official implementation); inputs of
size 16k+1 (513, 769) then put feature-grid points on pixel corners. ``align_corners=False`` exists
for models converted from libraries that resize that way (torchvision).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

OUTPUT_STRIDES = (8, 16, 32)
#: ASPP atrous rates at output stride 16 (paper §3.1); they scale with 16 / output_stride.
ASPP_RATES_AT_OS16 = (6, 12, 18)


def check_output_stride(output_stride: int) -> None:
    """Raise a ValueError unless ``output_stride`` is one DeepLab supports."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")


def resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = True) -> torch.Tensor:
    """Bilinear resize to ``size``; corners aligned by default, as every resize in DeepLab."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def set_conv_dilation(conv: nn.Conv2d, dilation: int) -> None:
    """Set a conv's dilation in place, keeping 'same' padding for its kernel."""
    conv.dilation = (dilation, dilation)
    conv.padding = tuple(dilation * (k - 1) // 2 for k in conv.kernel_size)


class TFSamePadConv2d(nn.Conv2d):
    """A conv padding as TensorFlow's ``SAME`` does when strided: the total padding depends on
    the input size, and an odd total puts the extra row/column at the bottom/right. Models trained
    in TF with SAME padding (transformers' MobileNetV2, ``tf_padding``) need it on even sizes; on
    odd sizes and at stride 1 it equals the symmetric padding, which is used then."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        pads = []
        for size, k, s, d in zip(
            reversed(x.shape[-2:]),
            reversed(self.kernel_size),
            reversed(self.stride),
            reversed(self.dilation),
            strict=True,
        ):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def use_tf_same_padding(module: nn.Module) -> None:
    """Make every strided conv of ``module`` pad as TensorFlow's SAME (:class:`TFSamePadConv2d`);
    weights and names are unchanged."""
    for conv in module.modules():
        if type(conv) is nn.Conv2d and conv.stride != (1, 1) and max(conv.kernel_size) > 1:
            conv.__class__ = TFSamePadConv2d


class ConvBNReLU(nn.Sequential):
    """k×k conv (no bias) → BN → ReLU, with 'same' padding for any dilation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=dilation * (kernel_size - 1) // 2,
                dilation=dilation,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels, eps=bn_eps),
            nn.ReLU(inplace=True),
        )

    @property
    def spatial_conv(self) -> nn.Conv2d:
        """The conv whose dilation follows the atrous rate."""
        return self[0]


class SeparableConv2d(nn.Sequential):
    """Atrous depthwise separable conv (paper §3.1, official ``split_separable_conv2d``).

    depthwise 3×3 (dilated) → BN → ReLU → pointwise 1×1 → BN → ReLU. With ``activation=False``
    the two ReLUs are left out: the modified aligned Xception puts one ReLU *before* each
    separable conv instead (paper Fig. 4, official ``xception_module``). With
    ``depthwise_bn=False`` the depthwise conv feeds the pointwise conv directly (no BN or ReLU
    between them), the form segmentation_models_pytorch uses.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        activation: bool = True,
        bn_eps: float = 1e-5,
        depthwise_bn: bool = True,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["depthwise"] = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation,
            groups=in_channels,
            bias=False,
        )
        if depthwise_bn:
            layers["depthwise_bn"] = nn.BatchNorm2d(in_channels, eps=bn_eps)
            if activation:
                layers["depthwise_relu"] = nn.ReLU(inplace=True)
        layers["pointwise"] = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        layers["pointwise_bn"] = nn.BatchNorm2d(out_channels, eps=bn_eps)
        if activation:
            layers["pointwise_relu"] = nn.ReLU(inplace=True)
        super().__init__(layers)

    @property
    def spatial_conv(self) -> nn.Conv2d:
        """The conv whose dilation follows the atrous rate."""
        return self.depthwise


def conv3x3_bn_relu(
    in_channels: int,
    out_channels: int,
    dilation: int = 1,
    separable: bool = False,
    depthwise_bn: bool = True,
) -> ConvBNReLU | SeparableConv2d:
    """A 3×3 conv-BN-ReLU, dense or atrous separable: the one switch behind the paper's "SC"."""
    if separable:
        return SeparableConv2d(
            in_channels, out_channels, dilation=dilation, depthwise_bn=depthwise_bn
        )
    return ConvBNReLU(in_channels, out_channels, 3, dilation=dilation)


def image_pool_kernel(
    crop_size: Sequence[int] | None, output_stride: int
) -> tuple[int, int] | None:
    """Image-pooling kernel of the official code: the training crop at stride OS (33 at 513/16)."""
    if crop_size is None:
        return None
    return tuple((c - 1) // output_stride + 1 for c in crop_size)


class ImagePool(nn.Module):
    """Average pooling of the ASPP image-level branch.

    With no kernel it is a global mean. With a kernel (the official code uses the training crop
    size ÷ OS) it is a stride-1 average pool: global at the crop size, local on larger images
    (e.g. Cityscapes evaluated at 1025×2049 after training on 769×769 crops). Feature maps smaller
    than the kernel fall back to the global mean.
    """

    def __init__(self, kernel_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        if k is None or x.shape[-2] < k[0] or x.shape[-1] < k[1]:
            return x.mean(dim=(2, 3), keepdim=True)
        return F.avg_pool2d(x, k, stride=1)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class ASPPPooling(nn.Sequential):
    """Image-level features (ParseNet): pool → 1×1 conv → BN → ReLU → resize back (paper §3.1)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int] | None = None,
        align_corners: bool = True,
    ) -> None:
        super().__init__(
            ImagePool(kernel_size),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = self[0](x)
        bn = self[2]
        if bn.training and pooled.shape[0] * pooled.shape[2] * pooled.shape[3] == 1:
            raise ValueError(
                "ASPP image pooling cannot train on a batch of 1: BatchNorm needs more than one "
                "value per channel. Use a batch of at least 2 (drop the last partial batch), "
                "freeze BatchNorm, or call model.eval() for inference."
            )
        return resize(self[3](bn(self[1](pooled))), size, self.align_corners)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (paper §3.1, DeepLabV3).

    Branches: a 1×1 conv, one 3×3 atrous conv per rate (dense or separable), and image pooling;
    concatenated (N, (len(rates)+2)·C, H, W) and projected by 1×1 conv → BN → ReLU → dropout
    (``projection_kernel=3``: a 3×3 conv, mmsegmentation's form). Rates follow the output stride
    (6/12/18 at OS16, doubled at OS8, halved at OS32) unless given.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] | None = None,
        output_stride: int = 16,
        separable: bool = False,
        dropout: float = 0.1,
        pool_crop_size: Sequence[int] | None = None,
        separable_depthwise_bn: bool = True,
        align_corners: bool = True,
        projection_kernel: int = 1,
    ) -> None:
        super().__init__()
        check_output_stride(output_stride)
        if projection_kernel not in (1, 3):
            raise ValueError(f"projection_kernel must be 1 or 3, got {projection_kernel!r}")
        if rates is not None and any(r < 1 for r in rates):
            raise ValueError(f"ASPP rates must be positive integers, got {tuple(rates)}")
        self.fixed_rates = tuple(rates) if rates is not None else None
        self.pool_crop_size = tuple(pool_crop_size) if pool_crop_size is not None else None
        self.out_channels = out_channels
        self.output_stride = output_stride
        current = self._rates_for(output_stride)
        self.convs = nn.ModuleList(
            [ConvBNReLU(in_channels, out_channels, 1)]
            + [
                conv3x3_bn_relu(in_channels, out_channels, r, separable, separable_depthwise_bn)
                for r in current
            ]
            + [
                ASPPPooling(
                    in_channels,
                    out_channels,
                    image_pool_kernel(pool_crop_size, output_stride),
                    align_corners,
                )
            ]
        )
        self.project = nn.Sequential(
            nn.Conv2d(
                len(self.convs) * out_channels,
                out_channels,
                projection_kernel,
                padding=projection_kernel // 2,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def _rates_for(self, output_stride: int) -> tuple[int, ...]:
        if self.fixed_rates is not None:
            return self.fixed_rates
        return tuple(r * 16 // output_stride for r in ASPP_RATES_AT_OS16)

    @property
    def rates(self) -> tuple[int, ...]:
        """The atrous rates in use."""
        return tuple(branch.spatial_conv.dilation[0] for branch in self.convs[1:-1])

    def set_output_stride(self, output_stride: int) -> None:
        """Re-derive rates (unless given) and the image-pool kernel for a new output stride."""
        check_output_stride(output_stride)
        for branch, rate in zip(self.convs[1:-1], self._rates_for(output_stride), strict=True):
            set_conv_dilation(branch.spatial_conv, rate)
        self.convs[-1][0].kernel_size = image_pool_kernel(self.pool_crop_size, output_stride)
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [branch(x) for branch in self.convs]  # each (N, C, H, W)
        return self.project(torch.cat(branches, dim=1))


class FCNHead(nn.Sequential):
    """Auxiliary head for training: 3×3 conv to ``in_channels // 4`` → BN → ReLU → dropout →
    1×1 conv to the classes (torchvision's ``FCNHead``; mmsegmentation's has 256 channels, the
    same on ResNet's 1024-channel ``layer3``).

    Its loss on the backbone's stride-16 stage, weighted 0.4, eases training of deep backbones
    (PSPNet §3.3, "deep supervision"); inference never runs it.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        channels = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )
