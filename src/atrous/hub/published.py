"""Published checkpoints, one call away: ``atrous.load("tf:xception65_coco_voc_trainaug")``.

This module turns a registry name (:mod:`atrous.hub.registry`) into a converted model folder
and a model. The first use downloads the publisher's file (verified by
:mod:`atrous.hub.download`), converts it and keeps the converted folder (``model.safetensors`` +
``config.json`` + ``source.json``) in the cache; later uses read the cache and need no network.
A downloaded archive waits in the cache until its conversion succeeds (a failed conversion, such
as one missing an optional dependency, is retried without downloading again), and a folder
converted by another converter version is converted again. The Hugging Face entry goes through
huggingface_hub's cache; a repository without safetensors falls back to ``pytorch_model.bin``,
read tensors-only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from atrous.convert.archive import ArchiveError, extract_archive
from atrous.convert.hf import convert_transformers
from atrous.convert.mmseg import convert_mmseg
from atrous.convert.tf import convert_tf
from atrous.convert.torch_models import convert
from atrous.data import DataConfig, dataset_labels
from atrous.hub.download import (
    cached_folder,
    converter_version,
    download_file,
    downloads_folder,
    sha256_of,
)
from atrous.hub.registry import Published, get_published

#: The files of a model-zoo tarball that conversion reads (the frozen graph is not needed).
CHECKPOINT_PARTS = (".index", ".data-")


def _extracted_checkpoint(archive: Path, scratch: Path) -> Path:
    """The checkpoint files of ``archive`` under ``scratch``; a corrupt or wrong archive is
    removed from the cache (the next use downloads it afresh) and named in one error."""
    try:
        extract_archive(archive, scratch, CHECKPOINT_PARTS)
        if not any(scratch.rglob("*.index")):
            raise ArchiveError(f"{archive} holds no TensorFlow checkpoint (*.index)")
    except ArchiveError as error:
        archive.unlink()
        raise ArchiveError(f"{error}; it was removed, the next use downloads it again") from None
    return scratch


def _from_tf_zoo(entry: Published, folder: Path, progress: bool) -> dict[str, Any]:
    target = downloads_folder() / entry.filename
    archive = download_file(entry.url, target, entry.size, entry.sha256, progress)
    record = {"sha256": sha256_of(archive)}
    with tempfile.TemporaryDirectory(dir=archive.parent, prefix=".extract-") as scratch:
        checkpoint = _extracted_checkpoint(archive, Path(scratch))
        _, report = convert_tf(checkpoint, folder, entry.crop_size, entry.dataset)
    record["conversion"] = report.describe()
    archive.unlink()  # converted: the folder is what the cache keeps
    return record


def _from_mmseg(entry: Published, folder: Path, progress: bool) -> dict[str, Any]:
    target = downloads_folder() / entry.filename
    file = download_file(entry.url, target, entry.size, entry.sha256, progress)
    record = {"sha256": sha256_of(file)}
    convert_mmseg(file, folder, dataset_labels=dataset_labels(DataConfig(entry.dataset)))
    file.unlink()
    return record


def _from_torchvision(entry: Published, folder: Path, progress: bool) -> dict[str, Any]:
    """Download into torch.hub's cache (our checks), where torchvision then finds the file."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / entry.filename
    file = download_file(entry.url, target, entry.size, entry.sha256, progress)
    convert(entry.file, "torchvision", str(folder))
    return {"sha256": sha256_of(file)}


def _from_hugging_face(entry: Published, folder: Path) -> dict[str, Any]:
    """config.json and the weights (safetensors, else ``pytorch_model.bin`` read tensors-only)
    through huggingface_hub's cache, then the transformers converter."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError

    try:
        weights = Path(hf_hub_download(entry.file, "model.safetensors"))
    except EntryNotFoundError:
        weights = Path(hf_hub_download(entry.file, "pytorch_model.bin"))
    source = folder.parent / "hf-source"
    source.mkdir()
    shutil.copyfile(hf_hub_download(entry.file, "config.json"), source / "config.json")
    shutil.copyfile(weights, source / weights.name)
    convert_transformers(source, folder)
    return {"sha256": sha256_of(weights), "file": weights.name}


def _fetch_into(entry: Published, folder: Path, progress: bool) -> dict[str, Any]:
    """Download and convert ``entry`` into ``folder``; return what ``source.json`` records."""
    record: dict[str, Any] = {"name": entry.name, "url": entry.url}
    if entry.kind == "tf":
        record |= _from_tf_zoo(entry, folder, progress)
    elif entry.kind == "mmseg":
        record |= _from_mmseg(entry, folder, progress)
    elif entry.kind == "transformers":
        record |= _from_hugging_face(entry, folder)
    else:
        record |= _from_torchvision(entry, folder, progress)
    record["converter"] = converter_version()
    return record


def _converted_by(final: Path) -> str | None:
    """The converter version a cached folder records (None: no finished folder)."""
    try:
        return json.loads((final / "source.json").read_text()).get("converter", "an older atrous")
    except (OSError, ValueError):
        return None


def fetch(name: str, progress: bool = True) -> Path:
    """The converted folder of a published checkpoint: from the cache, or downloaded, checked
    and converted once (atomically: an interrupted fetch leaves no half-written folder). A
    folder written by another converter version is converted again."""
    entry = get_published(name)
    final = cached_folder(entry.name)
    converted_by = _converted_by(final)
    if converted_by == converter_version():
        return final
    if converted_by is not None:
        print(f"{entry.name}: converted by {converted_by}; converting again")
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".fetch-") as scratch:
        folder = Path(scratch) / "converted"
        record = _fetch_into(entry, folder, progress)
        (folder / "source.json").write_text(json.dumps(record, indent=2))
        print(f"{entry.name}: {entry.url}, SHA-256 {record['sha256']}")
        if converted_by is not None:
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(folder, final)
        except OSError:  # another process finished first
            if _converted_by(final) is None:
                raise
    return final


def backbone_weights_file(name: str) -> Path:
    """``backbone.safetensors`` of a published ImageNet checkpoint (fetched on first use)."""
    entry = get_published(name)
    if entry.dataset is not None:
        raise ValueError(f"{name} is a segmentation model; fine-tune it with --run.init_from")
    return fetch(name) / "backbone.safetensors"
