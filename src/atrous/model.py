"""DeepLabV3 and DeepLabV3+ models (paper §3, Fig. 2): built from a configuration, saved and loaded
as ``model.safetensors`` + ``config.json``, the Hugging Face convention.

    model = atrous.create_model("deeplabv3plus_resnet101", num_classes=21)
    model.save_pretrained("my_model", class_names=names, palette=colours)
    model = atrous.load_model("my_model")  # or a Hub repo id (read from the local cache offline)

Loading never unpickles anything: weights come from safetensors only.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import (
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from safetensors.torch import save_file
from torch import nn

from atrous.backbones import Backbone, build_backbone
from atrous.card import TrainingSummary, model_card_text
from atrous.checkpoint import load_weights, read_safetensors
from atrous.config import ModelConfig
from atrous.decoder import Decoder
from atrous.layers import ASPP, check_output_stride, conv3x3_bn_relu, resize, use_tf_same_padding

#: The files of a saved model.
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: Version of the config.json layout; a newer one is refused rather than misread.
FORMAT_VERSION = 1

RGB = tuple[int, int, int]


def check_input(x: torch.Tensor) -> None:
    """Raise a ValueError unless ``x`` is an (N, 3, H, W) batch."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an image batch of shape (N, 3, H, W), got {tuple(x.shape)}")


def check_class_names(names: Sequence[str], num_classes: int) -> tuple[str, ...]:
    """One name per class, as a tuple."""
    names = tuple(names)
    if len(names) != num_classes or not all(isinstance(n, str) for n in names):
        raise ValueError(f"need {num_classes} class names (strings), got {names!r}")
    return names


def check_palette(palette: Sequence[Sequence[int]], num_classes: int) -> tuple[RGB, ...]:
    """One (r, g, b) colour on 0–255 per class, as a tuple of tuples."""
    colours = tuple(tuple(int(v) for v in colour) for colour in palette)
    if len(colours) != num_classes or not all(
        len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours
    ):
        raise ValueError(f"need {num_classes} (r, g, b) colours on 0–255, got {palette!r}")
    return colours


class DeepLab(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="atrous",
    pipeline_tag="image-segmentation",
    paper_url="https://arxiv.org/abs/1802.02611",
):
    """backbone → ASPP → [decoder] → 1×1 classifier → bilinear resize to the input size.

    Without a decoder this is DeepLabV3: the classifier runs on the ASPP output at stride OS.
    ``post_aspp`` (absent in the paper) holds the extra 3×3 convs that torchvision's and smp's
    heads put after ASPP, so their models convert exactly.
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
        self.num_classes = num_classes
        self.align_corners = align_corners
        #: Name of each class, when known (saved with the model).
        self.class_names: tuple[str, ...] | None = None
        #: (r, g, b) colour of each class for overlays, when known (saved with the model).
        self.palette: tuple[RGB, ...] | None = None
        #: How it was trained and how it scored, when known (saved with the model and its card).
        self.training_summary: TrainingSummary | None = None

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Run the same weights at another output stride (paper Table 3: train 16, eval 8)."""
        check_output_stride(output_stride)
        self.backbone.set_output_stride(output_stride)
        self.aspp.set_output_stride(output_stride)

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute backbone activations during backward instead of keeping them (training at
        OS8 in less memory, for about one more backbone forward pass; same gradients)."""
        self.backbone.activation_checkpointing = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images → (N, num_classes, H, W) logits."""
        check_input(x)
        features = self.backbone(x)
        out = self.aspp(features["high"])  # (N, 256, H/OS, W/OS)
        if self.post_aspp is not None:
            out = self.post_aspp(out)
        if self.decoder is not None:
            out = self.decoder(out, features["low"])  # (N, 256, H/4, W/4)
        return resize(self.classifier(out), x.shape[-2:], self.align_corners)

    # ------------------------------------------------------------------ saving and loading

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        training: TrainingSummary | None = None,
        **kwargs: Any,
    ) -> str | None:
        """Write ``model.safetensors``, ``config.json`` and a ``README.md`` model card.

        ``config.json`` holds the configuration (at the current output stride), the class names,
        the palette, the input normalisation and the training summary. ``class_names``,
        ``palette`` and ``training`` given here are checked (one name and colour per class) and
        kept on the model. Other keyword arguments are the Hub mixin's (``push_to_hub``,
        ``repo_id``, ...). An existing ``README.md`` is replaced: the card describes these weights.
        """
        if class_names is not None:
            self.class_names = check_class_names(class_names, self.num_classes)
        if palette is not None:
            self.palette = check_palette(palette, self.num_classes)
        if training is not None:
            self.training_summary = training
        (Path(save_directory) / "README.md").unlink(missing_ok=True)
        return super().save_pretrained(save_directory, **kwargs)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The Hub's model card: YAML metadata (library, task, tags) and
        :func:`~atrous.card.model_card_text`."""
        data = ModelCardData(
            library_name="atrous",
            pipeline_tag="image-segmentation",
            tags=["semantic-segmentation", "deeplabv3plus" if self.decoder else "deeplabv3"],
        )
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{model_card_text(self)}")

    def _save_pretrained(self, save_directory: Path) -> None:
        if self.config is None:
            raise ValueError(
                "save_pretrained needs model.config: build the model with atrous.build_model or "
                "atrous.create_model"
            )
        config = self.config.replace(output_stride=self.output_stride)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(save_directory / WEIGHTS_NAME), metadata={"format": "pt"})
        data = {
            "format_version": FORMAT_VERSION,
            "library": "atrous",
            "model": config.to_dict(),
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "palette": [list(c) for c in self.palette] if self.palette is not None else None,
            "mean": list(config.mean),
            "std": list(config.std),
            "training": self.training_summary.to_dict() if self.training_summary else None,
        }
        (save_directory / CONFIG_NAME).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> DeepLab:
        """Load a folder written by :meth:`save_pretrained`, or a Hub repo id.

        Keyword arguments: ``num_classes`` (another class count, for fine-tuning: needs
        ``strict=False``), ``strict`` (default True: every tensor must fit), ``map_location``, and
        the Hub's (``revision``, ``cache_dir``, ``local_files_only``, ``token``, ...). A repo id
        is read from the Hugging Face cache when offline. Files are never unpickled: a path to a
        file, or a folder without ``model.safetensors``, is a ValueError naming it.
        """
        source = Path(pretrained_model_name_or_path)
        if source.is_file():
            raise ValueError(
                f"{source} is a file; atrous loads a folder holding {WEIGHTS_NAME} and "
                f"{CONFIG_NAME} (written by save_pretrained), and never unpickles .pt/.pth/.bin "
                "files, which can run code"
            )
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (
            HFValidationError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
        ) as error:
            if source.is_dir():
                raise
            raise FileNotFoundError(
                f"{source}: no such folder, and no Hugging Face model repo of that name could be "
                f"read ({type(error).__name__}: {error})"
            ) from None

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        config: dict[str, Any] | None = None,
        num_classes: int | None = None,
        strict: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> DeepLab:
        folder = Path(model_id)
        if folder.is_dir():
            weights = folder / WEIGHTS_NAME
            if not weights.is_file():
                found = sorted(p.name for p in folder.iterdir() if p.name != CONFIG_NAME)
                raise ValueError(
                    f"{folder} has no {WEIGHTS_NAME} (found: {', '.join(found) or 'nothing'}); "
                    "atrous reads weights from safetensors only and never unpickles a file. "
                    "Bring in a trusted training checkpoint with atrous.convert(kind='checkpoint')"
                )
        else:
            weights = Path(
                hf_hub_download(
                    model_id,
                    WEIGHTS_NAME,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    local_files_only=local_files_only,
                    token=token,
                )
            )
        if config is None:
            raise ValueError(f"{model_id} has no {CONFIG_NAME}: it was not saved by atrous")
        source = f"{model_id}/{CONFIG_NAME}"
        model_config, class_names, palette = parse_saved_config(config, source)
        training = config.get("training")
        summary = TrainingSummary.from_dict(training, source) if training is not None else None
        if num_classes is not None and num_classes != model_config.num_classes:
            model_config = model_config.replace(num_classes=num_classes)
            class_names = palette = summary = None  # they describe the checkpoint's classes
        model = build_model(model_config)
        if not isinstance(model, cls):
            raise ValueError(f"{model_id} holds a {type(model).__name__}, not a {cls.__name__}")
        report = load_weights(model, read_safetensors(weights), strict=strict, source=str(weights))
        if not report.complete:
            warnings.warn(
                f"loaded {len(report.loaded)} tensors from {weights}; the rest keep the new "
                f"model's initialisation:\n{report.describe()}",
                stacklevel=2,
            )
        model.class_names, model.palette, model.training_summary = class_names, palette, summary
        return model.to(map_location).eval()


def parse_saved_config(
    data: dict[str, Any], source: str
) -> tuple[ModelConfig, tuple[str, ...] | None, tuple[RGB, ...] | None]:
    """Configuration, class names and palette from a saved ``config.json``, each checked."""
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or "model" not in data:
        raise ValueError(
            f"{source} is not an atrous model config of format {FORMAT_VERSION} or older "
            f"(format_version: {version!r})"
        )
    config = ModelConfig.from_dict(data["model"])
    for key, expected in (("mean", config.mean), ("std", config.std)):
        saved = data.get(key)
        if saved is not None and not all(map(math.isclose, saved, expected)):
            raise ValueError(
                f"{source}: {key} {saved} differs from the {config.backbone} backbone's {expected}"
            )
    names, palette = data.get("class_names"), data.get("palette")
    return (
        config,
        check_class_names(names, config.num_classes) if names is not None else None,
        check_palette(palette, config.num_classes) if palette is not None else None,
    )


class DeepLabV3(DeepLab):
    """DeepLabV3: ASPP on an atrous backbone, no decoder."""

    def __init__(
        self,
        backbone: Backbone,
        aspp: ASPP,
        num_classes: int,
        post_aspp: nn.Module | None = None,
        align_corners: bool = True,
    ) -> None:
        super().__init__(backbone, aspp, None, num_classes, post_aspp, align_corners)


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
    ) -> None:
        super().__init__(backbone, aspp, decoder, num_classes, post_aspp, align_corners)


def build_model(config: ModelConfig) -> DeepLab:
    """Build a randomly initialised model from a configuration."""
    if config.num_classes is None:
        raise ValueError(
            "num_classes is not set: give the number of classes (PASCAL VOC: 21); a training run "
            "takes its dataset's"
        )
    backbone = build_backbone(
        config.backbone,
        output_stride=config.output_stride,
        multi_grid=config.multi_grid,
        width_multiplier=config.width_multiplier,
        dilate_removed_stride_units=config.dilate_removed_stride_units,
    )
    if config.tf_padding:
        use_tf_same_padding(backbone)
    aspp = ASPP(
        backbone.out_channels["high"],
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
    post_aspp = None
    if config.post_aspp_convs:
        post_aspp = nn.Sequential(
            *[
                conv3x3_bn_relu(
                    config.aspp_channels,
                    config.aspp_channels,
                    separable=config.separable,
                    depthwise_bn=config.separable_depthwise_bn,
                )
                for _ in range(config.post_aspp_convs)
            ]
        )
    if not config.decoder:
        model: DeepLab = DeepLabV3(
            backbone, aspp, config.num_classes, post_aspp, config.align_corners
        )
    else:
        decoder = Decoder(
            backbone.out_channels["low"],
            config.aspp_channels,
            low_proj_channels=config.low_level_channels,
            channels=config.decoder_channels,
            num_convs=config.decoder_convs,
            separable=config.separable,
            separable_depthwise_bn=config.separable_depthwise_bn,
            align_corners=config.align_corners,
        )
        model = DeepLabV3Plus(
            backbone, aspp, decoder, config.num_classes, post_aspp, config.align_corners
        )
    model.config = config
    return model


def load_model(
    source: str | Path,
    *,
    num_classes: int | None = None,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    local_files_only: bool = False,
) -> DeepLab:
    """Load a saved model (a folder, or a Hub repo id) in eval mode; see DeepLab.from_pretrained.

    ``num_classes`` with ``strict=False`` fine-tunes on another dataset: every tensor that fits
    loads and the classifier keeps a fresh initialisation (a warning lists what was skipped).
    """
    return DeepLab.from_pretrained(
        source,
        num_classes=num_classes,
        strict=strict,
        map_location=map_location,
        local_files_only=local_files_only,
    )
