"""The label doctor on tiny datasets of each convention: it names the convention and the exact
option, and that option (or ``--fix OUT``) makes ``atrous check-data`` pass."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import make_binary_folder, random_image, write_index_png, write_rgb
from PIL import Image

from atrous.cli import main
from atrous.data import DataConfig, DataError, DecodedCache, FolderDataset, build_dataset
from atrous.data.balance import inverse_log_weights, median_frequency_weights
from atrous.data.checks import check_dataset


def write_folder(root: Path, spec: str, masks: list[np.ndarray]) -> None:
    """classes.yaml ``spec``, random images and ``masks`` (L PNGs; (H, W, 3): RGB PNGs)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(spec)
    for i, mask in enumerate(masks):
        write_rgb(root / "images" / "train" / f"m{i}.jpg", random_image(rng, *mask.shape[:2]))
        path = root / "masks" / "train" / f"m{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8)).save(path)


def check(capsys, root: Path, *options: str) -> tuple[int, str]:
    """``atrous check-data`` on the folder dataset at ``root``: its status, stdout and stderr."""
    data = ["--data.dataset", "folder", "--data.root", str(root), "--progress", "false"]
    status = main(["check-data", *data, *options])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def masks_of(root: Path, **options) -> list[np.ndarray]:
    data = FolderDataset(root, "train", **options)
    return [data[i][1].numpy() for i in range(len(data))]


def digest(root: Path) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


# ---------------------------------------------------------------- binary masks


def antialiased_square(size: int = 16) -> np.ndarray:
    """0/255 square with an anti-aliased rim (greys 60 and 200), as resized masks have."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[3:13, 3:13] = 60
    mask[4:12, 4:12] = 200
    mask[5:11, 5:11] = 255
    return mask


def test_antialiased_binary_masks_need_task_binary(tmp_path, capsys):
    masks = [antialiased_square(), np.zeros((16, 16), np.uint8), antialiased_square()]
    write_folder(tmp_path, "names: [background, road]\n", masks)
    status, out = check(capsys, tmp_path)
    assert status == 1
    assert "the masks hold 0 and 255 (and greys between" in out
    assert "Train them as a binary task: --data.task binary" in out
    again = f"check again with: atrous check-data --data.dataset folder --data.root {tmp_path}"
    assert f"{again} --data.task binary" in out
    status, out = check(capsys, tmp_path, "--data.task", "binary")
    assert status == 0, out
    for mask, read in zip(masks, masks_of(tmp_path, task="binary"), strict=True):
        np.testing.assert_array_equal(read, (mask >= 128).astype(np.int64))  # 200, 255 → 1


def test_binary_masks_fixed_into_a_new_folder(tmp_path, capsys):
    make_binary_folder(tmp_path / "data", "[background, object]", 255)
    before = digest(tmp_path / "data")
    status, out = check(capsys, tmp_path / "data", "--fix", str(tmp_path / "out"))
    assert status == 1 and "fixed copy: 4 image/mask pairs" in out
    assert digest(tmp_path / "data") == before  # the originals are only read
    assert (tmp_path / "out" / "classes.yaml").read_text() == (
        "names: [background, object]\npalette:\n- [0, 0, 0]\n- [255, 255, 255]\n"
    )
    status, out = check(capsys, tmp_path / "out")
    assert status == 0, out
    (mask,) = set(map(bytes, masks_of(tmp_path / "out")))  # four identical squares
    expected = np.zeros((16, 16), np.int64)
    expected[4:12, 4:12] = 1
    assert mask == bytes(expected)
    written = Image.open(tmp_path / "out" / "masks" / "train" / "b0.png")
    assert written.mode == "P" and written.getpalette()[:6] == [0, 0, 0, 255, 255, 255]


def test_binary_masks_whose_255_is_declared_ignored_are_fixed(tmp_path, capsys):
    make_binary_folder(tmp_path / "data", "[background, object]", 255)
    with (tmp_path / "data" / "classes.yaml").open("a") as spec:
        spec.write("ignore_index: 255\n")
    status, out = check(capsys, tmp_path / "data")
    assert status == 1 and out.count("labels:") == 1  # the doctor's, not the report's too
    assert "classes.yaml's ignore_index 255 would ignore their foreground" in out
    assert "so --data.task binary alone does not fit). Write a binary copy: --fix OUT" in out
    check(capsys, tmp_path / "data", "--fix", str(tmp_path / "out"))
    assert check(capsys, tmp_path / "out")[0] == 0
    assert int(masks_of(tmp_path / "out")[0].sum()) == 64  # the 8×8 foreground square


def test_binary_classes_come_from_classes_yaml_or_default(tmp_path):
    make_binary_folder(tmp_path / "one", "[road]", 255)
    assert FolderDataset(tmp_path / "one", "train", task="binary").classes == ("background", "road")
    (tmp_path / "one" / "classes.yaml").unlink()
    unnamed = FolderDataset(tmp_path / "one", "train", task="binary")
    assert unnamed.classes == ("background", "foreground")
    assert unnamed.palette == ((0, 0, 0), (255, 255, 255))
    make_binary_folder(tmp_path / "three", "[a, b, c]", 255)
    with pytest.raises(DataError, match=r"a binary task has two classes; .* not 3 classes"):
        FolderDataset(tmp_path / "three", "train", task="binary")


def test_binary_masks_with_void_need_ignore_index(tmp_path, capsys):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 1
    mask[0] = 255  # unlabelled border, as VOC draws it
    write_folder(tmp_path, "names: [background, cell]\n", [mask, mask])
    status, out = check(capsys, tmp_path, "--data.task", "binary")
    assert status == 1 and "If 255 marks unlabelled pixels" in out
    assert "say so in classes.yaml: ignore_index: 255" in out
    (tmp_path / "classes.yaml").write_text("names: [background, cell]\nignore_index: 255\n")
    status, out = check(capsys, tmp_path, "--data.task", "binary")
    assert status == 0, out
    np.testing.assert_array_equal(masks_of(tmp_path, task="binary")[0], mask)  # 1 kept, 255 void


# ---------------------------------------------------------------- palettes and colours


def test_palette_pngs_are_reported_and_their_palette_offered(tmp_path, capsys):
    rng = np.random.default_rng(1)
    write_folder(tmp_path, "names: [background, cat, dog]\n", [])
    for i in range(2):
        write_rgb(tmp_path / "images" / "train" / f"p{i}.jpg", random_image(rng, 8, 8))
        colours = ((9, 9, 9), (200, 10, 10), (10, 200, 10))
        write_index_png(
            tmp_path / "masks" / "train" / f"p{i}.png", rng.integers(0, 3, (8, 8)), colours
        )
    status, out = check(capsys, tmp_path)
    assert status == 0, out  # indices read as they are: nothing to fix
    assert "note: 2 of 2 masks are palette PNGs: their indices are the labels" in out
    line = "palette: [[9, 9, 9], [200, 10, 10], [10, 200, 10]]"
    assert line in out
    (tmp_path / "classes.yaml").write_text(f"names: [background, cat, dog]\n{line}\n")
    status, out = check(capsys, tmp_path)
    assert status == 0 and "copy their palette" not in out
    assert FolderDataset(tmp_path, "train").palette[1] == (200, 10, 10)


def rgb_masks(rng, colours, count=3, size=(10, 12)):
    indices = [rng.integers(0, len(colours), size) for _ in range(count)]
    return indices, [np.asarray(colours)[i] for i in indices]


def test_rgb_masks_without_palette_get_the_colours_found(tmp_path, capsys):
    colours = [(255, 0, 0), (0, 0, 0), (0, 0, 255)]
    indices, masks = rgb_masks(np.random.default_rng(2), colours)
    write_folder(tmp_path, "names: [background, water, roof]\n", masks)
    status, out = check(capsys, tmp_path)
    assert status == 1 and "masks are RGB colours and classes.yaml has no palette" in out
    line = "palette: [[0, 0, 0], [0, 0, 255], [255, 0, 0]]"  # by colour value
    assert f"map them to classes: {line}" in out
    (tmp_path / "classes.yaml").write_text(f"names: [background, water, roof]\n{line}\n")
    status, out = check(capsys, tmp_path)
    assert status == 0, out
    order = np.array([2, 0, 1])  # colour i of ``colours`` is palette entry order[i]
    for index, read in zip(indices, masks_of(tmp_path), strict=True):
        np.testing.assert_array_equal(read, order[index])


def test_rgb_masks_with_more_colours_than_names_are_fixed(tmp_path, capsys):
    colours = [(0, 0, 0), (0, 255, 0), (255, 0, 0), (255, 255, 0)]
    indices, masks = rgb_masks(np.random.default_rng(3), colours)
    write_folder(tmp_path / "data", "names: [background, tree]\n", masks)
    status, out = check(capsys, tmp_path / "data")
    assert status == 1 and "they hold 4 colours" in out and "for 2 class names" in out
    assert out.count(": --fix OUT") == 1 and out.count("write the copy with:") == 1
    check(capsys, tmp_path / "data", "--fix", str(tmp_path / "out"))
    status, out = check(capsys, tmp_path / "out")
    assert status == 0, out
    fixed = FolderDataset(tmp_path / "out", "train")
    assert fixed.classes == ("background", "tree", "class_2", "class_3")
    assert fixed.palette == tuple(colours)  # already in colour-value order
    np.testing.assert_array_equal(fixed[1][1].numpy(), indices[1])


# ---------------------------------------------------------------- zero label, out of range


def zero_unlabelled_masks(rng, classes=3, count=3):
    masks = [rng.integers(1, classes + 1, (10, 12)) for _ in range(count)]
    for mask in masks:
        mask[0, :3] = 0  # unlabelled pixels in every mask
    return masks


def test_zero_unlabelled_masks_need_reduce_zero_label(tmp_path, capsys):
    masks = zero_unlabelled_masks(np.random.default_rng(4))
    write_folder(tmp_path / "data", "names: [wall, floor, sky]\n", masks)
    status, out = check(capsys, tmp_path / "data")
    assert status == 1 and "0 marks unlabelled pixels (ADE20K's convention" in out
    assert "as classes 0…2: --data.reduce_zero_label true" in out
    assert "names needs" not in out  # the doctor names the convention, not a bad value
    status, out = check(capsys, tmp_path / "data", "--data.reduce_zero_label", "true")
    assert status == 0, out
    for raw, read in zip(masks, masks_of(tmp_path / "data", reduce_zero_label=True), strict=True):
        np.testing.assert_array_equal(read, np.where(raw == 0, 255, raw - 1))
    check(capsys, tmp_path / "data", "--fix", str(tmp_path / "out"))
    assert check(capsys, tmp_path / "out")[0] == 0
    np.testing.assert_array_equal(
        masks_of(tmp_path / "out")[2], np.where(masks[2] == 0, 255, masks[2] - 1)
    )


def test_labels_beyond_the_classes_named_then_fixed_or_named(tmp_path, capsys):
    rng = np.random.default_rng(5)
    masks = [rng.integers(0, 3, (10, 12)) for _ in range(3)]
    masks[1][2:4, 2:4] = 7
    masks[2][0, 0] = 5
    write_folder(tmp_path / "data", "names: [background, cat, dog]\n", masks)
    status, out = check(capsys, tmp_path / "data")
    assert status == 1 and "label values 5, 7 (5 pixels) are ≥ the 3 class names" in out
    assert "(names needs 8 entries)" in out and "with them as the ignore label: --fix OUT" in out
    check(capsys, tmp_path / "data", "--fix", str(tmp_path / "out"))
    assert check(capsys, tmp_path / "out")[0] == 0
    np.testing.assert_array_equal(
        masks_of(tmp_path / "out")[1], np.where(masks[1] == 7, 255, masks[1])
    )
    names = "names: [background, cat, dog, d, e, f, g, h]\n"
    (tmp_path / "data" / "classes.yaml").write_text(names)
    status, out = check(capsys, tmp_path / "data")
    assert status == 0 and "class 3 'd' has no pixels" in out  # a warning only


def test_fix_refuses_a_folder_in_use(tmp_path, capsys):
    make_binary_folder(tmp_path / "data", "[background, object]", 255)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    status, out = check(capsys, tmp_path / "data", "--fix", str(tmp_path / "full"))
    assert status == 1 and "the folder exists and is not empty" in out
    inside = tmp_path / "data" / "masks" / "fixed"
    status, out = check(capsys, tmp_path / "data", "--fix", str(inside))
    assert status == 1 and "is inside" in out and not inside.exists()


# ---------------------------------------------------------------- multilabel


def write_multilabel(root: Path, spec: str) -> dict[str, np.ndarray]:
    """Two overlapping classes; m1 has no 'boat' file (absent there). 0/1 masks, 255 void."""
    rng = np.random.default_rng(6)
    (root / "masks" / "train").mkdir(parents=True)
    (root / "classes.yaml").write_text(spec)
    planes = {}
    for stem in ("m0", "m1"):
        write_rgb(root / "images" / "train" / f"{stem}.png", random_image(rng, 9, 11))
        for name in ("water", "boat"):
            if (stem, name) == ("m1", "boat"):
                continue
            plane = rng.integers(0, 2, (9, 11)).astype(np.uint8)
            plane[0, 0] = 255
            (root / "masks" / "train" / name).mkdir(exist_ok=True)
            Image.fromarray(plane).save(root / "masks" / "train" / name / f"{stem}.png")
            planes[stem, name] = plane
    return planes


def test_multilabel_masks_stack_per_class(tmp_path, capsys):
    planes = write_multilabel(tmp_path, "names: [water, boat]\nignore_index: 255\n")
    data = FolderDataset(tmp_path, "train", task="multilabel")
    image, mask = data[0]
    assert image.shape == (3, 9, 11) and mask.shape == (2, 9, 11) and mask.dtype == torch.int64
    np.testing.assert_array_equal(mask[1].numpy(), planes["m0", "boat"])  # 255 kept
    absent = data[1][1].numpy()
    np.testing.assert_array_equal(absent[0], planes["m1", "water"])
    assert (absent[1] == 0).all()
    report = check_dataset(data, progress=False)
    assert not report.errors
    water = sum(int((planes[s, "water"] == 1).sum()) for s in ("m0", "m1"))
    assert report.pixels[0] == water and report.present_pixels.tolist() == [2 * 99, 99]
    status, out = check(capsys, tmp_path, "--data.task", "multilabel")
    assert status == 0, out
    cached = DecodedCache(data, tmp_path / "cache")
    assert cached.task == "multilabel" and torch.equal(cached[0][1], mask)


def test_multilabel_layout_errors_name_the_folder(tmp_path):
    write_multilabel(tmp_path, "names: [water, ship]\n")
    with pytest.raises(DataError, match=r"folders \['boat'\] are not class names"):
        FolderDataset(tmp_path, "train", task="multilabel")
    (tmp_path / "classes.yaml").write_text("names: [water, boat]\n")
    with pytest.raises(DataError, match=r"m0.png \(masks in one folder per class are read with"):
        FolderDataset(tmp_path, "train")  # the multiclass layout expected
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "masks/train/boat/m0.png")
    with pytest.raises(DataError, match=r"class masks of .*m0.png differ in size: .*boat/m0.png"):
        FolderDataset(tmp_path, "train", task="multilabel")[0]


def test_label_options_fit_their_dataset(tmp_path):
    make_binary_folder(tmp_path, "[background, object]", 255)
    with pytest.raises(ValueError, match="reduce_zero_label applies to multiclass masks"):
        FolderDataset(tmp_path, "train", task="binary", reduce_zero_label=True)
    with pytest.raises(ValueError, match=r"data\.task 'binary' needs dataset 'folder'"):
        build_dataset(DataConfig(task="binary"), "train")
    voc = DataConfig(dataset="voc", root=str(tmp_path), reduce_zero_label=True)
    with pytest.raises(ValueError, match=r"data\.reduce_zero_label is for dataset 'folder'"):
        build_dataset(voc, "train")


# ---------------------------------------------------------------- multi-band images


def test_four_band_tiffs_read_as_float_in_either_layout(tmp_path, capsys):
    rng = np.random.default_rng(7)
    hwc = rng.integers(0, 65536, (10, 12, 4), dtype=np.uint16)
    chw = rng.integers(0, 256, (4, 10, 12), dtype=np.uint8)
    write_folder(tmp_path, "names: [background, field]\n", [])
    for folder in ("images", "masks"):
        (tmp_path / folder / "train").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "images" / "train" / "a.tif", hwc)
    tifffile.imwrite(tmp_path / "images" / "train" / "b.tiff", chw, photometric="minisblack")
    for stem in ("a", "b"):
        Image.fromarray(rng.integers(0, 2, (10, 12)).astype(np.uint8)).save(
            tmp_path / "masks" / "train" / f"{stem}.png"
        )
    data = build_dataset(DataConfig(dataset="folder", root=str(tmp_path), in_channels=4), "train")
    a, b = data[0][0], data[1][0]
    assert a.shape == b.shape == (4, 10, 12) and a.dtype == torch.float32
    torch.testing.assert_close(a, torch.from_numpy(hwc / 65535.0).float().permute(2, 0, 1))
    torch.testing.assert_close(b, torch.from_numpy(chw / 255.0).float())
    assert check(capsys, tmp_path, "--data.in_channels", "4")[0] == 0
    tifffile.imwrite(tmp_path / "images" / "train" / "b.tiff", chw[:3], photometric="minisblack")
    with pytest.raises(DataError, match=r"b.tiff has shape \(3, 10, 12\): expected 4 bands"):
        data[1]
    with pytest.raises(ValueError, match=r"data\.in_channels 4 needs dataset 'folder'"):
        build_dataset(DataConfig(in_channels=4), "train")


# ---------------------------------------------------------------- weights and chart


def test_class_weights_follow_their_formulas():
    rng = np.random.default_rng(8)
    pixels = rng.integers(1, 10_000, 6).astype(float)
    present = pixels + rng.integers(1, 10_000, 6)
    pixels[4] = present[4] = 0  # a class never seen
    frequency = pixels / np.where(present > 0, present, 1)
    median = np.median(frequency[[0, 1, 2, 3, 5]])
    expected = [median / f if f else 0.0 for f in frequency]
    np.testing.assert_allclose(median_frequency_weights(pixels, present), expected)
    share = pixels / pixels.sum()
    expected = [1 / np.log(1.02 + p) if p else 0.0 for p in share]
    np.testing.assert_allclose(inverse_log_weights(pixels), expected)
    with pytest.raises(ValueError, match="no class has a labelled pixel"):
        inverse_log_weights(np.zeros(3))


def test_check_data_prints_weights_and_draws_the_chart(tmp_path, capsys):
    masks = [np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)]
    masks[0][:1] = 1  # class 1: 4 pixels in a 16-pixel mask; class 0: 28 of 32
    write_folder(tmp_path / "data", "names: [background, thing]\n", masks)
    chart = tmp_path / "balance.png"
    status, out = check(capsys, tmp_path / "data", "--chart", str(chart))
    assert status == 0, out
    # Median frequency: freq = (28/32, 4/16), median 0.5625 → weights 0.643, 2.25.
    assert "0.643" in out and "2.250" in out
    assert f"{1 / np.log(1.02 + 4 / 32):.3f}" in out
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 50
