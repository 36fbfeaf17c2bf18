"""OpenVINO IR export: an fp32 IR agrees with the eager model within fp32 rounding at two sizes
(compiled at f32, whatever the CPU plugin's default), an int8 IR keeps its pixels' classes, a
broken graph fails the check (fp32 and int8), and an .xml runs through `atrous predict` with the
eager model's masks."""

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_image, randomize_bn, write_rgb
from PIL import Image

import atrous.export.openvino as ov_export
from atrous.cli import main
from atrous.data.palettes import voc_palette
from atrous.data.synthetic import render_scene
from atrous.errors import AtrousError
from atrous.export.onnx import CHECK_SIZES, ExportCheckError, model_metadata
from atrous.export.openvino import (
    INT8_MAX_RELATIVE_DIFF,
    INT8_MIN_ARGMAX_AGREEMENT,
    OpenvinoNetwork,
    check_inputs,
    check_ir,
    default_inference_precision,
    export_openvino,
)
from atrous.hub.load import load, load_segmenter
from atrous.inference.predict import Segmenter
from atrous.inference.strategies import InferenceConfig

CLASSES = ["background", "disc", "box"]


def tiny_model() -> torch.nn.Module:
    """A random tiny MobileNetV2 DeepLabV3+ with real BN statistics and logits of tens (the
    classifier scaled ×50), so relative differences are judged on a real scale."""
    from atrous.models.zoo import create_model

    torch.manual_seed(0)
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25)
    randomize_bn(model)
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    return model.eval()


@pytest.fixture(scope="module")
def ov():
    """The openvino package (the ``openvino`` extra, not in ``dev``: its tests skip without it)."""
    return pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def saved(ov, tmp_path_factory):
    folder = tmp_path_factory.mktemp("openvino") / "model"
    tiny_model().save_pretrained(folder, class_names=CLASSES)
    return folder


@pytest.fixture(scope="module")
def exported(saved, tmp_path_factory):
    """The fp32 IR of ``saved`` (checked) and its report."""
    path = tmp_path_factory.mktemp("ir") / "tiny.xml"
    model = load(saved)
    return model, export_openvino(model, path, CLASSES, palette=voc_palette(3))


@pytest.fixture(scope="module")
def int8_cli(saved, tmp_path_factory):
    """``atrous export --format openvino --precision int8`` calibrated on a folder of 4 scenes:
    (exit status, the IR, what it printed)."""
    pytest.importorskip("nncf")
    root = tmp_path_factory.mktemp("int8")
    for index, size in enumerate([97, 129, 113, 100]):
        write_rgb(root / "calibration" / f"scene{index}.png", render_scene(3, index, size)[0])
    path = root / "ir" / "tiny.int8.xml"
    path.parent.mkdir()
    args = ["--format", "openvino", "--precision", "int8", "--calibration"]
    command = ["export", "--model", str(saved), "--output", str(path), *args]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        status = main([*command, str(root / "calibration")])
    return status, path, printed.getvalue()


def broken(ov, path, target, shift: float) -> None:
    """Write the IR at ``path`` to ``target`` with the classifier's bias of class 2 moved by
    ``shift`` (one wrong constant: the kind of error a wrong conversion makes)."""
    ir = ov.Core().read_model(path)
    (add,) = [
        op
        for op in ir.get_ordered_ops()
        if op.get_type_name() == "Add" and "classifier" in op.get_friendly_name()
    ]
    values = add.input_value(1).get_node().get_data().copy()
    values[0, 2] += shift
    add.input(1).replace_source_output(ov.opset13.constant(values).output(0))
    ov.save_model(ir, target, compress_to_fp16=False)


def scale_of(model: torch.nn.Module) -> float:
    images = next(check_inputs(3, CHECK_SIZES[:1], model.config.mean, model.config.std))[1]
    with torch.no_grad():
        return model(images).abs().max().item()


@pytest.mark.slow
def test_the_fp32_ir_is_dynamic_uncompressed_and_carries_the_models_metadata(ov, exported):
    model, report = exported
    assert report.path.is_file() and report.path.with_suffix(".bin").is_file()
    assert sorted(p.name for p in report.path.parent.iterdir()) == ["tiny.bin", "tiny.xml"]
    ir = ov.Core().read_model(report.path)
    assert str(ir.inputs[0].get_partial_shape()) == "[?,3,?,?]"
    constants = [op for op in ir.get_ordered_ops() if op.get_type_name() == "Constant"]
    types = {c.get_output_element_type(0).get_type_name() for c in constants}
    assert types <= {"f32", "i64", "i32"}  # no fp16 weights: saved without compression
    metadata = json.loads(ir.get_rt_info(["atrous"]).astype(str))
    expected = model_metadata(model, CLASSES, voc_palette(3))
    assert metadata == {**expected, "precision": "fp32"}


@pytest.mark.slow
def test_the_fp32_ir_agrees_within_rounding_at_two_sizes_compiled_at_f32(exported):
    _model, report = exported
    assert report.checked_at == "f32"
    assert report.plugin_default == default_inference_precision() in ("f32", "bf16")
    assert sorted(report.agreement) == sorted(CHECK_SIZES)
    assert len(report.by_input) == 4  # random and scenes at each size
    for size, agreement in report.agreement.items():
        assert agreement.scale > 5
        assert agreement.relative_diff <= report.tolerance[size] <= 1e-3
        assert agreement.argmax_agreement > 0.999


@pytest.mark.slow
def test_a_broken_fp32_graph_fails_the_check_and_is_kept_aside(ov, exported, tmp_path, monkeypatch):
    model, report = exported
    bad = tmp_path / "bad.xml"
    broken(ov, report.path, bad, 0.02 * scale_of(model))  # 2% of the scale: far above rounding
    with pytest.raises(ExportCheckError, match=r"OpenVINO fp32 output on random 97×129 differs"):
        check_ir(model, bad)
    monkeypatch.setattr(ov_export, "convert", lambda _model: ov.Core().read_model(bad))
    path = tmp_path / "out" / "model.xml"
    with pytest.raises(ExportCheckError, match="was not written, the IR is in"):
        export_openvino(model, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.failed.bin", "model.failed.xml"]


@pytest.mark.slow
def test_the_int8_command_quantises_on_the_folder_and_records_its_agreement(ov, int8_cli, saved):
    status, path, printed = int8_cli
    assert status == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.int8.bin", "tiny.int8.xml"]
    assert "OpenVINO int8 vs eager on scenes 161×113: max |Δlogit|" in printed
    ir = ov.Core().read_model(path)
    assert any(op.get_type_name() == "FakeQuantize" for op in ir.get_ordered_ops())
    assert json.loads(ir.get_rt_info(["atrous"]).astype(str))["precision"] == "int8"
    report = check_ir(load(saved), path, "int8")
    scenes = [a for label, a in report.by_input.items() if label.startswith("scenes")]
    assert len(scenes) == 2
    assert all(a.argmax_agreement >= INT8_MIN_ARGMAX_AGREEMENT for a in scenes)
    assert all(0 < a.relative_diff <= INT8_MAX_RELATIVE_DIFF for a in scenes)
    assert len(report.by_input) == 4  # random images: recorded, not held to the floor


@pytest.mark.slow
def test_a_broken_int8_graph_fails_the_int8_floor(ov, int8_cli, saved, tmp_path):
    model = load(saved)
    bad = tmp_path / "bad.xml"
    broken(ov, int8_cli[1], bad, 2 * scale_of(model))
    with pytest.raises(ExportCheckError, match=r"int8 output on .* differs from the eager model"):
        check_ir(model, bad, "int8")


@pytest.mark.slow
def test_an_ir_runs_through_predict_with_the_eager_models_masks(exported, saved, tmp_path):
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate([(70, 90), (101, 77)]):
        write_rgb(tmp_path / "images" / f"p{i}.png", random_image(rng, height, width))
    out = tmp_path / "out"
    path = exported[1].path
    args = ["predict", str(tmp_path / "images"), "--model", str(path)]
    assert main([*args, "--output_dir", str(out), "--progress", "false"]) == 0
    eager = Segmenter.from_model(load(saved))
    segmenter = load_segmenter(path)
    assert isinstance(segmenter.network, OpenvinoNetwork)
    assert segmenter.network.inference_precision == "f32"
    assert list(segmenter.class_names) == CLASSES
    for i in range(2):
        image = np.asarray(Image.open(tmp_path / "images" / f"p{i}.png").convert("RGB"))
        written = np.asarray(Image.open(out / "masks" / f"p{i}.png"))
        assert np.array_equal(written, eager(image))


@pytest.mark.slow
def test_the_documented_openvino_snippet_gives_the_eager_labels(exported, saved, tmp_path):
    """docs/deployment.md's OpenVINO snippet, run as written (plus a line saving its labels)."""
    text = (Path(__file__).parents[2] / "docs" / "deployment.md").read_text()
    (snippet,) = [s for s in re.findall(r"```python\n(.*?)```", text, re.S) if "openvino" in s]
    for suffix in (".xml", ".bin"):
        (tmp_path / f"demo{suffix}").symlink_to(exported[1].path.with_suffix(suffix))
    image = render_scene(3, 0, 72)[0]
    Image.fromarray(image).save(tmp_path / "photo.jpg", quality=100)
    code = snippet + "np.save('labels.npy', labels)\n"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    reread = np.asarray(Image.open(tmp_path / "photo.jpg").convert("RGB"))
    eager = Segmenter.from_model(load(saved), InferenceConfig(align=False))  # as the snippet
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), eager(reread))


def test_without_openvino_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(AtrousError, match=r"pip install 'atrous\[openvino\]'"):
        export_openvino(torch.nn.Identity(), tmp_path / "model.xml")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--precision", "int8"], "--precision int8: --format onnx writes fp32"),
        (["--format", "openvino", "--precision", "int8"], "needs --calibration DIR"),
        (["--format", "openvino", "--output", "m.onnx"], "--format openvino writes NAME.xml"),
    ],
)
def test_the_export_command_refuses_what_it_cannot_write(options, message, tmp_path, capsys):
    args = ["export", "--model", str(tmp_path / "none"), "--output", str(tmp_path / "m.xml")]
    options = [str(tmp_path / o) if o.endswith(".onnx") else o for o in options]
    assert main([*args, *options]) == 2
    assert message in capsys.readouterr().err
