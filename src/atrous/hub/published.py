"""Published trained checkpoints, one call away: ``load_model("tf:xception65_coco_voc_trainaug")``.

Each entry names where the weights come from (the official TensorFlow DeepLab model zoo,
torchvision), the dataset and classes they predict, and the mIoU their authors published with
its protocol (output stride, scales, flip). The first use downloads the file with torch.hub's
downloader (progress bar, resumable into a temporary file), checks its SHA-256, converts it and
keeps the converted folder (``model.safetensors`` + ``config.json``) in the cache; later uses read
the cache and need no network. ``ATROUS_CACHE`` moves the cache (default ``~/.cache/atrous``);
``ATROUS_TF_MODELS_URL`` points the TensorFlow entries at a mirror. The transformers entry (the
official MobileNetV2 VOC model on the Hugging Face Hub) goes through huggingface_hub's cache.

The TensorFlow model zoo publishes no checksums: its entries pin none, and the SHA-256 of the
first download is recorded beside the converted folder (``source.json``) and printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torchvision.models import get_weight

from atrous.convert.hf import convert_transformers
from atrous.convert.mmseg import convert_mmseg
from atrous.convert.tf import convert_tf
from atrous.convert.torch_models import convert
from atrous.data import DataConfig, dataset_labels
from atrous.models.model import DeepLab

TF_MODELS_URL = "http://download.tensorflow.org/models/"
MMSEG_URL = "https://download.openmmlab.com/mmsegmentation/v0.5/deeplabv3plus/"
PREFIXES = ("tf:", "torchvision:", "hf:", "mmseg:")
#: Official evaluation crops (the image-pooling kernel is the crop at stride OS).
VOC_CROP, CITYSCAPES_CROP = (513, 513), (1025, 2049)
#: The paper's multi-scale inputs for VOC/ADE20K and the official Cityscapes ones.
MS_VOC = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
MS_CITYSCAPES = (0.75, 1.0, 1.25)


@dataclass(frozen=True)
class Protocol:
    """How a published score was measured."""

    output_stride: int
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def describe(self) -> str:
        scales = ", ".join(f"{s:g}" for s in self.scales)
        return f"OS{self.output_stride}, scales [{scales}], flip {'on' if self.flip else 'off'}"


@dataclass(frozen=True)
class PublishedScore:
    """An mIoU the checkpoint's authors published, on ``split`` under ``protocol``."""

    miou: float  # percent
    split: str
    protocol: Protocol


@dataclass(frozen=True)
class Published:
    """One published checkpoint and how to fetch and convert it."""

    name: str  # "tf:xception65_coco_voc_trainaug"
    file: str  # TF: tarball name; torchvision: weights name
    backbone: str
    dataset: str | None  # voc, cityscapes, ade20k: its classes; None: an ImageNet backbone
    trained_on: str
    crop_size: tuple[int, int] | None = None
    scores: tuple[PublishedScore, ...] = ()
    size_mb: int | None = None
    sha256: str | None = None  # None: not published by the source

    @property
    def kind(self) -> Literal["tf", "torchvision", "transformers", "mmseg"]:
        prefix = self.name.split(":", 1)[0]
        return {"hf": "transformers"}.get(prefix, prefix)  # type: ignore[return-value]

    @property
    def url(self) -> str:
        if self.kind == "torchvision":
            return get_weight(self.file).url
        if self.kind == "transformers":
            return f"https://huggingface.co/{self.file}"
        if self.kind == "mmseg":
            return MMSEG_URL + self.file
        return os.environ.get("ATROUS_TF_MODELS_URL", TF_MODELS_URL).rstrip("/") + "/" + self.file


REGISTRY: dict[str, Published] = {}


def register(entry: Published) -> Published:
    """Add a checkpoint to the registry (names are unique)."""
    if entry.name in REGISTRY:
        raise ValueError(f"published checkpoint {entry.name!r} is already registered")
    if not entry.name.startswith(PREFIXES):
        raise ValueError(f"published names start with one of {PREFIXES}, got {entry.name!r}")
    REGISTRY[entry.name] = entry
    return entry


def _voc(single: float, best: float | None, split: str = "val") -> tuple[PublishedScore, ...]:
    scores = (PublishedScore(single, split, Protocol(16)),) if single else ()
    if best is not None:
        scores += (PublishedScore(best, split, Protocol(8, MS_VOC, True)),)
    return scores


def _register_tf_zoo() -> None:
    """The official model zoo (research/deeplab/g3doc/model_zoo.md); numbers from its table."""
    mnv2, x65 = "mobilenetv2", "xception65"
    entries = [
        ("mobilenetv2_coco_voc_trainaug", "deeplabv3_mnv2_pascal_train_aug_2018_01_29", mnv2,
         "voc", "COCO → VOC trainaug", VOC_CROP, _voc(75.32, 77.33), 23),
        ("mobilenetv2_coco_voc_trainval", "deeplabv3_mnv2_pascal_trainval_2018_01_29", mnv2,
         "voc", "COCO → VOC trainval", VOC_CROP, _voc(0, 80.25, "test"), 23),
        ("xception65_coco_voc_trainaug", "deeplabv3_pascal_train_aug_2018_01_04", x65,
         "voc", "COCO → VOC trainaug", VOC_CROP, _voc(82.20, 83.58), 439),
        ("xception65_coco_voc_trainval", "deeplabv3_pascal_trainval_2018_01_04", x65,
         "voc", "COCO → VOC trainval", VOC_CROP, _voc(0, 87.80, "test"), 439),
        ("mobilenetv2_coco_cityscapes_trainfine", "deeplabv3_mnv2_cityscapes_train_2018_02_05",
         mnv2, "cityscapes", "COCO → Cityscapes fine", CITYSCAPES_CROP,
         (PublishedScore(70.71, "val", Protocol(16)),
          PublishedScore(73.57, "val", Protocol(8, MS_CITYSCAPES, True))), 23),
        ("xception65_cityscapes_trainfine", "deeplabv3_cityscapes_train_2018_02_06", x65,
         "cityscapes", "ImageNet → Cityscapes fine", CITYSCAPES_CROP,
         (PublishedScore(78.79, "val", Protocol(16)),
          PublishedScore(80.42, "val", Protocol(8, MS_CITYSCAPES, True))), 439),
        ("xception65_ade20k_train", "deeplabv3_xception_ade20k_train_2018_05_29", x65,
         "ade20k", "ImageNet → ADE20K", VOC_CROP, _voc(0, 45.65), 439),
        ("xception41_imagenet", "xception_41_2018_05_09", "xception41", None, "ImageNet",
         None, (), 288),
        ("xception65_imagenet", "deeplabv3_xception_2018_01_04", x65, None, "ImageNet",
         None, (), 447),
        ("xception71_imagenet", "xception_71_2018_05_09", "xception71", None, "ImageNet",
         None, (), 474),
        ("resnet_v1_50_beta_imagenet", "resnet_v1_50_2018_05_04", "resnet50_beta", None,
         "ImageNet", None, (), 274),
        ("resnet_v1_101_beta_imagenet", "resnet_v1_101_2018_05_04", "resnet101_beta", None,
         "ImageNet", None, (), 477),
    ]  # fmt: skip
    for name, tarball, backbone, dataset, trained, crop, scores, size in entries:
        register(
            Published(f"tf:{name}", f"{tarball}.tar.gz", backbone, dataset, trained, crop,
                      scores, size)
        )  # fmt: skip


def _register_torchvision() -> None:
    """torchvision's DeepLabV3 (COCO subset with VOC's 21 classes), numbers from its weights'
    metadata; its downloader checks the hash in each file's name."""
    models = [("resnet50", "ResNet50", "resnet50", 8), ("resnet101", "ResNet101", "resnet101", 8),
              ("mobilenet_v3_large", "MobileNet_V3_Large", "mobilenetv3_large", 16)]  # fmt: skip
    for name, family, backbone, output_stride in models:
        weights = f"DeepLabV3_{family}_Weights.COCO_WITH_VOC_LABELS_V1"
        meta = get_weight(weights).meta
        miou = meta["_metrics"]["COCO-val2017-VOC-labels"]["miou"]
        score = PublishedScore(miou, "COCO val2017 (VOC classes)", Protocol(output_stride))
        register(
            Published(f"torchvision:deeplabv3_{name}_coco", weights, backbone,
                      "voc", "COCO (VOC's 20 categories)", None, (score,),
                      round(meta["_file_size"]))
        )  # fmt: skip


def _register_mmseg() -> None:
    """mmsegmentation's DeepLabV3+ R-50/101-D8 (its metafile's numbers: single scale at the
    dataset's test scale, and with flip and scales 0.5–1.75). The hash prefix in each file's
    name is checked on download."""
    entries = [
        ("r50_voc", "r50-d8_512x512_40k_voc12aug", "20200613_161759-e1b43aa9", 76.81, 77.57),
        ("r101_voc", "r101-d8_512x512_40k_voc12aug", "20200613_205333-faf03387", 78.62, 79.53),
        ("r50_cityscapes", "r50-d8_512x1024_80k_cityscapes", "20200606_114049-f9fb496d",
         80.09, 81.13),
        ("r101_cityscapes", "r101-d8_512x1024_80k_cityscapes", "20200606_114143-068fcfe9",
         80.97, 82.03),
        ("r50_ade20k", "r50-d8_512x512_160k_ade20k", "20200615_124504-6135c7e0", 43.95, 44.93),
        ("r101_ade20k", "r101-d8_512x512_160k_ade20k", "20200615_123232-38ed86bb", 45.47, 46.35),
    ]  # fmt: skip
    trained_on = {"voc": "Pascal VOC 2012 + Aug", "cityscapes": "Cityscapes fine"}
    for name, setting, stamp, single, multi in entries:
        depth, dataset = name.split("_")
        scores = (
            PublishedScore(single, "val", Protocol(8)),
            PublishedScore(multi, "val", Protocol(8, MS_VOC, True)),
        )
        file = f"deeplabv3plus_{setting}/deeplabv3plus_{setting}_{stamp}.pth"
        trained = f"ImageNet → {trained_on.get(dataset, 'ADE20K')}"
        register(
            Published(f"mmseg:deeplabv3plus_{name}", file, f"resnet{depth[1:]}_v1c", dataset,
                      trained, None, scores)
        )  # fmt: skip


_register_tf_zoo()
_register_torchvision()
_register_mmseg()
register(
    Published(
        "hf:google/deeplabv3_mobilenet_v2_1.0_513",
        "google/deeplabv3_mobilenet_v2_1.0_513",
        "mobilenetv2",
        "voc",
        "COCO → VOC (the official MobileNetV2 checkpoint, converted by transformers)",
    )
)


def list_published() -> list[str]:
    """Names accepted by :func:`load_model` besides folders and Hub repos, sorted."""
    return sorted(REGISTRY)


def is_published(source: object) -> bool:
    """Whether ``source`` names a registry entry (``tf:…``, ``torchvision:…``)."""
    return isinstance(source, str) and source.startswith(PREFIXES)


def get_published(name: str) -> Published:
    if name not in REGISTRY:
        raise ValueError(
            f"unknown published checkpoint {name!r}; `atrous models --pretrained` lists them: "
            f"{', '.join(sorted(REGISTRY))}"
        )
    return REGISTRY[name]


def cache_root() -> Path:
    return Path(os.environ.get("ATROUS_CACHE", Path.home() / ".cache" / "atrous"))


def cached_folder(entry: Published) -> Path:
    return cache_root() / "published" / entry.name.replace(":", "_")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(entry: Published, folder: Path, progress: bool) -> tuple[Path, str]:
    """The entry's file in ``folder`` (torch.hub's downloader) and its verified SHA-256."""
    from torch.hub import HASH_REGEX, download_url_to_file

    target = folder / Path(entry.file).name
    prefix = HASH_REGEX.search(target.name) if entry.kind == "mmseg" else None
    try:
        download_url_to_file(
            entry.url, str(target), hash_prefix=prefix.group(1) if prefix else None,
            progress=progress,
        )  # fmt: skip
    except OSError as error:  # URLError, HTTPError and socket errors are OSErrors
        raise OSError(f"cannot download {entry.name} from {entry.url}: {error}") from None
    except RuntimeError as error:  # torch.hub: the file's hash does not match its name's prefix
        raise ValueError(f"{entry.url} is not the published file: {error}") from None
    digest = sha256_of(target)
    if entry.sha256 is not None and digest != entry.sha256:
        raise ValueError(
            f"{entry.url} has SHA-256 {digest}, not the registered {entry.sha256}: the file is "
            "damaged or not the published one; nothing was kept"
        )
    return target, digest


def _fetch_into(entry: Published, folder: Path, progress: bool) -> dict[str, Any]:
    """Download and convert ``entry`` into ``folder``; return what ``source.json`` records."""
    record: dict[str, Any] = {"name": entry.name, "url": entry.url}
    if entry.kind == "tf":
        file, record["sha256"] = _download(entry, folder.parent, progress)
        _, report = convert_tf(file, folder, entry.crop_size, entry.dataset)
        record["conversion"] = report.describe()
        file.unlink()
    elif entry.kind == "mmseg":
        file, record["sha256"] = _download(entry, folder.parent, progress)
        convert_mmseg(file, folder, dataset_labels=dataset_labels(DataConfig(entry.dataset)))
        file.unlink()
    elif entry.kind == "transformers":  # huggingface_hub's download and cache
        convert_transformers(entry.file, folder)
    else:  # torchvision's own downloader and hash check, then our converter
        convert(entry.file, "torchvision", str(folder))
    return record


def fetch(name: str, progress: bool = True) -> Path:
    """The converted folder of a published checkpoint: from the cache, or downloaded, checked
    and converted once (atomically: an interrupted fetch leaves no half-written folder)."""
    entry = get_published(name)
    final = cached_folder(entry)
    if (final / "source.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".fetch-") as scratch:
        folder = Path(scratch) / "converted"
        record = _fetch_into(entry, folder, progress)
        (folder / "source.json").write_text(json.dumps(record, indent=2))
        if "sha256" in record:
            print(f"{entry.name}: {entry.url}, SHA-256 {record['sha256']}")
        try:
            os.replace(folder, final)
        except OSError:  # another process finished first
            if not (final / "source.json").is_file():
                raise
    return final


def load_model(source: str | Path, **kwargs: Any) -> DeepLab:
    """A saved model folder, a Hugging Face Hub repo id, or a published checkpoint's name
    (``tf:xception65_coco_voc_trainaug``: downloaded and converted on first use), in eval mode.
    Keyword arguments are :meth:`DeepLab.from_pretrained`'s: ``num_classes`` with
    ``strict=False`` fine-tunes on another dataset (every tensor that fits loads, the classifier
    keeps a fresh initialisation and a warning lists what was skipped), ``map_location``,
    ``local_files_only``."""
    if is_published(source):
        entry = get_published(str(source))
        if entry.dataset is None:
            raise ValueError(
                f"{entry.name} is an ImageNet backbone, not a segmentation model: start training "
                f"from it with --run.backbone_weights {entry.name}"
            )
        source = fetch(entry.name)
    return DeepLab.from_pretrained(source, **kwargs)


def backbone_weights_file(name: str) -> Path:
    """``backbone.safetensors`` of a published ImageNet checkpoint (fetched on first use)."""
    entry = get_published(name)
    if entry.dataset is not None:
        raise ValueError(f"{name} is a segmentation model; fine-tune it with --run.init_from")
    return fetch(name) / "backbone.safetensors"


def _checksum(entry: Published) -> str:
    if entry.sha256:
        return f"sha256 {entry.sha256[:12]}…"
    if entry.kind in ("torchvision", "mmseg"):  # a hash prefix in the name, checked on download
        return f"sha256 {entry.url.rsplit('-', 1)[-1].split('.')[0]}… (in the file name)"
    if entry.kind == "transformers":
        return "per file, by huggingface_hub"
    return "not published"


def published_table(entries: Sequence[Published] | None = None) -> list[dict[str, str]]:
    """One row per checkpoint, for ``atrous models --pretrained``."""
    rows = []
    for entry in entries or [REGISTRY[name] for name in list_published()]:
        scores = "; ".join(
            f"{s.miou:.2f} {s.split} ({s.protocol.describe()})" for s in entry.scores
        )
        rows.append(
            {
                "name": entry.name,
                "backbone": entry.backbone,
                "classes": entry.dataset or "ImageNet backbone",
                "trained on": entry.trained_on,
                "published mIoU": scores or "—",
                "size": f"{entry.size_mb} MB" if entry.size_mb else "—",
                "checksum": _checksum(entry),
                "cached": "yes" if (cached_folder(entry) / "source.json").is_file() else "no",
                "source": entry.url,
            }
        )
    return rows


def resolve_source(source: str | Path) -> Path:
    """The local path of a model argument: a published checkpoint's fetched folder, or itself."""
    return fetch(str(source)) if is_published(str(source)) else Path(source)
