"""PASCAL VOC 2012 segmentation and the SBD-augmented "trainaug" set (paper §4).

Layouts read as distributed: ``VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png,
ImageSets/Segmentation/{train,val,trainval}.txt}``
(``root`` may also be the folder holding ``VOCdevkit/VOC2012``) and SBD's
``dataset/{img/*.jpg, cls/*.mat, train.txt, val.txt}`` (``benchmark_RELEASE`` or its ``dataset``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from atrous.data.base import FilePairs, read_id_list, require_dir
from atrous.data.io import DataError
from atrous.data.palettes import VOC_CLASSES, VOC_PALETTE


def voc_root(root: str | Path) -> Path:
    """The VOC2012 folder, given it or a folder holding ``VOCdevkit/VOC2012``."""
    root = Path(root)
    nested = root / "VOCdevkit" / "VOC2012"
    return require_dir(nested if nested.is_dir() else root, "PASCAL VOC 2012 folder")


def sbd_root(root: str | Path) -> Path:
    """SBD's ``dataset`` folder, given it or ``benchmark_RELEASE``."""
    root = Path(root)
    nested = root / "dataset"
    return require_dir(nested if (nested / "cls").is_dir() else root, "SBD dataset folder")


def read_sbd_mat(path: Path) -> np.ndarray:
    """The class mask stored in an SBD ``cls/*.mat`` file (``GTcls.Segmentation``)."""
    try:
        return np.asarray(scipy.io.loadmat(path)["GTcls"][0, 0]["Segmentation"], dtype=np.int64)
    except (OSError, KeyError, IndexError, ValueError) as error:
        raise DataError(f"cannot read SBD annotation {path}: {error}") from None


class VOCSegmentation(FilePairs):
    """PASCAL VOC 2012: 21 classes, border pixels labelled 255 (ignored)."""

    classes = VOC_CLASSES
    palette = VOC_PALETTE

    def __init__(self, root: str | Path, split: str = "train") -> None:
        base = voc_root(root)
        ids = read_id_list(base / "ImageSets" / "Segmentation" / f"{split}.txt")
        pairs = [
            (base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClass" / f"{i}.png") for i in ids
        ]
        super().__init__(pairs, f"VOC {split} at {base}")


class VOCAugSegmentation(FilePairs):
    """The 10,582-image "trainaug" set: SBD train+val and VOC train, minus every VOC val image.

    A VOC mask is used where VOC has one (finer, with ignored borders), SBD's ``.mat`` otherwise.
    """

    classes = VOC_CLASSES
    palette = VOC_PALETTE

    def __init__(self, voc: str | Path, sbd: str | Path) -> None:
        voc_base, sbd_base = voc_root(voc), sbd_root(sbd)
        voc_sets = voc_base / "ImageSets" / "Segmentation"
        excluded = set(read_id_list(voc_sets / "val.txt"))
        ids = set(read_id_list(voc_sets / "train.txt"))
        for split in ("train", "val"):
            ids |= set(read_id_list(sbd_base / f"{split}.txt"))
        pairs = []
        for i in sorted(ids - excluded):
            image = voc_base / "JPEGImages" / f"{i}.jpg"
            if not image.is_file():
                image = sbd_base / "img" / f"{i}.jpg"
            mask = voc_base / "SegmentationClass" / f"{i}.png"
            if not mask.is_file():
                mask = sbd_base / "cls" / f"{i}.mat"
            pairs.append((image, mask))
        super().__init__(pairs, f"VOC trainaug from {voc_base} and {sbd_base}")

    def load_mask(self, index: int) -> np.ndarray:
        mask_path = self.pairs[index][1]
        if mask_path.suffix == ".mat":
            return read_sbd_mat(mask_path)
        return super().load_mask(index)
