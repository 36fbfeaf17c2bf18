import subprocess
import sys

from atrous.cli import main


def test_profile_prints_groups_and_both_counts(capsys):
    assert main(["profile", "--model", "deeplabv3plus_xception65", "--output_stride", "8"]) == 0
    out = capsys.readouterr().out
    for word in ("backbone", "aspp", "decoder", "classifier", "total", "176.85", "176.96"):
        assert word in out


def test_profile_unknown_model_is_one_clear_error(capsys):
    assert main(["profile", "--model", "nope"]) == 2
    out = capsys.readouterr().out
    assert "unknown model name 'nope'" in out and "Traceback" not in out


def test_models_lists_named_configurations(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "deeplabv3plus_resnet101_beta" in out and "deeplabv3_mobilenetv2" in out


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "atrous.cli", "profile", "--model", "deeplabv3_mobilenetv2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "total" in result.stdout
