import json
import shutil
import subprocess
import sys

import pytest
import torch
from jsonargparse import auto_parser

from atrous.cli import COMMANDS, main, print_evaluation, typed_words
from atrous.evaluation.evaluate import Evaluation
from atrous.evaluation.metrics import ConfusionMatrix
from atrous.evaluation.report import write_report


@pytest.mark.slow
def test_profile_prints_groups_and_both_counts(capsys):
    assert main(["profile", "--model", "deeplabv3plus_xception65", "--output_stride", "8"]) == 0
    out = capsys.readouterr().out
    for word in ("backbone", "aspp", "decoder", "classifier", "total", "176.85", "176.96"):
        assert word in out


@pytest.mark.slow
def test_the_installed_atrous_command_runs_and_passes_on_its_exit_status():
    """The console script pip installs ([project.scripts]), not ``python -m atrous``."""
    script = shutil.which("atrous")
    assert script is not None, "no `atrous` on PATH: install the package (pip install -e .)"
    listed = subprocess.run([script, "models"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "deeplabv3plus_mobilenetv2" in listed.stdout
    refused = subprocess.run(
        [script, "profile", "--model", "nope"], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1
    assert "unknown model name 'nope'" in refused.stderr and "Traceback" not in refused.stderr


def test_profile_unknown_model_is_one_clear_error(capsys):
    assert main(["profile", "--model", "nope"]) == 1
    err = capsys.readouterr().err
    assert "unknown model name 'nope'" in err and "Traceback" not in err


@pytest.mark.slow
def test_models_lists_named_configurations(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "deeplabv3plus_resnet101_beta" in out and "deeplabv3_mobilenetv2" in out


@pytest.mark.slow
def test_models_fit_80_columns(capsys):
    assert main(["models", "--pretrained"]) == 0  # a bare flag means true
    out = capsys.readouterr().out
    assert "tf:xception65_coco_voc_trainaug" in out and "published mIoU" in out
    assert max(map(len, out.splitlines())) <= 80
    assert main(["models"]) == 0
    assert max(map(len, capsys.readouterr().out.splitlines())) <= 80


@pytest.mark.slow
def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "atrous.cli", "profile", "--model", "deeplabv3_mobilenetv2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "total" in result.stdout


def test_check_data_reports_bad_files_and_frequencies(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    (tmp_path / "classes.yaml").write_text("names: [background, thing]\n")
    for i, value in enumerate([1, 1, 5]):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
        mask = np.zeros((4, 4), dtype=np.uint8)
        mask[:2] = value
        Image.fromarray(mask, mode="L").save(tmp_path / "masks" / f"{i}.png")
    folder = ["--data.dataset", "folder", "--data.root", str(tmp_path), "--data.train_split", ""]
    status = main(["check-data", *folder])
    out, err = capsys.readouterr()
    assert status == 1
    assert "2 of 3 samples valid" in out and "50.00%" in out
    assert "2.png: label values 5 are outside [0, 2)" in err  # a bad sample: on stderr


def test_train_with_mismatched_classes_is_one_clear_error(capsys):
    assert main(["train", "--model.num_classes", "21", "--run.iterations", "1"]) == 1
    err = capsys.readouterr().err
    assert "model.num_classes is 21 but dataset 'synthetic' has 6 classes" in err


def test_serve_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # what an install without the extra sees
    assert main(["serve", "runs/no_model"]) == 1
    assert "atrous serve needs Gradio: pip install 'atrous[serve]'" in capsys.readouterr().err


def test_binary_255_masks_fail_check_data_and_training(tmp_path, capsys):
    from helpers import make_binary_folder

    make_binary_folder(tmp_path, "[background, object]", 255)
    folder = ["--data.dataset", "folder", "--data.root", str(tmp_path)]
    assert main(["check-data", *folder]) == 1
    out = capsys.readouterr().out
    assert "labels: every mask holds only 0 and 255" in out and "4 of 4 samples valid" in out
    folder += ["--data.val_split", "train"]
    assert main(["train", *folder, "--run.output_dir", str(tmp_path / "run")]) == 1
    assert "error: every mask holds only 0 and 255" in capsys.readouterr().err


def test_eval_report_of_a_binary_task_prints_and_writes_the_foreground(tmp_path, capsys):
    confusion = ConfusionMatrix(2)
    confusion.matrix = torch.tensor([[90, 2], [6, 2]])  # foreground: TP 2, FP 2, FN 6
    report = {"inference": {}, "precision": "fp32", "images": 1}
    path = tmp_path / "eval_val.json"
    names = ["background", "road"]
    print_evaluation(write_report(Evaluation(confusion), names, report, "void", path, "binary"))
    out = capsys.readouterr().out
    line = "foreground (road): IoU 20.00, Dice 33.33, F1 33.33, precision 50.00, recall 25.00"
    assert line in out
    written = json.loads(path.read_text())
    assert written["scores"]["foreground"]["f1"] == pytest.approx(1 / 3)
    assert written["confusion_matrix"] == [[90, 2], [6, 2]]
    assert (tmp_path / "eval_val_confusion.png").stat().st_size > 1000


def test_options_as_users_type_them():
    parser = auto_parser(COMMANDS)
    assert typed_words(parser, ["models", "--pretrained"]) == ["models", "--pretrained", "true"]
    words = ["convert", "--crop_size", "513", "513", "--kind", "tf", "--aux_head", "false"]
    assert typed_words(parser, words) == [
        "convert", "--crop_size", "[513, 513]", "--kind", "tf", "--aux_head", "false"
    ]  # fmt: skip
    words = ["predict", "--fast", "a.jpg", "--inference.scales", "0.5", "1", "b.jpg"]
    assert typed_words(parser, words) == [
        "predict", "--fast", "true", "a.jpg", "--inference.scales", "[0.5, 1]", "b.jpg"
    ]  # fmt: skip
    parsed = parser.parse_args(
        typed_words(parser, ["train", "--model.aspp_rates", "6", "12", "18"])
    )
    assert parsed.train.model.aspp_rates == (6, 12, 18)
