"""The registry of published checkpoints: where each file comes from, what its publisher pins
(byte size, SHA-256), and every figure its authors published with the split and protocol it
was measured on.

Figures are only comparable like for like: each states its dataset split (a trainval
checkpoint's figure is on the *test* set, torchvision's on COCO val2017) and its protocol
(output stride, scales, flip, how the image was resized or padded). ``REFUSED`` lists the
official checkpoints atrous cannot build, with the reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torchvision.models import get_weight

from atrous.evaluation.protocols import EvalProtocol, official_protocol
from atrous.hub.download import is_cached

#: https only; ``ATROUS_TF_MODELS_URL`` points the TensorFlow entries at a mirror.
TF_MODELS_URL = "https://download.tensorflow.org/models/"
MMSEG_URL = "https://download.openmmlab.com/mmsegmentation/v0.5/deeplabv3plus/"
PREFIXES = ("tf:", "torchvision:", "hf:", "mmseg:")
#: Official evaluation crops (the image-pooling kernel is the crop at stride OS).
VOC_CROP, CITYSCAPES_CROP, ADE20K_MNV2_CROP = (513, 513), (1025, 2049), (257, 257)
#: The paper's multi-scale inputs for VOC/ADE20K and the official Cityscapes ones.
MS_VOC = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
MS_CITYSCAPES = (0.75, 1.0, 1.25)


@dataclass(frozen=True)
class Protocol:
    """How a published score was measured: inference settings and the input's geometry."""

    output_stride: int
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    #: the fixed canvas every image is padded to (mean pixel / ignore label), or None
    canvas: tuple[int, int] | None = None
    #: how the image is resized first: "longest side 513", "shorter side 520", ...
    resize: str | None = None

    def describe(self) -> str:
        scales = ", ".join(f"{s:g}" for s in self.scales)
        text = f"OS{self.output_stride}, scales [{scales}], flip {'on' if self.flip else 'off'}"
        if self.resize:
            text += f", {self.resize}"
        if self.canvas:
            text += f", padded to {self.canvas[0]}×{self.canvas[1]}"
        return text

    def short(self) -> str:
        """A few characters for a table: ``OS8 MS flip`` (MS: several scales)."""
        return " ".join(
            [f"OS{self.output_stride}"] + ["MS"] * (len(self.scales) > 1) + ["flip"] * self.flip
        )


@dataclass(frozen=True)
class PublishedScore:
    """An mIoU the checkpoint's authors published, on ``split`` under ``protocol``."""

    miou: float  # percent
    split: str  # "VOC 2012 val", "VOC 2012 test", "COCO val2017 (VOC classes)"
    protocol: Protocol


@dataclass(frozen=True)
class Published:
    """One published checkpoint, what its publisher pins about the file, and how to convert it."""

    name: str  # "tf:xception65_coco_voc_trainaug"
    file: str  # TF: tarball name; torchvision: weights name; mmseg: path; hf: repo id
    backbone: str
    dataset: str | None  # voc, cityscapes, ade20k: its classes; None: an ImageNet backbone
    trained_on: str
    crop_size: tuple[int, int] | None = None
    scores: tuple[PublishedScore, ...] = ()
    size_mb: float | None = None  # the publisher's rounded figure, for display
    size: int | None = None  # exact bytes, where a source publishes them
    sha256: str | None = None  # full digest, or the prefix in the file's name (mmseg, torchvision)
    pin_source: str | None = None  # where ``size``/``sha256`` come from

    @property
    def kind(self) -> Literal["tf", "torchvision", "transformers", "mmseg"]:
        prefix = self.name.split(":", 1)[0]
        return {"hf": "transformers"}.get(prefix, prefix)  # type: ignore[return-value]

    @property
    def measured_with(self) -> EvalProtocol:
        """How its published figures were measured: its source's own evaluation protocol."""
        return official_protocol(self.kind, self.dataset, self.crop_size)

    @property
    def url(self) -> str:
        if self.kind == "torchvision":
            return get_weight(self.file).url
        if self.kind == "transformers":
            return f"https://huggingface.co/{self.file}"
        if self.kind == "mmseg":
            return MMSEG_URL + self.file
        return os.environ.get("ATROUS_TF_MODELS_URL", TF_MODELS_URL).rstrip("/") + "/" + self.file

    @property
    def filename(self) -> str:
        return Path(self.url).name


REGISTRY: dict[str, Published] = {}
#: Official checkpoints atrous does not build, and why (``get_published`` says so).
REFUSED: dict[str, Refused] = {}


def register(entry: Published) -> Published:
    """Add a checkpoint to the registry (names are unique)."""
    if entry.name in REGISTRY or entry.name in REFUSED:
        raise ValueError(f"published checkpoint {entry.name!r} is already registered")
    if not entry.name.startswith(PREFIXES):
        raise ValueError(f"published names start with one of {PREFIXES}, got {entry.name!r}")
    REGISTRY[entry.name] = entry
    return entry


def _tf(
    output_stride: int,
    scales: tuple[float, ...],
    split: str,
    canvas: tuple[int, int],
    resize: str | None = None,
) -> tuple[Protocol, str]:
    """A protocol of the official eval (``eval.py``: every image padded to ``canvas``, flip
    with several scales), and the split it was measured on."""
    protocol = Protocol(output_stride, scales, len(scales) > 1, canvas, resize)
    return protocol, split


def _scores(
    miou_and_protocols: list[tuple[float, tuple[Protocol, str]]],
) -> tuple[PublishedScore, ...]:
    return tuple(PublishedScore(m, split, p) for m, (p, split) in miou_and_protocols)


VOC_VAL, VOC_TEST = "VOC 2012 val", "VOC 2012 test"
VOC_OS16 = _tf(16, (1.0,), VOC_VAL, VOC_CROP)
VOC_OS8_MS = _tf(8, MS_VOC, VOC_VAL, VOC_CROP)
CS_OS16 = _tf(16, (1.0,), "Cityscapes val", CITYSCAPES_CROP)
CS_OS8_MS = _tf(8, MS_CITYSCAPES, "Cityscapes val", CITYSCAPES_CROP)

#: OpenVINO Open Model Zoo, models/public/deeplabv3/model.yml: size 23882985 and (until its
#: 2022 switch to SHA-384) ``sha256: cd50…fb48`` for this very tarball.
MNV2_VOC_PIN = dict(
    size=23_882_985,
    sha256="cd506941e4f88fd053903913761df2e76ea00c01079cecfd35855304a4a5fb48",
    pin_source="OpenVINO Open Model Zoo models/public/deeplabv3/model.yml",
)


def _register_tf_zoo() -> None:
    """The official model zoo (research/deeplab/g3doc/model_zoo.md): its names, files, sizes
    and figures. Trainval checkpoints publish test-set figures; only one file has a published
    size and hash (``MNV2_VOC_PIN``)."""
    mnv2, dm05, x65 = "mobilenetv2", "mobilenetv2 ×0.5", "xception65"
    voc_aug, voc_val = "COCO → VOC trainaug", "COCO → VOC trainval"
    ade_mnv2 = _tf(16, (1.0,), "ADE20K val", ADE20K_MNV2_CROP, "longest side 257")
    ade_x65 = _tf(8, MS_VOC, "ADE20K val", VOC_CROP, "longest side 513")
    entries = [
        ("mobilenetv2_dm05_coco_voc_trainaug", "deeplabv3_mnv2_dm05_pascal_trainaug_2018_10_01",
         dm05, "voc", voc_aug, VOC_CROP, [(70.19, VOC_OS16)], 7.6, {}),
        ("mobilenetv2_dm05_coco_voc_trainval", "deeplabv3_mnv2_dm05_pascal_trainval_2018_10_01",
         dm05, "voc", voc_val, VOC_CROP, [(71.83, _tf(8, (1.0,), VOC_TEST, VOC_CROP))], 7.6, {}),
        ("mobilenetv2_coco_voc_trainaug", "deeplabv3_mnv2_pascal_train_aug_2018_01_29", mnv2,
         "voc", voc_aug, VOC_CROP, [(75.32, VOC_OS16), (77.33, VOC_OS8_MS)], 23, MNV2_VOC_PIN),
        ("mobilenetv2_coco_voc_trainval", "deeplabv3_mnv2_pascal_trainval_2018_01_29", mnv2,
         "voc", voc_val, VOC_CROP, [(80.25, _tf(8, MS_VOC, VOC_TEST, VOC_CROP))], 23, {}),
        ("xception65_coco_voc_trainaug", "deeplabv3_pascal_train_aug_2018_01_04", x65,
         "voc", voc_aug, VOC_CROP, [(82.20, VOC_OS16), (83.58, VOC_OS8_MS)], 439, {}),
        ("xception65_coco_voc_trainval", "deeplabv3_pascal_trainval_2018_01_04", x65,
         "voc", voc_val, VOC_CROP, [(87.80, _tf(8, MS_VOC, VOC_TEST, VOC_CROP))], 439, {}),
        ("mobilenetv2_coco_cityscapes_trainfine", "deeplabv3_mnv2_cityscapes_train_2018_02_05",
         mnv2, "cityscapes", "COCO → Cityscapes fine", CITYSCAPES_CROP,
         [(70.71, CS_OS16), (73.57, CS_OS8_MS)], 23, {}),
        ("xception65_cityscapes_trainfine", "deeplabv3_cityscapes_train_2018_02_06", x65,
         "cityscapes", "ImageNet → Cityscapes fine", CITYSCAPES_CROP,
         [(78.79, CS_OS16), (80.42, CS_OS8_MS)], 439, {}),
        ("mobilenetv2_ade20k_train", "deeplabv3_mnv2_ade20k_train_2018_12_03", mnv2, "ade20k",
         "ImageNet → ADE20K", ADE20K_MNV2_CROP, [(32.04, ade_mnv2)], 24.8, {}),
        ("xception65_ade20k_train", "deeplabv3_xception_ade20k_train_2018_05_29", x65,
         "ade20k", "ImageNet → ADE20K", VOC_CROP, [(45.65, ade_x65)], 439, {}),
        ("xception41_imagenet", "xception_41_2018_05_09", "xception41", None, "ImageNet",
         None, [], 288, {}),
        ("xception65_imagenet", "deeplabv3_xception_2018_01_04", x65, None, "ImageNet",
         None, [], 447, {}),
        ("xception71_imagenet", "xception_71_2018_05_09", "xception71", None, "ImageNet",
         None, [], 474, {}),
        ("resnet_v1_50_beta_imagenet", "resnet_v1_50_2018_05_04", "resnet50_beta", None,
         "ImageNet", None, [], 274, {}),
        ("resnet_v1_101_beta_imagenet", "resnet_v1_101_2018_05_04", "resnet101_beta", None,
         "ImageNet", None, [], 477, {}),
    ]  # fmt: skip
    for name, tarball, backbone, dataset, trained, crop, scores, size_mb, pin in entries:
        register(
            Published(f"tf:{name}", f"{tarball}.tar.gz", backbone, dataset, trained, crop,
                      _scores(scores), size_mb, **pin)
        )  # fmt: skip


@dataclass(frozen=True)
class Refused:
    """An official checkpoint atrous does not build: what is missing, and why."""

    name: str
    file: str  # the publisher's file, for reference
    missing: str  # a few words for the table: "DPC head"
    reason: str
    size_mb: float | None = None


def _refuse_tf_zoo() -> None:
    """model_zoo.md checkpoints whose networks atrous does not implement."""
    dpc = "its head is a Dense Prediction Cell (DPC), which atrous does not implement"
    v3 = "its MobileNetV3 backbone (squeeze-excite, hard-swish) is not implemented in atrous"
    edge = "its EdgeTPU-MobileNet backbone (found by NAS) is not implemented in atrous"
    refused = [
        # 80.31% Cityscapes val (OS16) and 82.66% Cityscapes test (OS8, 0.75–2, flip)
        ("xception71_dpc_cityscapes_trainfine",
         "deeplab_cityscapes_xception71_trainfine_2018_09_08", "DPC head", dpc, 445),
        ("xception71_dpc_cityscapes_trainval",
         "deeplab_cityscapes_xception71_trainvalfine_2018_09_08", "DPC head", dpc, 446),
        ("mobilenetv3_large_cityscapes_trainfine",
         "deeplab_mnv3_large_cityscapes_trainfine_2019_11_15", "MobileNetV3", v3, 17),
        ("mobilenetv3_small_cityscapes_trainfine",
         "deeplab_mnv3_small_cityscapes_trainfine_2019_11_15", "MobileNetV3", v3, 5),
        ("edgetpu_deeplab_cityscapes", "edgetpu-deeplab_2020_03_09", "EdgeTPU net", edge, None),
        ("edgetpu_deeplab_slim_cityscapes", "edgetpu-deeplab-slim_2020_03_09", "EdgeTPU net",
         edge, None),
    ]  # fmt: skip
    for name, tarball, missing, reason, size_mb in refused:
        REFUSED[f"tf:{name}"] = Refused(f"tf:{name}", f"{tarball}.tar.gz", missing, reason, size_mb)


def _register_torchvision() -> None:
    """torchvision's DeepLabV3 (COCO subset with VOC's 21 classes), numbers from its weights'
    metadata; the SHA-256 prefix in each file's name is checked on download."""
    models = [("resnet50", "ResNet50", "resnet50", 8), ("resnet101", "ResNet101", "resnet101", 8),
              ("mnv3_large", "MobileNet_V3_Large", "mobilenetv3_large", 16)]  # fmt: skip
    for name, family, backbone, output_stride in models:
        weights = f"DeepLabV3_{family}_Weights.COCO_WITH_VOC_LABELS_V1"
        meta = get_weight(weights).meta
        miou = meta["_metrics"]["COCO-val2017-VOC-labels"]["miou"]
        protocol = Protocol(output_stride, resize="shorter side 520")  # the weights' transforms
        score = PublishedScore(miou, "COCO val2017 (VOC classes)", protocol)
        prefix = get_weight(weights).url.rsplit("-", 1)[-1].split(".")[0]
        register(
            Published(f"torchvision:deeplabv3_{name}_coco", weights, backbone,
                      "voc", "COCO (VOC's 20 categories)", None, (score,),
                      meta["_file_size"], sha256=prefix, pin_source="the file's name")
        )  # fmt: skip


def _register_mmseg() -> None:
    """mmsegmentation's DeepLabV3+ R-50/101-D8 (its metafile's numbers: whole-image inference
    at the dataset's test scale, single scale, and with flip and scales 0.5–1.75). The
    SHA-256 prefix in each file's name is checked on download."""
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
    split = {"voc": VOC_VAL, "cityscapes": "Cityscapes val", "ade20k": "ADE20K val"}
    test_scale = {"voc": "2048×512", "cityscapes": "2048×1024", "ade20k": "2048×512"}
    for name, setting, stamp, single, multi in entries:
        depth, dataset = name.split("_")
        resize = f"test scale {test_scale[dataset]} (ratio kept), whole image"
        scores = (
            PublishedScore(single, split[dataset], Protocol(8, resize=resize)),
            PublishedScore(multi, split[dataset], Protocol(8, MS_VOC, True, resize=resize)),
        )
        file = f"deeplabv3plus_{setting}/deeplabv3plus_{setting}_{stamp}.pth"
        trained = f"ImageNet → {trained_on.get(dataset, 'ADE20K')}"
        register(
            Published(f"mmseg:deeplabv3plus_{name}", file, f"resnet{depth[1:]}_v1c", dataset,
                      trained, None, scores, sha256=stamp.rsplit("-", 1)[1],
                      pin_source="the file's name")
        )  # fmt: skip


_register_tf_zoo()
_refuse_tf_zoo()
_register_torchvision()
_register_mmseg()
register(
    Published(
        "hf:google/deeplabv3_mobilenet_v2_1.0_513",
        "google/deeplabv3_mobilenet_v2_1.0_513",
        "mobilenetv2",
        "voc",
        "COCO → VOC (the official MobileNetV2 checkpoint, converted by transformers)",
        size_mb=10.4,
    )
)


def list_published() -> list[str]:
    """Names ``atrous.load`` accepts besides folders, files and Hub repos, sorted."""
    return sorted(REGISTRY)


def is_published(source: object) -> bool:
    """Whether ``source`` names a registry entry (``tf:…``, ``torchvision:…``)."""
    return isinstance(source, str) and source.startswith(PREFIXES)


def get_published(name: str) -> Published:
    """The registry entry called ``name``; a clear error for refused or unknown names."""
    if name in REFUSED:
        reason = REFUSED[name].reason
        raise ValueError(f"{name} is an official checkpoint atrous cannot build: {reason}")
    if name not in REGISTRY:
        raise ValueError(
            f"unknown published checkpoint {name!r}; `atrous models --pretrained` lists them: "
            f"{', '.join(sorted(REGISTRY))}"
        )
    return REGISTRY[name]


def published_entry(source: str | Path) -> Published | None:
    """The registry entry behind ``source``: a published name, or a folder fetched from one (its
    ``source.json`` names it); None for any other model."""
    if is_published(str(source)):
        return get_published(str(source))
    record = Path(source) / "source.json"
    name = json.loads(record.read_text()).get("name") if record.is_file() else None
    return REGISTRY.get(name) if isinstance(name, str) else None


def _figure(score: PublishedScore) -> str:
    """``75.32 val OS16``: the split's last word (val, test, val2017) keeps test labelled."""
    split = score.split.split(" (")[0].rsplit(" ", 1)[-1]
    if score.split.startswith("COCO"):
        split = "COCO"
    return f"{score.miou:.2f} {split} {score.protocol.short()}"


def published_table(entries: Sequence[Published] | None = None) -> list[dict[str, str]]:
    """One row per checkpoint, for ``atrous models --pretrained``: three columns that fit 80
    characters with the longest name whole. Each figure names its split (test-set figures read
    "test", torchvision's COCO ones "COCO") and its short protocol; ``atrous evaluate`` prints
    the full protocol. The official checkpoints atrous does not build close the list, with
    what they lack."""
    rows = []
    for entry in entries or [REGISTRY[name] for name in list_published()]:
        figures = "\n".join(_figure(s) for s in entry.scores)
        rows.append(
            {
                "name": entry.name,
                "published mIoU": figures or ("—" if entry.dataset else "(backbone)"),
                "size": _size(entry.size_mb) + ("\ncached" if is_cached(entry.name) else ""),
            }
        )
    if entries is None:
        for refused in REFUSED.values():
            row = [refused.name, f"not built: {refused.missing}", _size(refused.size_mb)]
            rows.append(dict(zip(("name", "published mIoU", "size"), row, strict=True)))
    return rows


def _size(size_mb: float | None) -> str:
    return f"{size_mb:.3g} MB" if size_mb else "—"
