"""``atrous import-labels``: COCO (polygons, compressed and uncompressed RLE, crowd), LabelMe
(polygons, rectangles, circles, embedded images) and CVAT (boxes, polygons, RLE masks, z_order)
exports become index masks equal to masks the test draws; check-data passes on the result; what
could not be imported is listed."""

import base64
import io
import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from helpers import random_image, write_rgb
from jsonargparse import auto_parser
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask
from scipy.ndimage import binary_dilation

from atrous.cli import COMMANDS, main, typed_words
from atrous.data import DataConfig
from atrous.data.check_data import check_data
from atrous.data.folder import read_classes_file
from atrous.data.io import read_image, read_mask
from atrous.data.labels import cvat, import_labels, labelme
from atrous.errors import AtrousError, InputError, UsageError

H, W = 72, 96


def drawn(draw_with, *args, **kwargs) -> np.ndarray:
    """An (H, W) bool mask drawn by Pillow (``draw_with`` names the ImageDraw method)."""
    canvas = Image.new("L", (W, H), 0)
    getattr(ImageDraw.Draw(canvas), draw_with)(*args, outline=1, fill=1, **kwargs)
    return np.asarray(canvas, dtype=bool)


def near_outline(polygon: list[tuple[float, float]]) -> np.ndarray:
    """Pixels within one of a polygon's outline, where rasterisers may differ by a pixel."""
    canvas = Image.new("L", (W, H), 0)
    ImageDraw.Draw(canvas).polygon(polygon, outline=1)
    return binary_dilation(np.asarray(canvas, dtype=bool), iterations=1)


def passes_check_data(root: Path, split: str = "train") -> bool:
    return check_data(
        DataConfig(dataset="folder", root=str(root), train_split=split), progress=False
    ).ok


def imported(root: Path, stem: str, split: str = "train") -> np.ndarray:
    return read_mask(root / "masks" / split / f"{stem}.png")


def rle(mask: np.ndarray) -> dict:
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode()}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, from 0."""
    flat = mask.astype(np.uint8).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return {"size": [H, W], "counts": ([0] if flat[0] else []) + runs}


@pytest.fixture
def coco_export(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png", "c.png"):
        write_rgb(tmp_path / "export" / "pics" / name, random_image(rng, H, W))
    polygon = [(10.0, 8.0), (60.0, 12.0), (50.0, 50.0), (14.0, 40.0)]
    blob = drawn("ellipse", [40, 20, 80, 60])
    crowd = np.zeros((H, W), bool)
    crowd[30:70, 5:90] = True
    person = drawn("rectangle", [20, 35, 45, 60])
    annotations = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 3,
            "iscrowd": 0,
            "segmentation": [[v for point in polygon for v in point]],
        },
        {"id": 2, "image_id": 1, "category_id": 7, "iscrowd": 0, "segmentation": rle(blob)},
        {
            "id": 3,
            "image_id": 2,
            "category_id": 3,
            "iscrowd": 0,
            "segmentation": uncompressed_rle(person),
        },
        {"id": 4, "image_id": 2, "category_id": 7, "iscrowd": 1, "segmentation": rle(crowd)},
        {"id": 5, "image_id": 1, "category_id": 99, "iscrowd": 0, "segmentation": rle(blob)},
        {
            "id": 6,
            "image_id": 1,
            "category_id": 3,
            "iscrowd": 0,
            "segmentation": [],
            "bbox": [1, 2, 3, 4],
        },
    ]
    data = {
        "images": [
            {"id": 1, "file_name": "pics/a.jpg", "height": H, "width": W},
            {"id": 2, "file_name": "pics/b.png", "height": H, "width": W},
            {"id": 3, "file_name": "pics/c.png", "height": H, "width": W},
            {"id": 4, "file_name": "pics/gone.png", "height": H, "width": W},
        ],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    path = tmp_path / "export" / "instances_train.json"
    path.write_text(json.dumps(data))
    return path, polygon, blob, person, crowd


def test_coco_polygons_and_rle_import_to_the_drawn_masks(coco_export, tmp_path):
    path, polygon, blob, person, crowd = coco_export
    report = import_labels("coco", path, tmp_path / "out")
    out = tmp_path / "out"
    names, palette, ignore = read_classes_file(out / "classes.yaml")
    assert names == ("background", "dog", "cat")  # the categories' order, not their ids
    assert palette is not None and ignore == 255
    expected = np.zeros((H, W), np.uint8)
    expected[drawn("polygon", polygon)] = 2
    expected[blob] = 1  # the later annotation wins
    found = imported(out, "a")
    differ = found != expected
    assert not (differ & ~near_outline(polygon)).any()  # pycocotools' outline rule only
    assert (found[blob] == 1).all()  # compressed RLE: exact
    expected_b = np.where(crowd, 255, 0).astype(np.uint8)
    expected_b[person] = 2  # crowd beneath, ignored where no other annotation lies
    np.testing.assert_array_equal(imported(out, "b"), expected_b)  # uncompressed RLE: exact
    assert report.written == 2
    skipped = "\n".join(f"{what}: {why}" for what, why in report.skipped)
    assert "annotation 5: unknown category 99" in skipped
    assert "annotation 6: no polygon" in skipped
    assert "pics/c.png: no region to import" in skipped
    assert "pics/gone.png: image file not found" in skipped
    assert report.report_file.read_text().count("\n") == 4 + 3
    assert (out / "images" / "train" / "a.jpg").read_bytes() == (
        path.parent / "pics/a.jpg"
    ).read_bytes()
    assert passes_check_data(out)


def test_coco_crowd_as_class_and_empty_images_kept(coco_export, tmp_path):
    path, _, _, person, crowd = coco_export
    out = tmp_path / "out"
    report = import_labels("coco", path, out, split="val", crowd="class", keep_empty=True)
    expected = np.where(crowd, 1, 0).astype(np.uint8)
    expected[person] = 2
    np.testing.assert_array_equal(imported(out, "b", "val"), expected)
    assert not imported(out, "c", "val").any()
    assert report.written == 3
    assert passes_check_data(out, "val")


def labelme_shape(label, points, kind="polygon"):
    return {
        "label": label,
        "points": [list(p) for p in points],
        "shape_type": kind,
        "group_id": None,
        "flags": {},
    }


def write_labelme(path: Path, shapes: list, image: Path | None, data: bytes | None = None):
    record = {
        "version": "5.5.0",
        "flags": {},
        "shapes": shapes,
        "imagePath": image.name if image is not None else "x.png",
        "imageData": base64.b64encode(data).decode() if data is not None else None,
        "imageHeight": H,
        "imageWidth": W,
    }
    path.write_text(json.dumps(record))


def test_labelme_folder_imports_to_the_drawn_masks(tmp_path, capsys):
    rng = np.random.default_rng(1)
    folder = tmp_path / "labelme"
    write_rgb(folder / "one.jpg", random_image(rng, H, W))
    triangle = [(5.5, 5.0), (70.0, 10.0), (30.0, 60.5)]
    shapes = [
        labelme_shape("tree", triangle),
        labelme_shape("car", [(40, 30), (90, 65)], "rectangle"),
        labelme_shape("tree", [(20, 50), (28, 50)], "circle"),
        labelme_shape("road", [(0, 0), (90, 70)], "line"),
        labelme_shape("__ignore__", [(0, 0), (4, 0), (4, 4), (0, 4)]),
    ]
    write_labelme(folder / "one.json", shapes, folder / "one.jpg")
    buffer = io.BytesIO()
    Image.fromarray(random_image(rng, H, W)).save(buffer, format="PNG")
    (folder / "sub").mkdir()
    write_labelme(
        folder / "sub" / "two.json", [labelme_shape("car", triangle)], None, buffer.getvalue()
    )
    out = tmp_path / "out"
    status = main(
        ["import-labels", "--from", "labelme", "--source", str(folder), "--output", str(out)]
    )
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "skipped 1: shape type 'line' covers no area" in printed.err
    names = read_classes_file(out / "classes.yaml")[0]
    assert names == ("background", "car", "tree")  # sorted labels
    expected = np.zeros((H, W), np.uint8)
    expected[drawn("polygon", triangle)] = 2
    expected[drawn("rectangle", [40, 30, 90, 65])] = 1
    expected[drawn("ellipse", [12, 42, 28, 58])] = 2
    expected[drawn("polygon", [(0, 0), (4, 0), (4, 4), (0, 4)])] = 255
    np.testing.assert_array_equal(imported(out, "one"), expected)
    np.testing.assert_array_equal(imported(out, "two"), drawn("polygon", triangle).astype(np.uint8))
    assert (out / "images" / "train" / "two.png").is_file()  # the embedded image, written
    assert (
        main(
            [
                "check-data",
                "--data.dataset",
                "folder",
                "--data.root",
                str(out),
                "--progress",
                "false",
            ]
        )
        == 0
    )


def cvat_rle(patch: np.ndarray) -> str:
    """CVAT's mask code: run lengths over the box row by row, starting with a run of 0s."""
    flat = patch.astype(np.uint8).ravel()
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ", ".join(map(str, ([0] if flat[0] else []) + runs))


def test_cvat_boxes_polygons_and_masks_by_z_order(tmp_path):
    rng = np.random.default_rng(2)
    write_rgb(tmp_path / "images" / "f.png", random_image(rng, H, W))
    patch = drawn("ellipse", [0, 0, 30, 20])[:21, :31]
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
<meta><task><labels>
  <label><name>wall</name><type>any</type></label>
  <label><name>lamp</name><type>any</type></label>
  <label><name>kp</name><type>points</type></label>
</labels></task></meta>
<image id="0" name="f.png" width="{W}" height="{H}">
  <box label="wall" xtl="10" ytl="12" xbr="50" ybr="40" occluded="0" z_order="1"></box>
  <mask label="lamp" rle="{cvat_rle(patch)}" left="30" top="20" width="31" height="21"
        z_order="0"></mask>
  <polygon label="lamp" points="60,50;90,50;90,70;60,70" z_order="2"></polygon>
  <points label="kp" points="5,5" z_order="0"></points>
</image>
<image id="1" name="g.png" width="{W}" height="{H}"></image>
</annotations>"""
    (tmp_path / "annotations.xml").write_text(xml)
    report = import_labels("cvat", tmp_path / "annotations.xml", tmp_path / "out")
    out = tmp_path / "out"
    assert read_classes_file(out / "classes.yaml")[0] == ("background", "wall", "lamp")
    expected = np.zeros((H, W), np.uint8)
    expected[20:41, 30:61][patch] = 2
    expected[12:40, 10:50] = 1  # z_order 1 over the mask's 0
    expected[50:70, 60:90] = 2
    np.testing.assert_array_equal(imported(out, "f"), expected)
    skipped = "\n".join(f"{what}: {why}" for what, why in report.skipped)
    assert "<points> covers no area" in skipped
    assert "g.png: image file not found" in skipped
    assert passes_check_data(out)


def test_bad_exports_and_outputs_are_one_clear_error(coco_export, tmp_path):
    path = coco_export[0]
    labelme = tmp_path / "labelme.json"
    labelme.write_text(json.dumps({"shapes": []}))
    with pytest.raises(InputError, match="lists 'images', 'annotations'"):
        import_labels("coco", labelme, tmp_path / "o1")
    import_labels("coco", path, tmp_path / "o2")
    with pytest.raises(UsageError, match="already has files"):
        import_labels("coco", path, tmp_path / "o2")
    with pytest.raises(InputError, match="names the classes"):
        import_labels("coco", path, tmp_path / "o2", split="val", classes=["cat", "dog"])
    with pytest.raises(UsageError, match="--source"):
        import_labels("cvat", tmp_path / "nowhere.xml", tmp_path / "o3")


def test_without_pycocotools_the_error_names_the_extra(coco_export, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(AtrousError, match=r"pip install 'atrous\[labels\]'"):
        import_labels("coco", coco_export[0], tmp_path / "out")


def test_one_class_word_is_a_list_of_one():
    parser = auto_parser(COMMANDS)
    words = ["import-labels", "--classes", "car", "--keep_empty", "--split", "val"]
    assert typed_words(parser, words) == [
        "import-labels", "--classes", '["car"]', "--keep_empty", "true", "--split", "val"
    ]  # fmt: skip
    assert typed_words(parser, ["import-labels", "--classes", "[car]"])[-1] == "[car]"


def test_masks_of_exif_turned_photos_turn_with_them(tmp_path):
    """A tool that drew on the stored pixels (its size is theirs) gets its mask turned as atrous
    turns the photo; one that drew on the turned photo is taken as it is."""
    rng = np.random.default_rng(3)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored W×H, shown turned 90° clockwise: H×W
    for name in ("raw.jpg", "shown.jpg"):
        Image.fromarray(random_image(rng, H, W)).save(tmp_path / name, exif=exif)
    blob = drawn("ellipse", [10, 5, 60, 30])  # on the stored pixels, H×W
    shown = np.ascontiguousarray(np.rot90(blob, k=-1))  # on the photo as shown, W×H
    images = [
        {"id": 1, "file_name": "raw.jpg", "height": H, "width": W},
        {"id": 2, "file_name": "shown.jpg", "height": W, "width": H},
    ]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": rle(blob)},
        {"id": 2, "image_id": 2, "category_id": 1, "iscrowd": 0, "segmentation": rle(shown)},
    ]
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "c.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert import_labels("coco", tmp_path / "c.json", out).written == 2
    for stem in ("raw", "shown"):
        np.testing.assert_array_equal(imported(out, stem), shown.astype(np.uint8))
        assert read_image(out / "images" / "train" / f"{stem}.jpg").shape[:2] == (W, H)
    assert passes_check_data(out)


def test_cvat_rotated_boxes_and_ellipses_and_labelme_masks():
    box = ElementTree.fromstring('<box xtl="10" ytl="20" xbr="50" ybr="30" rotation="90"/>')
    expected = np.zeros((H, W), bool)
    expected[5:45, 25:35] = True  # 40×10 about its centre (30, 25), turned a quarter
    np.testing.assert_array_equal(cvat.shape_mask(box, H, W), expected)
    ellipse = ElementTree.fromstring('<ellipse cx="40" cy="30" rx="20" ry="12"/>')
    reference = drawn("ellipse", [20, 18, 60, 42])
    found = cvat.shape_mask(ellipse, H, W)
    assert (found != reference).mean() < 0.02 and found[30, 40] and not found[5, 5]
    patch = np.zeros((10, 12), np.uint8)
    patch[2:8, 3:11] = 255
    buffer = io.BytesIO()
    Image.fromarray(patch).save(buffer, format="PNG")
    shape = labelme_shape("x", [(50, 40), (61, 49)], "mask")
    shape["mask"] = base64.b64encode(buffer.getvalue()).decode()
    expected = np.zeros((H, W), bool)
    expected[42:48, 53:61] = True
    np.testing.assert_array_equal(labelme.shape_mask(shape, H, W), expected)
