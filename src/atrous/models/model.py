"""DeepLabV3 and DeepLabV3+ models (paper §3, Fig. 2), built from a configuration.

    model = atrous.create_model("deeplabv3plus_resnet101", num_classes=21)
    model = build_model(ModelConfig(backbone="xception65", num_classes=21))

Saving and loading (``save_pretrained``, ``from_pretrained``, the Hub) come from
:class:`~atrous.models.saved.SavedModel`.

Training calls :meth:`DeepLab.forward_train` (through :class:`TrainingForward` under
DistributedDataParallel); with ``ModelConfig(aux_head=True)`` it also returns the logits of an FCN
head on the backbone's stride-16 stage for an auxiliary loss. ``forward`` never runs that head;
saved models and exports leave it out (:meth:`DeepLab.without_aux_head`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from atrous.models.backbones import Backbone, build_backbone
from atrous.models.config import ModelConfig
from atrous.models.decoder import Decoder
from atrous.models.layers import (
    ASPP,
    FCNHead,
    check_output_stride,
    conv3x3_bn_relu,
    resize,
    use_tf_same_padding,
)
from atrous.models.saved import SavedModel


def check_input(x: torch.Tensor, in_channels: int = 3) -> None:
    """Raise a ValueError unless ``x`` is an (N, in_channels, H, W) batch."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"expected an image batch of shape (N, {in_channels}, H, W), got {tuple(x.shape)}"
        )


class DeepLab(
    nn.Module,
    SavedModel,
    library_name="atrous",
    pipeline_tag="image-segmentation",
    paper_url="https://arxiv.org/abs/1802.02611",
):
    """backbone → ASPP → [decoder] → 1×1 classifier → bilinear resize to the input size.

    Without a decoder this is DeepLabV3: the classifier runs on the ASPP output at stride OS.
    ``post_aspp`` (absent in the paper) holds the extra 3×3 convs that torchvision's and smp's
    heads put after ASPP, so their models convert exactly. ``aux_head`` (absent in the paper) is
    an FCN head on the backbone's ``"aux"`` feature for an auxiliary training loss.
    """

    #: The configuration it was built from (set by :func:`build_model`).
    config: ModelConfig | None = None

    def __init__(
        self,
        backbone: Backbone,
        aspp: ASPP,
        decoder: Decoder | None,
        num_classes: int,
        post_aspp: nn.Module | None = None,
        align_corners: bool = True,
        aux_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes!r}")
        self.backbone = backbone
        self.aspp = aspp
        self.post_aspp = post_aspp
        self.decoder = decoder
        head_channels = decoder.out_channels if decoder is not None else aspp.out_channels
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        self.aux_head = aux_head
        self.num_classes = num_classes
        self.align_corners = align_corners

    @classmethod
    def from_config(cls, config: ModelConfig) -> DeepLab:
        return build_model(config)

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Run the same weights at another output stride (paper Table 3: train 16, eval 8).

        ``config.output_stride`` follows, so what the model saves, exports and reports says the
        stride it runs at (ASPP rates left to the config, ``aspp_rates`` None, rescale with it).
        """
        check_output_stride(output_stride)
        self.backbone.set_output_stride(output_stride)
        self.aspp.set_output_stride(output_stride)
        if self.config is not None:
            self.config = self.config.replace(output_stride=output_stride)

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute backbone activations during backward instead of keeping them (training at
        OS8 in less memory, for about one more backbone forward pass; same gradients)."""
        self.backbone.activation_checkpointing = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) normalised images → (N, num_classes, H, W) logits."""
        check_input(x, self.backbone.in_channels)
        return self._logits(self.backbone(x), x.shape[-2:])

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What training calls: ``{"out": logits}``, plus ``"aux"``: the auxiliary head's logits,
        also (N, num_classes, H, W), when the model has one."""
        check_input(x, self.backbone.in_channels)
        features = self.backbone(x, aux=self.aux_head is not None)
        outputs = {"out": self._logits(features, x.shape[-2:])}
        if self.aux_head is not None:
            aux = self.aux_head(features["aux"])  # (N, num_classes, H/s, W/s), s = 16 or 8
            outputs["aux"] = resize(aux, x.shape[-2:], self.align_corners)
        return outputs

    def _logits(self, features: dict[str, torch.Tensor], size: torch.Size) -> torch.Tensor:
        out = self.aspp(features["high"])  # (N, 256, H/OS, W/OS)
        if self.post_aspp is not None:
            out = self.post_aspp(out)
        if self.decoder is not None:
            out = self.decoder(out, features["low"])  # (N, 256, H/4, W/4)
        return resize(self.classifier(out), size, self.align_corners)

    def without_aux_head(self) -> DeepLab:
        """This model for inference, without the auxiliary head: a shallow copy sharing every
        other module (and so their parameters), with ``config.aux_head`` False; the model itself
        when it has no auxiliary head. Saving and exporting use it."""
        if self.aux_head is None:
            return self
        model = copy.copy(self)
        model._modules = {k: v for k, v in self._modules.items() if k != "aux_head"}
        model.aux_head = None
        if self.config is not None:
            model.config = self.config.replace(aux_head=False)
        return model


class TrainingForward(nn.Module):
    """``model.forward_train`` as a module's ``forward``, so that DistributedDataParallel, which
    synchronises gradients only for calls of its own forward, can wrap it:
    ``DistributedDataParallel(TrainingForward(model))(x)`` returns ``{"out", "aux"}``. It holds
    no parameters of its own (the model's state dict is unchanged)."""

    def __init__(self, model: DeepLab) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.forward_train(x)


class DeepLabV3(DeepLab):
    """DeepLabV3: ASPP on an atrous backbone, no decoder."""

    def __init__(
        self,
        backbone: Backbone,
        aspp: ASPP,
        num_classes: int,
        post_aspp: nn.Module | None = None,
        align_corners: bool = True,
        aux_head: nn.Module | None = None,
    ) -> None:
        super().__init__(backbone, aspp, None, num_classes, post_aspp, align_corners, aux_head)


class DeepLabV3Plus(DeepLab):
    """DeepLabV3+: DeepLabV3 as the encoder plus the low-level decoder (paper §3.1)."""

    def __init__(
        self,
        backbone: Backbone,
        aspp: ASPP,
        decoder: Decoder,
        num_classes: int,
        post_aspp: nn.Module | None = None,
        align_corners: bool = True,
        aux_head: nn.Module | None = None,
    ) -> None:
        super().__init__(backbone, aspp, decoder, num_classes, post_aspp, align_corners, aux_head)


def _backbone(config: ModelConfig) -> Backbone:
    backbone = build_backbone(
        config.backbone,
        output_stride=config.output_stride,
        multi_grid=config.multi_grid,
        width_multiplier=config.width_multiplier,
        dilate_removed_stride_units=config.dilate_removed_stride_units,
        in_channels=config.in_channels,
        divisible_by=config.divisible_by,
        min_depth=config.min_depth,
    )
    if config.tf_padding:
        use_tf_same_padding(backbone)
    return backbone


def _aspp(config: ModelConfig, in_channels: int) -> ASPP:
    return ASPP(
        in_channels,
        config.aspp_channels,
        rates=config.aspp_rates,
        output_stride=config.output_stride,
        separable=config.separable,
        dropout=config.aspp_dropout,
        pool_crop_size=config.image_pool_crop_size,
        separable_depthwise_bn=config.separable_depthwise_bn,
        align_corners=config.align_corners,
        projection_kernel=config.aspp_projection_kernel,
    )


def _post_aspp(config: ModelConfig) -> nn.Module | None:
    """The 3×3 convs some libraries put after ASPP (none in the paper)."""
    if not config.post_aspp_convs:
        return None
    width = config.aspp_channels
    return nn.Sequential(
        *[
            conv3x3_bn_relu(
                width, width, separable=config.separable, depthwise_bn=config.separable_depthwise_bn
            )
            for _ in range(config.post_aspp_convs)
        ]
    )


def _decoder(config: ModelConfig, low_channels: int) -> Decoder:
    return Decoder(
        low_channels,
        config.aspp_channels,
        low_proj_channels=config.low_level_channels,
        channels=config.decoder_channels,
        num_convs=config.decoder_convs,
        separable=config.separable,
        separable_depthwise_bn=config.separable_depthwise_bn,
        align_corners=config.align_corners,
    )


def build_model(config: ModelConfig) -> DeepLab:
    """Build a randomly initialised model from a configuration."""
    if config.num_classes is None:
        raise ValueError(
            "num_classes is not set: give the number of classes (PASCAL VOC: 21); a training run "
            "takes its dataset's"
        )
    backbone = _backbone(config)
    aspp = _aspp(config, backbone.out_channels["high"])
    post_aspp = _post_aspp(config)
    aux_head = None
    if config.aux_head:
        aux_head = FCNHead(backbone.out_channels["aux"], config.num_classes)
    if config.decoder:
        decoder = _decoder(config, backbone.out_channels["low"])
        model: DeepLab = DeepLabV3Plus(
            backbone, aspp, decoder, config.num_classes, post_aspp, config.align_corners, aux_head
        )
    else:
        model = DeepLabV3(
            backbone, aspp, config.num_classes, post_aspp, config.align_corners, aux_head
        )
    model.config = config
    return model
