"""Saving and loading models: ``model.safetensors`` + ``config.json`` (the Hugging Face
convention) and a ``README.md`` model card, in a folder or a Hub repo.

    model.save_pretrained("my_model", class_names=names, palette=colours)
    model = DeepLab.from_pretrained("my_model")  # or a Hub repo id (the local cache offline)

:class:`SavedModel` is the persistence half of :class:`~atrous.models.model.DeepLab` (the
architecture lives in :mod:`atrous.models.model`). Loading never unpickles anything: weights
come from safetensors only.
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

from atrous.data import DataConfig, dataset_labels
from atrous.errors import InputError
from atrous.models.card import model_card_text
from atrous.models.checkpoint import load_checkpoint, load_weights, read_safetensors
from atrous.models.config import ModelConfig
from atrous.models.summary import TrainingSummary

#: The files of a saved model.
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: Version of the config.json layout; a newer one is refused rather than misread.
FORMAT_VERSION = 1

RGB = tuple[int, int, int]


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


class SavedModel(PyTorchModelHubMixin):
    """Hub persistence for a model with a ``config`` (:class:`ModelConfig`), ``num_classes``,
    ``output_stride`` and ``state_dict``; subclasses build themselves with ``from_config``."""

    #: Name of each class, when known (saved with the model).
    class_names: tuple[str, ...] | None = None
    #: (r, g, b) colour of each class for overlays, when known (saved with the model).
    palette: tuple[RGB, ...] | None = None
    #: How it was trained and how it scored, when known (saved with the model and its card).
    training_summary: TrainingSummary | None = None

    @classmethod
    def from_config(cls, config: ModelConfig) -> SavedModel:
        """A randomly initialised model of ``config`` (the architecture's builder)."""
        raise NotImplementedError

    def without_aux_head(self) -> SavedModel:
        """The model without its training-only auxiliary head (the architecture's)."""
        return self

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        training: TrainingSummary | None = None,
        keep_aux_head: bool = False,
        **kwargs: Any,
    ) -> str | None:
        """Write ``model.safetensors``, ``config.json`` and a ``README.md`` model card.

        ``config.json`` holds the configuration (at the current output stride), the class names,
        the palette, the input normalisation and the training summary. ``class_names``,
        ``palette`` and ``training`` given here are checked (one name and colour per class) and
        kept on the model. A saved model is for inference: the auxiliary head, a training aid, is
        left out (``aux_head: false``, no ``aux_head.*`` tensors) unless ``keep_aux_head``, for a
        starting point of fine-tuning with an auxiliary loss. Other keyword arguments are the Hub
        mixin's (``push_to_hub``, ``repo_id``, ...). An existing ``README.md`` is replaced: the
        card describes these weights.
        """
        if keep_aux_head and kwargs.get("push_to_hub"):
            raise ValueError(
                "keep_aux_head writes a starting point for fine-tuning, not a model to publish: "
                "push without it"
            )
        if class_names is not None:
            self.class_names = check_class_names(class_names, self.num_classes)
        if palette is not None:
            self.palette = check_palette(palette, self.num_classes)
        if training is not None:
            self.training_summary = training
        (Path(save_directory) / "README.md").unlink(missing_ok=True)
        model = self if keep_aux_head else self.without_aux_head()
        return PyTorchModelHubMixin.save_pretrained(model, save_directory, **kwargs)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The Hub's model card: YAML metadata (library, task, tags) and
        :func:`~atrous.models.card.model_card_text`."""
        data = ModelCardData(
            library_name="atrous",
            pipeline_tag="image-segmentation",
            tags=["semantic-segmentation", "deeplabv3plus" if self.config.decoder else "deeplabv3"],
        )
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{model_card_text(self)}")

    def _save_pretrained(self, save_directory: Path) -> None:
        if self.config is None:
            raise ValueError(
                "save_pretrained needs model.config: build the model with atrous.build_model or "
                "atrous.create_model"
            )
        config = self.config
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
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | Path, **kwargs: Any
    ) -> SavedModel:
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
                f"{source} is a file; from_pretrained loads a folder holding {WEIGHTS_NAME} and "
                f"{CONFIG_NAME} (written by save_pretrained); atrous.load reads a .safetensors "
                "file or a training checkpoint (.pt, tensors only: never code)"
            )
        if (source / CONFIG_NAME).is_file():
            read_config_file(source / CONFIG_NAME)  # a bad file named, not a JSON error
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
            if isinstance(error, HFValidationError):  # not a repo id either: a missing path
                raise FileNotFoundError(f"{source}: no such file or folder") from None
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
    ) -> SavedModel:
        folder = Path(model_id)
        if folder.is_dir():
            weights = folder / WEIGHTS_NAME
            if not weights.is_file():
                found = sorted(p.name for p in folder.iterdir() if p.name != CONFIG_NAME)
                raise ValueError(
                    f"{folder} has no {WEIGHTS_NAME} (found: {', '.join(found) or 'nothing'}); "
                    "atrous reads weights from safetensors only and never unpickles a file; "
                    "a training checkpoint (.pt) loads with atrous.load(path)"
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
        return cls.from_weights_file(
            weights, config, f"{model_id}/{CONFIG_NAME}", num_classes, strict, map_location
        )

    @classmethod
    def from_weights_file(
        cls,
        weights: Path,
        config: dict[str, Any],
        source: str,
        num_classes: int | None = None,
        strict: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> SavedModel:
        """The model of a ``model.safetensors`` file and its saved ``config.json`` dict
        (``source`` names that config in errors), in eval mode: the reader behind
        :meth:`from_pretrained` and ``atrous.load``. ``num_classes``/``strict``: as there."""
        model_config, class_names, palette = parse_saved_config(config, source)
        training = config.get("training")
        summary = TrainingSummary.from_dict(training, source) if training is not None else None
        if num_classes is not None and num_classes != model_config.num_classes:
            model_config = model_config.replace(num_classes=num_classes)
            class_names = palette = summary = None  # they describe the checkpoint's classes
        model = cls._load_state(model_config, read_safetensors(weights), str(weights), strict)
        model.class_names, model.palette, model.training_summary = class_names, palette, summary
        return model.to(map_location).eval()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        num_classes: int | None = None,
        strict: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> SavedModel:
        """The model of an atrous training checkpoint (``best.pt``/``last.pt``, read with
        ``weights_only=True``: tensors and plain data, never code), in eval mode, with its
        dataset's class names and colours when the run's data config tells them. A run that
        kept an EMA of its weights (``run.ema_decay``) gives the EMA's: those it validated."""
        state = load_checkpoint(path)
        run = state.get("config") if isinstance(state, dict) else None
        if not isinstance(run, dict) or "model" not in state or "model" not in run:
            raise ValueError(f"{path} is not an atrous training checkpoint (no model/config)")
        model_config = ModelConfig.from_dict(run["model"])
        names, palette = dataset_labels(DataConfig(**run.get("data", {})))
        if num_classes is not None and num_classes != model_config.num_classes:
            model_config = model_config.replace(num_classes=num_classes)
            names = palette = None
        weights = state["ema"] if isinstance(state.get("ema"), dict) else state["model"]
        model = cls._load_state(model_config, weights, str(path), strict)
        model.class_names, model.palette = names, palette
        return model.to(map_location).eval()

    @classmethod
    def _load_state(
        cls, config: ModelConfig, state: dict[str, torch.Tensor], source: str, strict: bool
    ) -> SavedModel:
        """A model of ``config`` holding ``state``; with ``strict=False`` a warning lists what
        did not fit (those tensors keep the new model's initialisation)."""
        model = cls.from_config(config)
        if not isinstance(model, cls):
            raise ValueError(f"{source} holds a {type(model).__name__}, not a {cls.__name__}")
        report = load_weights(model, state, strict=strict, source=source)
        if not report.complete:
            warnings.warn(
                f"loaded {len(report.loaded)} tensors from {source}; the rest keep the new "
                f"model's initialisation:\n{report.describe()}",
                stacklevel=3,
            )
        return model


def read_config_file(path: Path) -> dict[str, Any]:
    """A saved ``config.json``, which must be valid JSON holding an object (an InputError
    naming the file, and the line of a syntax error, otherwise)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(
            f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file; config.json is JSON") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: holds a JSON {type(data).__name__}, not an object")
    return data


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
    if not isinstance(data["model"], dict):
        raise InputError(f"{source}: 'model' must be an object of config fields")
    try:
        config = ModelConfig.from_dict(data["model"])
    except (ValueError, TypeError) as error:
        raise InputError(f"{source}: model: {error}") from None
    for key, expected in (("mean", config.mean), ("std", config.std)):
        saved = data.get(key)
        if saved is not None and (
            len(saved) != len(expected) or not all(map(math.isclose, saved, expected))
        ):
            raise ValueError(
                f"{source}: {key} {saved} differs from the {config.backbone} backbone's {expected}"
            )
    names, palette = data.get("class_names"), data.get("palette")
    return (
        config,
        check_class_names(names, config.num_classes) if names is not None else None,
        check_palette(palette, config.num_classes) if palette is not None else None,
    )
