"""One way to load a model: :func:`load` takes whatever names one and returns the DeepLab.

    model = atrous.load("runs/voc/model")                    # a saved folder
    model = atrous.load("runs/voc/best.pt")                  # a training checkpoint
    model = atrous.load("weights.safetensors", config="config.json")
    model = atrous.load("someone/deeplab-voc")               # a Hugging Face Hub repo
    model = atrous.load("tf:xception65_coco_voc_trainaug")   # a published checkpoint

Every command, the web page and training's ``--run.init_from`` load through it, so a source one
of them accepts, all accept. Nothing is unpickled: weights come from safetensors, and training
checkpoints are read with ``weights_only=True``. :func:`load_segmenter` wraps the loaded model
for raw images (and also opens an exported ``.onnx`` file, which holds a graph, not a model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from atrous.hub.published import fetch
from atrous.hub.registry import get_published, is_published
from atrous.inference.predict import DEMO_MODEL, Segmenter
from atrous.inference.strategies import InferenceConfig
from atrous.models.config import ModelConfig
from atrous.models.model import DeepLab
from atrous.models.saved import CONFIG_NAME, FORMAT_VERSION

#: Endings of training checkpoints (read tensors-only).
CHECKPOINT_SUFFIXES = (".pt", ".pth")
Source = str | Path


def load(
    source: Source,
    *,
    config: ModelConfig | dict[str, Any] | Source | None = None,
    num_classes: int | None = None,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    **hub: Any,
) -> DeepLab:
    """The model ``source`` names, in eval mode, its configuration on ``model.config``.

    ``source``: a folder written by ``save_pretrained`` (``model.safetensors`` +
    ``config.json``); a ``.safetensors`` file, its ``config.json`` beside it or given as
    ``config`` (a :class:`ModelConfig`, a saved config dict, or that file's path); a training
    checkpoint (``.pt``/``.pth``); a published checkpoint's name (``tf:…``, ``hf:…``; see
    ``atrous models --pretrained``; downloaded and converted once); or a Hugging Face Hub repo
    id (read from the local cache offline). ``num_classes`` with ``strict=False`` starts a
    fine-tune on other classes: every tensor that fits loads, the classifier keeps a fresh
    initialisation and a warning lists what was skipped. ``hub``: huggingface_hub's options for
    a repo id (``revision``, ``local_files_only``, ``cache_dir``, ``token``).
    """
    options = {"num_classes": num_classes, "strict": strict, "map_location": map_location}
    path = Path(source)
    if config is not None and path.suffix != ".safetensors":
        raise ValueError(f"config= goes with a .safetensors file; {source} brings its own")
    if hub and (path.exists() or is_published(str(source))):
        raise ValueError(f"{', '.join(hub)}: options of a Hugging Face Hub repo, not of {source}")
    if is_published(str(source)):
        return DeepLab.from_pretrained(_published_folder(str(source)), **options)
    if path.is_dir():
        return DeepLab.from_pretrained(path, **options)
    if path.is_file():
        return _load_file(path, config, options)
    if path.suffix in (*CHECKPOINT_SUFFIXES, ".safetensors", ".onnx", ".xml", ".json"):
        raise FileNotFoundError(f"no model at {path}")
    return DeepLab.from_pretrained(str(source), **options, **hub)


def _published_folder(name: str) -> Path:
    """The converted folder of a published segmentation model (fetched on first use)."""
    entry = get_published(name)
    if entry.dataset is None:
        raise ValueError(
            f"{entry.name} is an ImageNet backbone, not a segmentation model: start training "
            f"from it with --run.backbone_weights {entry.name}"
        )
    return fetch(entry.name)


def _load_file(path: Path, config: Any, options: dict[str, Any]) -> DeepLab:
    """A ``.safetensors`` file (with its config) or a training checkpoint."""
    if path.suffix == ".safetensors":
        saved, where = _saved_config(path, config)
        return DeepLab.from_weights_file(path, saved, where, **options)
    if path.suffix in CHECKPOINT_SUFFIXES:
        return DeepLab.from_checkpoint(path, **options)
    if path.suffix in (".onnx", ".xml"):
        kind = "ONNX graph" if path.suffix == ".onnx" else "OpenVINO IR"
        raise ValueError(
            f"{path} is an exported {kind}, not a model to rebuild: run it with atrous "
            "predict/eval (or load_segmenter), or load the saved folder it was exported from"
        )
    raise ValueError(
        f"{path}: atrous.load reads a saved model folder, a .safetensors file or a training "
        "checkpoint (.pt), and never unpickles other files"
    )


def _saved_config(weights: Path, config: Any) -> tuple[dict[str, Any], str]:
    """The saved-config dict of a ``.safetensors`` file, and where it came from (for errors)."""
    if isinstance(config, ModelConfig):
        return {"format_version": FORMAT_VERSION, "model": config.to_dict()}, "config="
    if isinstance(config, dict):
        if "format_version" not in config:  # a bare ModelConfig dict
            config = {"format_version": FORMAT_VERSION, "model": config}
        return config, "config="
    file = Path(config) if config is not None else weights.with_name(CONFIG_NAME)
    if not file.is_file():
        raise FileNotFoundError(
            f"{weights} needs its {CONFIG_NAME}: none beside it; give one with config="
        )
    try:
        return json.loads(file.read_text()), str(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not JSON ({error})") from None


def load_segmenter(
    source: Source,
    inference: InferenceConfig | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
) -> Segmenter:
    """A :class:`Segmenter` for raw images: of the model :func:`load` returns for ``source``,
    or of an exported ``.onnx`` file (run by ONNX Runtime on the CPU) or OpenVINO IR (``.xml``,
    run by OpenVINO on the CPU)."""
    if Path(source) == Path(DEMO_MODEL) and not Path(source).is_dir():  # the commands' default
        raise FileNotFoundError(
            f"no model at {source} (the default): run `atrous demo` first, or name one with --model"
        )
    if Path(source).suffix == ".onnx":
        return Segmenter.from_onnx(source, inference, precision)
    if Path(source).suffix == ".xml":
        return Segmenter.from_openvino(source, inference, precision)
    return Segmenter.from_model(load(source), inference, precision, device)
