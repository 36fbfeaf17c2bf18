"""Each dataset reader on a small tree in the dataset's real on-disk layout, made here."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_binary_folder, random_image, write_rgb
from PIL import Image
from torchvision import tv_tensors

from atrous.data import (
    ADE20K,
    Cityscapes,
    DataConfig,
    DataError,
    DecodedCache,
    FolderDataset,
    SyntheticScenes,
    VOCAugSegmentation,
    VOCSegmentation,
    build_dataset,
    read_image,
)
from atrous.data.checks import check_dataset, sample_labels
from atrous.data.palettes import CITYSCAPES_LABEL_IDS, voc_palette

# ---------------------------------------------------------------- PASCAL VOC and SBD


def test_voc_reads_its_layout(voc_tree):
    root, masks = voc_tree
    train = VOCSegmentation(root, "train")
    val = VOCSegmentation(root / "VOCdevkit" / "VOC2012", "val")
    assert len(train) == 3 and len(val) == 2
    image, mask = train[1]
    assert isinstance(image, tv_tensors.Image) and isinstance(mask, tv_tensors.Mask)
    assert image.shape == (3, 20, 24) and image.dtype == torch.uint8
    np.testing.assert_array_equal(mask.numpy(), masks["2007_000002"])
    assert train.num_classes == 21 and train.classes[15] == "person"


def test_voc_trainaug_merges_sbd_and_excludes_voc_val(voc_tree):
    root, masks = voc_tree
    aug = VOCAugSegmentation(root, root / "benchmark_RELEASE")
    names = [Path(aug.name(i)).stem for i in range(len(aug))]
    assert names == ["2007_000001", "2007_000002", "2007_000003", "2008_000010", "2008_000011"]
    by_name = dict(zip(names, range(len(aug)), strict=True))
    # SBD-only images take their mask from the .mat file …
    np.testing.assert_array_equal(aug[by_name["2008_000011"]][1].numpy(), masks["2008_000011"])
    # … and images VOC annotates keep VOC's mask.
    np.testing.assert_array_equal(aug[by_name["2007_000001"]][1].numpy(), masks["2007_000001"])
    config = DataConfig(dataset="voc_aug", root=str(root), sbd_root=str(root / "benchmark_RELEASE"))
    assert len(build_dataset(config, "train")) == 5
    assert len(build_dataset(config, "val")) == 2


# ---------------------------------------------------------------- Cityscapes and ADE20K


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    rng = np.random.default_rng(1)
    label_ids = rng.integers(0, 34, (16, 32))
    for city, stem in [("aachen", "aachen_000000_000019"), ("bremen", "bremen_000001_000019")]:
        write_rgb(
            tmp_path / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png",
            random_image(rng, 16, 32),
        )
        label = tmp_path / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png"
        label.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label_ids.astype(np.uint8), mode="L").save(label)
    data = Cityscapes(tmp_path, "train")
    assert len(data) == 2 and data.num_classes == 19
    mask = data[0][1].numpy()
    for train_id, label_id in enumerate(CITYSCAPES_LABEL_IDS):
        assert (mask[label_ids == label_id] == train_id).all()
    evaluated = np.isin(label_ids, CITYSCAPES_LABEL_IDS)
    assert (mask[~evaluated] == 255).all()
    (tmp_path / "gtFine" / "train" / "bremen" / "bremen_000001_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match=r"missing label for .*bremen_000001_000019_leftImg8bit"):
        Cityscapes(tmp_path, "train")


def test_ade20k_reduces_zero_label(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "ADEChallengeData2016"
    raw = rng.integers(0, 151, (12, 14))
    for split in ("training", "validation"):
        write_rgb(root / "images" / split / f"ADE_{split}_00000001.jpg", random_image(rng, 12, 14))
        path = root / "annotations" / split / f"ADE_{split}_00000001.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw.astype(np.uint8), mode="L").save(path)
    data = ADE20K(tmp_path, "val")
    assert len(data) == 1 and data.num_classes == 150
    mask = data[0][1].numpy()
    assert (mask[raw == 0] == 255).all()
    np.testing.assert_array_equal(mask[raw > 0], raw[raw > 0] - 1)


# ---------------------------------------------------------------- your own folder


def make_folder(root: Path, palette=None, rgb_masks=False, count=3):
    rng = np.random.default_rng(3)
    spec = "names: [background, cat, dog]\n"
    if palette:
        spec += f"palette: {palette}\n"
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(spec)
    masks = []
    for i in range(count):
        write_rgb(root / "images" / "train" / f"img{i}.jpg", random_image(rng, 10, 12))
        mask = rng.integers(0, 3, (10, 12))
        path = root / "masks" / "train" / f"img{i}.png"
        if rgb_masks:
            write_rgb(path, np.asarray(palette)[mask])
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8), mode="L").save(path)
        masks.append(mask)
    return masks


def test_folder_dataset_index_masks(tmp_path):
    masks = make_folder(tmp_path)
    data = FolderDataset(tmp_path, "train")
    assert data.classes == ("background", "cat", "dog") and len(data) == 3
    np.testing.assert_array_equal(data[2][1].numpy(), masks[2])
    assert data.palette == voc_palette(3)


def test_folder_dataset_rgb_masks_through_palette(tmp_path):
    palette = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    masks = make_folder(tmp_path, palette=palette, rgb_masks=True)
    data = FolderDataset(tmp_path, "train")
    np.testing.assert_array_equal(data[0][1].numpy(), masks[0])
    bad = np.zeros((10, 12, 3), dtype=np.uint8)
    bad[0, 0] = (9, 9, 9)
    write_rgb(tmp_path / "masks" / "train" / "img1.png", bad)
    with pytest.raises(DataError, match=r"img1.png has colours not in the palette: \(9, 9, 9\)"):
        data[1]


def test_folder_dataset_errors_name_the_file(tmp_path):
    make_folder(tmp_path)
    masks_dir = tmp_path / "masks" / "train"
    # Label values outside [0, 3) other than 255.
    Image.fromarray(np.full((10, 12), 7, dtype=np.uint8), mode="L").save(masks_dir / "img0.png")
    data = FolderDataset(tmp_path, "train")
    with pytest.raises(DataError, match=r"img0.jpg: label values 7 are outside \[0, 3\)"):
        data[0]
    # Mask of another size.
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8), mode="L").save(masks_dir / "img1.png")
    with pytest.raises(DataError, match=r"img1.jpg: mask size 5×5 differs from image size 12×10"):
        data[1]
    # Unreadable image.
    (tmp_path / "images" / "train" / "img2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*img2.jpg"):
        data[2]
    # Missing mask fails when the dataset is opened.
    (masks_dir / "img2.png").unlink()
    with pytest.raises(DataError, match=r"missing mask for image .*img2.jpg"):
        FolderDataset(tmp_path, "train")


def test_check_dataset_reports_every_bad_file_and_frequencies(tmp_path):
    masks = make_folder(tmp_path, count=4)
    Image.fromarray(np.full((10, 12), 9, dtype=np.uint8), mode="L").save(
        tmp_path / "masks" / "train" / "img3.png"
    )
    (tmp_path / "images" / "train" / "img1.jpg").write_bytes(b"\x00" * 10)
    report = check_dataset(FolderDataset(tmp_path, "train"), progress=False)
    assert report.samples == 2 and len(report.errors) == 2
    assert any("img1.jpg" in e for e in report.errors) and any(
        "img3.jpg" in e for e in report.errors
    )
    expected = np.bincount(np.concatenate([masks[0].ravel(), masks[2].ravel()]), minlength=3)
    np.testing.assert_array_equal(report.pixels, expected)
    assert report.frequencies.sum() == pytest.approx(1.0)


def test_read_image_handles_every_mode(tmp_path):
    """Each mode read as (H, W, 3) uint8 with the values its own decoding gives."""
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (8, 6, 1), dtype=np.uint8)
    cmyk = rng.integers(0, 256, (8, 6, 4), dtype=np.uint8)
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(np.concatenate([rgb, alpha], -1), mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "deep.png")
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.tif")
    Image.fromarray(np.concatenate([rgb[..., :1], alpha], -1), mode="LA").save(tmp_path / "la.png")
    Image.fromarray(rgb[..., 0] > 127).save(tmp_path / "bits.png")  # mode "1"
    gray = np.asarray(Image.open(tmp_path / "gray.png"))
    palette = Image.open(tmp_path / "palette.png")
    colours = np.asarray(palette.getpalette(), dtype=np.uint8).reshape(-1, 3)
    # Pillow's CMYK → RGB: (255 − C)·(255 − K)/255 per channel, rounded either way.
    from_cmyk = (255 - cmyk[..., :3].astype(float)) * (255 - cmyk[..., 3:].astype(float)) / 255
    expected = {
        "gray.png": np.repeat(gray[..., None], 3, -1),
        "rgba.png": rgb,  # alpha dropped, colour kept
        "palette.png": colours[np.asarray(palette)],
        "deep.png": np.repeat(rgb[..., :1], 3, -1),  # 16 bits scaled back to 8
        "la.png": np.repeat(rgb[..., :1], 3, -1),
        "bits.png": np.repeat(np.where(rgb[..., :1] > 127, 255, 0), 3, -1),
    }
    assert Image.open(tmp_path / "bits.png").mode == "1"
    for name, values in expected.items():
        image = read_image(tmp_path / name)
        assert image.shape == (8, 6, 3) and image.dtype == np.uint8, name
        np.testing.assert_array_equal(image, values, err_msg=name)
    image = read_image(tmp_path / "cmyk.tif")
    assert image.shape == (8, 6, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(image, from_cmyk, atol=1)
    exif = Image.fromarray(rgb)
    info = exif.getexif()
    info[0x0112] = 6  # to be shown rotated 90° clockwise
    exif.save(tmp_path / "rotated.jpg", exif=info)
    stored = np.asarray(Image.open(tmp_path / "rotated.jpg").convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "rotated.jpg"), np.rot90(stored, -1))


# ---------------------------------------------------------------- built-in scenes


def test_synthetic_scenes_are_deterministic_and_varied():
    a, b = SyntheticScenes(4, 64, seed=5), SyntheticScenes(4, 64, seed=5)
    for i in range(4):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    assert not torch.equal(a[0][0], SyntheticScenes(4, 64, seed=6)[0][0])
    masks = torch.stack([SyntheticScenes(200, 64, seed=0)[i][1] for i in range(200)])
    counts = torch.bincount(masks.flatten(), minlength=6)
    assert (counts > 0).all()  # every class occurs
    assert counts[0] / counts.sum() < 0.9


def test_synthetic_colour_alone_is_not_enough():
    """A per-pixel colour lookup (majority class of each quantised RGB colour, fitted on half the
    pixels) stays far below what shape and context give. The strongest colour-only classifier
    we built, benchmarks/colour_baseline.py (boosted trees on RGB/HSV/Lab), is the README's
    baseline."""
    data = SyntheticScenes(100, 64, seed=0)
    pixels, labels = [], []
    for i in range(100):
        image, mask = data[i]
        pixels.append(image.permute(1, 2, 0).reshape(-1, 3).long() // 16)
        labels.append(mask.flatten())
    pixels, labels = torch.cat(pixels), torch.cat(labels)
    codes = pixels[:, 0] * 256 + pixels[:, 1] * 16 + pixels[:, 2]
    half = len(labels) // 2
    counts = torch.zeros(4096, 6).index_put_(
        (codes[:half], labels[:half]), torch.ones(half), accumulate=True
    )
    predicted, truth = counts.argmax(1)[codes[half:]], labels[half:]
    ious = torch.stack(
        [
            ((predicted == c) & (truth == c)).sum() / ((predicted == c) | (truth == c)).sum()
            for c in range(6)
        ]
    )
    assert ious.mean() < 0.65
    assert (ious[1:] < 0.65).all()  # every object class needs more than its colour


def test_decoded_cache_reads_back_the_same_pairs_without_decoding(tmp_path, monkeypatch):
    make_folder(tmp_path / "data")
    data = FolderDataset(tmp_path / "data", "train")
    cached = DecodedCache(data, tmp_path / "cache")
    first = [cached[i] for i in range(len(cached))]
    assert len(list(cached.folder.glob("*.npy"))) == 2 * len(data)
    assert not list(cached.folder.glob(".*"))  # no partial files left behind

    def no_decoding(path, *args):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr("atrous.data.base.read_image", no_decoding)
    monkeypatch.setattr("atrous.data.base.read_mask", no_decoding)
    again = DecodedCache(FolderDataset(tmp_path / "data", "train"), tmp_path / "cache")
    assert again.folder == cached.folder and again.classes == data.classes
    for (image, mask), (image2, mask2) in zip(first, (again[i] for i in range(3)), strict=True):
        assert torch.equal(image, image2) and torch.equal(mask, mask2)
        assert mask2.dtype == torch.int64
    other = DecodedCache(SyntheticScenes(3, 32, seed=0), tmp_path / "cache")
    assert other.folder != cached.folder
    assert DecodedCache(SyntheticScenes(3, 48, seed=0), tmp_path / "cache").folder != other.folder
    monkeypatch.undo()
    touched = tmp_path / "data" / "images" / "train" / "img1.jpg"
    os.utime(touched, ns=(2, 2))  # the same bytes at another time: decoded again
    assert DecodedCache(FolderDataset(tmp_path / "data", "train"), tmp_path / "c").folder.name != (
        cached.folder.name
    )
    changed = tmp_path / "data" / "masks" / "train" / "img0.png"
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8), mode="L").save(changed)
    os.utime(changed, ns=(1, 1))  # a file rewritten at another time is decoded again
    refreshed = DecodedCache(FolderDataset(tmp_path / "data", "train"), tmp_path / "cache")
    assert refreshed.folder != cached.folder
    assert (refreshed[0][1] == 0).all()
    built = build_dataset(DataConfig(synthetic_train=3, cache_dir=str(tmp_path / "c2")), "train")
    assert isinstance(built, DecodedCache) and len(built) == 3


def test_label_checks_flag_binary_masks_and_empty_classes(tmp_path):
    make_binary_folder(tmp_path / "255", "[background, object]", 255)
    report = check_dataset(FolderDataset(tmp_path / "255", "train"), progress=False)
    assert not report.errors  # every pair is valid: the problem is what the values mean
    (problem,) = [p for p in report.label_problems() if p.fatal]
    assert "only 0 and 255, and 255 is the ignore label" in problem.message
    assert problem.fix == "--data.task binary" and problem.message.endswith(": --data.task binary")

    make_binary_folder(tmp_path / "one", "[object]", 1)
    (problem,) = check_dataset(
        FolderDataset(tmp_path / "one", "train"), progress=False
    ).label_problems()
    assert "one class is named ('object')" in problem.message and problem.fatal
    assert problem.fix == "--data.task binary"

    make_binary_folder(tmp_path / "fine", "[background, object, extra]", 1)
    report = sample_labels(FolderDataset(tmp_path / "fine", "train"))
    (problem,) = report.label_problems()
    assert not problem.fatal and "class 2 'extra' has no pixels in the split" in problem.message
    sampled = sample_labels(FolderDataset(tmp_path / "fine", "train"), limit=2)
    assert sampled.masks_read == 2
    assert "in the 2 masks sampled of 4" in sampled.label_problems()[0].message
