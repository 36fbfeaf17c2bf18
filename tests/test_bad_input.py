"""The bad-input suite: every input a user can get wrong gets one clear message on stderr that
names the file or option, a non-zero exit (2 for usage errors, 1 for the rest) and no traceback
(docs/errors.md). The CLI runs in-process through ``main(argv)``; one case starts a subprocess,
for the exit status the shell sees.

Adding a case is one line in CASES: ``Case(argv, text)`` where ``text`` must appear on stderr,
optionally with the exit code and a ``make`` that writes the bad files. In argv, ``{tmp}`` is
the test's folder, ``{model}`` a tiny saved model folder and ``{image}`` a small image; ``make``
functions (below) write under ``{tmp}`` the files their names say.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import atrous
from atrous.cli import main
from atrous.data import DataConfig
from atrous.data.folder import FolderDataset
from atrous.data.io import read_mask
from atrous.errors import AtrousError
from atrous.models.zoo import create_model
from atrous.runtime.distributed import resolve_device
from atrous.training.config import RunConfig

# ---------------------------------------------------------------- bad files, written per case


def empty_folder(tmp: Path) -> None:
    (tmp / "empty").mkdir()


def not_an_image(tmp: Path) -> None:
    (tmp / "notes.png").write_text("not an image")


def fake_video(tmp: Path) -> None:
    (tmp / "fake.mp4").write_text("not a video")


def labelme_json(tmp: Path) -> None:
    """A LabelMe file, for ``import-labels --from coco``."""
    (tmp / "labelme.json").write_text('{"shapes": [], "imagePath": "a.png"}')


def garbage_files(tmp: Path) -> None:
    """A .pt, .onnx and .pth of bytes that are no model."""
    for name in ("garbage.pt", "garbage.onnx", "garbage.pth"):
        (tmp / name).write_bytes(b"\x00not a model\xff" * 8)


def saved_config(text: str) -> Callable[[Path], None]:
    """A model folder ``{tmp}/m`` whose config.json holds ``text`` (weights of the tiny model)."""

    def make(tmp: Path) -> None:
        model = tmp / "m"
        model.mkdir()
        (model / "model.safetensors").write_bytes((MODEL / "model.safetensors").read_bytes())
        config = json.loads((MODEL / "config.json").read_text())
        (model / "config.json").write_text(text.replace("$MODEL", json.dumps(config["model"])))

    return make


def json_with(**model_changes: object) -> Callable[[Path], None]:
    """``{tmp}/m``: the tiny model with ``model_changes`` in its config.json's model section."""

    def make(tmp: Path) -> None:
        saved_config("{}")(tmp)
        config = json.loads((MODEL / "config.json").read_text())
        config["model"].update(model_changes)
        (tmp / "m" / "config.json").write_text(json.dumps(config, indent=2))

    return make


def folder_data(classes: str | None = "names: [background, thing]\n", suffix: str = ".png"):
    """A folder dataset ``{tmp}/d`` of two 9×11 pairs; masks saved as ``suffix`` (.jpg: JPEG);
    ``classes``: classes.yaml's text (None: no file)."""

    def make(tmp: Path) -> None:
        rng = np.random.default_rng(0)
        for folder in ("images", "masks"):
            (tmp / "d" / folder / "train").mkdir(parents=True)
        if classes is not None:
            (tmp / "d" / "classes.yaml").write_text(classes)
        for i in range(2):
            image = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
            Image.fromarray(image).save(tmp / "d" / "images" / "train" / f"m{i}.png")
            mask = rng.integers(0, 2, (9, 11), dtype=np.uint8)
            Image.fromarray(mask).save(tmp / "d" / "masks" / "train" / f"m{i}{suffix}")

    return make


def bomb_mask(tmp: Path) -> None:
    """A folder dataset whose mask is a PNG above Pillow's decompression-bomb limit (a 1-bit
    image, so the file is small; Pillow refuses it from its header)."""
    folder_data()(tmp)
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 2
    Image.new("1", (side, side)).save(tmp / "d" / "masks" / "train" / "m0.png")


def yaml_file(text: str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / "bad.yaml").write_text(text)

    return make


# ---------------------------------------------------------------- the cases


@dataclass
class Case:
    argv: list[str]
    text: str  # must appear on stderr: the file or option named
    code: int = 1
    make: Callable[[Path], None] | None = None


TRAIN = ["train", "--run.output_dir", "{tmp}/run", "--run.progress", "false"]
TINY = [*TRAIN, "--model.backbone", "mobilenetv2", "--model.width_multiplier", "0.25"]
PALETTE_WORD = "names: [background, thing]\npalette: [[0, 0, 0], red]\n"
INVALID_YAML = "names: [background, thing\npalette: {\n"
CASES = {
    # train: options refused before anything runs
    "train crop 0": Case([*TRAIN, "--data.crop_size", "0"], "data.crop_size", 2),
    "train batch negative": Case([*TRAIN, "--run.batch_size", "-1"], "run.batch_size", 2),
    "train iterations 0": Case([*TRAIN, "--run.iterations", "0"], "run.iterations", 2),
    "train accumulate 0": Case([*TRAIN, "--run.accumulate", "0"], "run.accumulate", 2),
    "train workers negative": Case([*TRAIN, "--data.workers", "-1"], "data.workers", 2),
    "train scales reversed": Case(
        [*TRAIN, "--data.scale_min", "3", "--data.scale_max", "2"], "data.scale_min", 2
    ),
    "train no such GPU": Case([*TRAIN, "--run.device", "cuda:99"], "cuda:99", 2),
    "train device word": Case([*TRAIN, "--run.device", "banana"], "banana", 2),
    "train precision": Case([*TRAIN, "--run.precision", "fp64"], "precision", 2),
    "train lr word": Case([*TRAIN, "--optim.lr", "fast"], "lr", 2),
    "train unknown option": Case([*TRAIN, "--run.nonsense", "1"], "nonsense", 2),
    "train dataset name": Case([*TRAIN, "--data.dataset", "imagenet"], "dataset", 2),
    "train invalid yaml": Case(
        [*TRAIN, "--config", "{tmp}/bad.yaml"], "bad.yaml", 2, yaml_file(INVALID_YAML)
    ),
    "train yaml list": Case(
        [*TRAIN, "--config", "{tmp}/bad.yaml"], "bad.yaml", 2, yaml_file("- 1\n- 2\n")
    ),
    "train missing config": Case([*TRAIN, "--config", "{tmp}/none.yaml"], "none.yaml", 2),
    "train folder no root": Case([*TRAIN, "--data.dataset", "folder"], "data.root"),
    "train folder missing": Case(
        [*TRAIN, "--data.dataset", "folder", "--data.root", "{tmp}/nowhere"], "nowhere"
    ),
    "train palette word": Case(
        [*TRAIN, "--data.dataset", "folder", "--data.root", "{tmp}/d"],
        "palette entry 1",
        make=folder_data(PALETTE_WORD),
    ),
    "train classes invalid yaml": Case(
        [*TRAIN, "--data.dataset", "folder", "--data.root", "{tmp}/d"],
        "classes.yaml",
        make=folder_data(INVALID_YAML),
    ),
    "train task on voc": Case([*TRAIN, "--data.task", "binary"], "data.task"),
    "train classes mismatch": Case([*TRAIN, "--model.num_classes", "21"], "model.num_classes"),
    "train output stride": Case([*TRAIN, "--model.output_stride", "7"], "output_stride"),
    "train init_from missing": Case([*TINY, "--run.init_from", "{tmp}/none"], "none"),
    "train ema decay 1": Case([*TRAIN, "--run.ema_decay", "1"], "run.ema_decay", 2),
    "train patience without validation": Case(
        [*TRAIN, "--run.early_stop_patience", "3", "--run.val_every", "0"],
        "run.early_stop_patience",
        2,
    ),
    "predict tta name": Case(["predict", "{image}", "--inference.tta", "rot90"], "tta", 2),
    # eval
    "eval output folder missing": Case(
        ["eval", "--model", "{model}", "--output", "{tmp}/nowhere/e.json"], "nowhere", 2
    ),
    "eval output is a folder": Case(
        ["eval", "--model", "{model}", "--output", "{tmp}"], "{tmp}", 2
    ),
    "eval model missing": Case(
        ["eval", "--model", "{tmp}/none", "--output", "{tmp}/e.json"], "none"
    ),
    "eval int8 without fast": Case(
        ["eval", "--model", "{model}", "--precision", "int8"], "--fast", 2
    ),
    "eval no such GPU": Case(["eval", "--model", "{model}", "--device", "cuda:99"], "cuda:99", 2),
    "eval device word": Case(["eval", "--model", "{model}", "--device", "gpu0"], "gpu0", 2),
    "eval data missing": Case(
        ["eval", "--model", "{model}", "--data.dataset", "folder", "--data.root", "{tmp}/none"],
        "none",
    ),
    "eval invalid json": Case(
        ["eval", "--model", "{tmp}/m", "--data.dataset", "synthetic"],
        "config.json",
        make=saved_config('{"model": $MODEL,\n"class_names": [}'),
    ),
    "eval crop 0": Case(
        ["eval", "--model", "{model}", "--data.crop_size", "0"], "data.crop_size", 2
    ),
    "eval trimap source": Case(
        ["eval", "--model", "{model}", "--trimap_source", "x"], "trimap_source", 2
    ),
    "eval wrong classes": Case(
        [
            "eval",
            "--model",
            "{model}",
            "--data.dataset",
            "folder",
            "--data.root",
            "{tmp}/d",
            "--split",
            "train",
            "--output",
            "{tmp}/e.json",
        ],
        "classes",
        make=folder_data("names: [a, b, c]\n"),
    ),
    # predict
    "predict empty folder": Case(
        ["predict", "{tmp}/empty", "--model", "{model}"], "empty", make=empty_folder
    ),
    "predict glob matches nothing": Case(["predict", "{tmp}/*.png", "--model", "{model}"], "*.png"),
    "predict missing file": Case(["predict", "{tmp}/none.png", "--model", "{model}"], "none.png"),
    "predict not an image": Case(
        ["predict", "{tmp}/notes.png", "--model", "{model}", "--output_dir", "{tmp}/out"],
        "notes.png",
        make=not_an_image,
    ),
    "predict model missing": Case(["predict", "{image}", "--model", "{tmp}/none"], "none"),
    "predict config list": Case(
        ["predict", "{image}", "--model", "{tmp}/m"], "config.json", make=saved_config("[1, 2]")
    ),
    "predict config invalid json": Case(
        ["predict", "{image}", "--model", "{tmp}/m"],
        "line 2",
        make=saved_config('{"model": $MODEL,\n"x": }'),
    ),
    "predict rates not a list": Case(
        ["predict", "{image}", "--model", "{tmp}/m"], "aspp_rates", make=json_with(aspp_rates=6)
    ),
    "predict classes word": Case(
        ["predict", "{image}", "--model", "{tmp}/m"],
        "num_classes",
        make=json_with(num_classes="six"),
    ),
    "predict unknown config key": Case(
        ["predict", "{image}", "--model", "{tmp}/m"], "wings", make=json_with(wings=2)
    ),
    "predict weights do not fit": Case(
        ["predict", "{image}", "--model", "{tmp}/m"],
        "--run.init_from",
        make=json_with(num_classes=3),
    ),
    "predict garbage checkpoint": Case(
        ["predict", "{image}", "--model", "{tmp}/garbage.pt"], "garbage.pt", make=garbage_files
    ),
    "predict garbage onnx": Case(
        ["predict", "{image}", "--model", "{tmp}/garbage.onnx"], "garbage.onnx", make=garbage_files
    ),
    "predict int8 without fast": Case(
        ["predict", "{image}", "--model", "{model}", "--precision", "int8"], "--fast", 2
    ),
    "predict int8 on a runtime without int8": Case(
        ["predict", "{image}", "--model", "{model}", "--runtime", "torch", "--precision", "int8"],
        "--runtime torch runs fp32 only",
        2,
    ),
    "predict not a video": Case(
        ["predict", "{tmp}/fake.mp4", "--model", "{model}", "--output_dir", "{tmp}/out"],
        "fake.mp4",
        make=fake_video,
    ),
    # import-labels
    "import-labels wrong format": Case(
        [
            "import-labels",
            "--from",
            "coco",
            "--source",
            "{tmp}/labelme.json",
            "--output",
            "{tmp}/o",
        ],
        "labelme.json",
        make=labelme_json,
    ),
    "import-labels format word": Case(
        ["import-labels", "--from", "yolo", "--source", "{tmp}", "--output", "{tmp}/o"], "yolo", 2
    ),
    "import-labels no source": Case(
        ["import-labels", "--from", "cvat", "--source", "{tmp}/none.xml", "--output", "{tmp}/o"],
        "none.xml",
        2,
    ),
    "predict no such GPU": Case(
        ["predict", "{image}", "--model", "{model}", "--device", "cuda:99"], "cuda:99", 2
    ),
    "predict output stride": Case(
        ["predict", "{image}", "--model", "{model}", "--inference.output_stride", "5"],
        "output_stride",
    ),
    "predict unknown published": Case(
        ["predict", "{image}", "--model", "tf:nothing"], "tf:nothing"
    ),
    # export
    "export model missing": Case(
        ["export", "--model", "{tmp}/none", "--output", "{tmp}/m.onnx"], "none"
    ),
    "export output folder missing": Case(
        ["export", "--model", "{model}", "--output", "{tmp}/nowhere/m.onnx"], "nowhere", 2
    ),
    "export format": Case(["export", "--model", "{model}", "--format", "caffe2"], "format", 2),
    "export tflite int8 uncalibrated": Case(
        ["export", "--model", "{model}", "--format", "tflite", "--precision", "int8"],
        "--calibration",
        2,
    ),
    "export coreml not mlpackage": Case(
        ["export", "--model", "{model}", "--format", "coreml", "--output", "{tmp}/m.mlmodel"],
        "mlpackage",
        2,
    ),
    "export size of three": Case(
        ["export", "--model", "{model}", "--size", "65", "65", "3", "--output", "{tmp}/m.onnx"],
        "--size",
        2,
    ),
    "export onnx int8": Case(
        ["export", "--model", "{model}", "--precision", "int8", "--output", "{tmp}/m.onnx"],
        "--precision",
        2,
    ),
    "export opset word": Case(["export", "--model", "{model}", "--opset", "new"], "opset", 2),
    "export invalid json": Case(
        ["export", "--model", "{tmp}/m", "--output", "{tmp}/m.onnx"],
        "config.json",
        make=saved_config("{"),
    ),
    "export garbage checkpoint": Case(
        ["export", "--model", "{tmp}/garbage.pt", "--output", "{tmp}/m.onnx"],
        "garbage.pt",
        make=garbage_files,
    ),
    # convert
    "convert smp missing file": Case(
        ["convert", "--kind", "smp", "--source", "{tmp}/none.pth", "--output", "{tmp}/o"],
        "file not found",
    ),
    "convert smp missing folder": Case(
        ["convert", "--kind", "smp", "--source", "{tmp}/none", "--output", "{tmp}/o"], "none"
    ),
    "convert checkpoint missing": Case(
        ["convert", "--kind", "checkpoint", "--source", "{tmp}/best.pt", "--output", "{tmp}/o"],
        "best.pt",
    ),
    "convert mmseg missing": Case(
        ["convert", "--kind", "mmseg", "--source", "{tmp}/r101.pth", "--output", "{tmp}/o"],
        "r101.pth",
    ),
    "convert tf missing": Case(
        ["convert", "--kind", "tf", "--source", "{tmp}/x.tar.gz", "--output", "{tmp}/o"], "x.tar.gz"
    ),
    "convert garbage checkpoint": Case(
        ["convert", "--kind", "checkpoint", "--source", "{tmp}/garbage.pt", "--output", "{tmp}/o"],
        "garbage.pt",
        make=garbage_files,
    ),
    "convert kind": Case(
        ["convert", "--kind", "keras", "--source", "x", "--output", "o"], "kind", 2
    ),
    "convert no output": Case(["convert", "--kind", "smp", "--source", "x"], "output", 2),
    "convert crop for torchvision": Case(
        [
            "convert",
            "--kind",
            "torchvision",
            "--source",
            "{tmp}/garbage.pth",
            "--output",
            "{tmp}/o",
            "--crop_size",
            "513",
            "513",
        ],
        "--crop_size",
        2,
        garbage_files,
    ),
    "convert aux head for smp": Case(
        ["convert", "--kind", "smp", "--source", "{model}", "--output", "{tmp}/o", "--aux_head"],
        "--aux_head",
        2,
    ),
    "convert tf classes": Case(
        [
            "convert",
            "--kind",
            "tf",
            "--source",
            "{tmp}/x",
            "--output",
            "{tmp}/o",
            "--class_names",
            "a",
            "b",
        ],
        "--class_names",
        2,
    ),
    # check-data
    "check-data folder missing": Case(
        ["check-data", "--data.dataset", "folder", "--data.root", "{tmp}/none"], "none"
    ),
    "check-data palette word": Case(
        ["check-data", "--data.dataset", "folder", "--data.root", "{tmp}/d"],
        "palette entry 1",
        make=folder_data(PALETTE_WORD),
    ),
    "check-data classes invalid yaml": Case(
        ["check-data", "--data.dataset", "folder", "--data.root", "{tmp}/d"],
        "line",
        make=folder_data(INVALID_YAML),
    ),
    "check-data jpeg masks": Case(
        ["check-data", "--data.dataset", "folder", "--data.root", "{tmp}/d"],
        "masks must be PNG",
        make=folder_data(suffix=".jpg"),
    ),
    "check-data bomb mask": Case(
        ["check-data", "--data.dataset", "folder", "--data.root", "{tmp}/d"],
        "m0.png",
        make=bomb_mask,
    ),
    "check-data fix inside": Case(
        [
            "check-data",
            "--data.dataset",
            "folder",
            "--data.root",
            "{tmp}/d",
            "--fix",
            "{tmp}/d/masks/fixed",
        ],
        "--fix",
        make=folder_data(),
    ),
    "check-data fix not folder": Case(["check-data", "--fix", "{tmp}/o"], "--fix", 2),
    "check-data crop 0": Case(["check-data", "--data.crop_size", "0"], "data.crop_size", 2),
    "check-data split": Case(["check-data", "--split", "test"], "split", 2),
    "check-data old positional": Case(["check-data", "folder", "--root", "x"], "folder", 2),
    # profile and models
    "profile height 0": Case(["profile", "--height", "0"], "height", 2),
    "profile width negative": Case(["profile", "--width", "-5"], "width", 2),
    "profile classes 0": Case(["profile", "--num_classes", "0"], "num_classes", 2),
    "profile model": Case(["profile", "--model", "nope"], "nope"),
    "profile output stride": Case(["profile", "--output_stride", "7"], "output_stride"),
    "models pretrained word": Case(["models", "--pretrained", "maybe"], "maybe", 2),
    "unknown command": Case(["fit"], "fit", 2),
    # serve (its loader; the page is never started)
    "serve model missing": Case(["serve", "{tmp}/none"], "none"),
    "serve invalid json": Case(["serve", "{tmp}/m"], "config.json", make=saved_config("{")),
    "serve rates not a list": Case(
        ["serve", "{tmp}/m"], "aspp_rates", make=json_with(aspp_rates=6)
    ),
    "serve port word": Case(["serve", "{model}", "--port", "http"], "port", 2),
    "serve garbage onnx": Case(["serve", "{tmp}/garbage.onnx"], "garbage.onnx", make=garbage_files),
}

MODEL: Path  # the tiny saved model (set by the module fixture)


@pytest.fixture(scope="module", autouse=True)
def tiny_model(tmp_path_factory) -> Path:
    """A 6-class MobileNetV2 DeepLabV3+ at width 0.25, saved, and a 33×33 image."""
    global MODEL
    folder = tmp_path_factory.mktemp("bad_input")
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=6, width_multiplier=0.25)
    model.save_pretrained(folder / "model")
    image = np.random.default_rng(0).integers(0, 256, (33, 33, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / "image.png")
    MODEL = folder / "model"
    return folder


@pytest.fixture(autouse=True)
def no_gradio(monkeypatch):
    """serve's cases fail in its loader, before the page: Gradio's import is not needed."""
    monkeypatch.setattr("atrous.apps.serve._gradio", lambda: None)


def expand(argv: list[str], tmp: Path, shared: Path) -> list[str]:
    values = {"tmp": str(tmp), "model": str(shared / "model"), "image": str(shared / "image.png")}
    return [word.format(**values) for word in argv]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_clear_message(case: Case, tmp_path, tiny_model, capsys):
    if case.make is not None:
        case.make(tmp_path)
    status = main(expand(case.argv, tmp_path, tiny_model))
    out, err = capsys.readouterr()
    assert status == case.code, err
    assert "Traceback" not in out + err
    assert case.text.format(tmp=tmp_path) in err, err
    assert "internal error" not in err, err


# ---------------------------------------------------------------- the Python API


API = {
    "load missing": (lambda tmp: atrous.load(tmp / "none"), "none", None),
    "load invalid json": (
        lambda tmp: atrous.load(tmp / "m"),
        "config.json",
        saved_config("{"),
    ),
    "load config list": (
        lambda tmp: atrous.load(tmp / "m"),
        "config.json",
        saved_config("[]"),
    ),
    "load rates not a list": (
        lambda tmp: atrous.load(tmp / "m"),
        "aspp_rates",
        json_with(aspp_rates=6),
    ),
    "classes palette word": (
        lambda tmp: FolderDataset(tmp / "d", "train"),
        "palette entry 1",
        folder_data(PALETTE_WORD),
    ),
    "jpeg mask": (
        lambda tmp: read_mask(tmp / "d" / "masks" / "train" / "m0.jpg"),
        "m0.jpg",
        folder_data(suffix=".jpg"),
    ),
    "bomb mask": (
        lambda tmp: read_mask(tmp / "d" / "masks" / "train" / "m0.png"),
        "m0.png",
        bomb_mask,
    ),
    "data config crop": (lambda tmp: DataConfig(crop_size=0), "data.crop_size", None),
    "run config batch": (lambda tmp: RunConfig(batch_size=-4), "run.batch_size", None),
    "device": (lambda tmp: resolve_device("cuda:99"), "cuda:99", None),
}


@pytest.mark.parametrize(("call", "text", "make"), API.values(), ids=API.keys())
def test_python_api_raises_one_clear_error(call, text, make, tmp_path):
    if make is not None:
        make(tmp_path)
    with pytest.raises((AtrousError, ValueError, OSError)) as raised:
        call(tmp_path)
    assert text in str(raised.value)


def test_serve_loader_names_the_model(tmp_path):
    from atrous.apps.serve import PageModel

    saved_config("[]")(tmp_path)
    with pytest.raises((AtrousError, ValueError)) as raised:
        PageModel(tmp_path / "m", tmp_path)
    assert "config.json" in str(raised.value)


# ---------------------------------------------------------------- internal errors, --debug


def test_an_internal_error_is_one_line_saying_it_is_a_bug(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("the profiler broke")

    monkeypatch.setattr("atrous.cli.profile_model", broken)
    assert main(["profile", "--model", "deeplabv3_mobilenetv2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("internal error (a bug): RuntimeError: the profiler broke; please report")
    assert "rerun with --debug" in err and "Traceback" not in err and err.count("\n") == 1
    assert main(["profile", "--model", "deeplabv3_mobilenetv2", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("ATROUS_DEBUG", "1")
    assert main(["profile", "--height", "0"]) == 2  # usage errors stay usage errors
    assert main(["predict", "/nonexistent/*.png"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "no image files match" in err


@pytest.mark.parametrize(
    ("module", "remedy"), [("gradio", "atrous[serve]"), ("timm", "atrous[timm]")]
)
def test_a_missing_optional_package_names_what_to_install(module, remedy, monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise ModuleNotFoundError(f"No module named '{module}'", name=module)

    monkeypatch.setattr("atrous.cli.profile_model", missing)
    assert main(["profile"]) == 1
    err = capsys.readouterr().err
    assert f"atrous profile needs the package '{module}'" in err and remedy in err


@pytest.mark.slow
def test_the_shell_sees_the_exit_status(tmp_path):
    (tmp_path / "empty").mkdir()
    command = [sys.executable, "-m", "atrous", "predict", str(tmp_path / "empty")]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 1
    assert "no image files in the folder" in result.stderr and "Traceback" not in result.stderr


def test_there_are_enough_cases():
    assert len(CASES) + len(API) >= 60
