"""Core ML export: a tiny MobileNetV2 converted to an ``.mlpackage`` at a fixed 65×65 (fp32
through the library, fp16 through ``atrous export``) with the right input and output shapes and
the model description in its metadata. Core ML itself runs only on macOS: here the command says
the run-time check was skipped; the check's comparison is tested with a stand-in that runs the
eager model (a perturbed one fails it)."""

import json
import sys

import numpy as np
import pytest
import torch
from helpers import tiny_model

from atrous.cli import main
from atrous.errors import AtrousError, UsageError
from atrous.export import coreml
from atrous.export.coreml import FP16_TOLERANCE, METADATA_KEY, check_coreml, export_coreml
from atrous.export.onnx import ExportCheckError

SIZE = (65, 65)
on_macos = sys.platform == "darwin"


def package_metadata(path) -> dict:
    ct = pytest.importorskip("coremltools")
    package = ct.models.MLModel(str(path), skip_model_load=True)
    return json.loads(package.user_defined_metadata[METADATA_KEY])


@pytest.mark.slow
def test_fp32_package_has_fixed_shapes_and_the_description(tmp_path):
    pytest.importorskip("coremltools")
    model = tiny_model()
    path = tmp_path / "model.mlpackage"
    report = export_coreml(model, path, SIZE, class_names=["sky", "road", "car"])
    assert (path / "Manifest.json").is_file()
    assert report.shapes == {"images": [1, 3, *SIZE], "logits": [1, 3, *SIZE]}
    metadata = package_metadata(path)
    assert metadata["input_size"] == list(SIZE)
    assert metadata["class_names"] == ["sky", "road", "car"]
    assert metadata["mean"] == list(model.config.mean) and metadata["precision"] == "fp32"
    if on_macos:
        assert report.skipped is None and report.agreement
    else:
        assert "macOS" in report.skipped and not report.agreement
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage"]


@pytest.mark.slow
def test_export_command_writes_fp16_and_says_the_check_needs_macos(tmp_path, capsys):
    pytest.importorskip("coremltools")
    tiny_model().save_pretrained(tmp_path / "model")
    output = tmp_path / "model.mlpackage"
    argv = ["export", "--model", str(tmp_path / "model"), "--format", "coreml"]
    argv += ["--precision", "fp16", "--size", "65", "65", "--output", str(output)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"written: {output}" in printed
    if not on_macos:
        assert "Core ML run-time check skipped: Core ML runs only on macOS" in printed
    assert package_metadata(output)["precision"] == "fp16"
    weights = (output / "Data/com.apple.CoreML/model.mlmodel").read_bytes()
    assert b"fp16" in weights  # the program computes in fp16
    assert main(argv) == 0  # a package already there is replaced


class StandIn:
    """Core ML's ``predict`` interface run by an eager model (Core ML needs macOS)."""

    def __init__(self, model: torch.nn.Module, shift: float = 0.0) -> None:
        self.model, self.shift = model, shift
        self.user_defined_metadata = {METADATA_KEY: json.dumps({"input_size": list(SIZE)})}

    def predict(self, inputs: dict) -> dict:
        with torch.no_grad():
            logits = self.model(torch.from_numpy(inputs["images"])) + self.shift
        return {"logits": logits.numpy().astype(np.float32)}


def test_the_check_passes_the_model_and_fails_a_perturbed_one():
    model, image = tiny_model(), torch.randn(1, 3, *SIZE)
    report = check_coreml(model, StandIn(tiny_model()), images=[image])
    (agreement,) = report.agreement.values()
    assert agreement.max_abs_diff == 0 and agreement.scale > 1
    with pytest.raises(ExportCheckError, match="Core ML output at 65×65 differs"):
        check_coreml(model, StandIn(tiny_model(), shift=0.01 * agreement.scale), images=[image])


def test_fp16_is_held_to_its_own_floor():
    model, image = tiny_model(), torch.randn(1, 3, *SIZE)
    shifted = StandIn(tiny_model(), shift=FP16_TOLERANCE / 2)  # logits' scale > 1
    report = check_coreml(model, shifted, "fp16")  # random images at the package's size
    assert report.tolerance[SIZE] >= FP16_TOLERANCE
    with pytest.raises(ExportCheckError):
        check_coreml(model, shifted, "fp32", [image])


def test_an_output_not_named_mlpackage_is_refused_before_converting(tmp_path):
    with pytest.raises(UsageError, match=r"\*\.mlpackage"):
        export_coreml(tiny_model(), tmp_path / "model.mlmodel", SIZE)
    with pytest.raises(UsageError, match="fp32 or fp16"):
        export_coreml(tiny_model(), tmp_path / "model.mlpackage", SIZE, "int8")
    assert list(tmp_path.iterdir()) == []


def test_without_coremltools_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(AtrousError, match=r"pip install 'atrous\[coreml\]'"):
        coreml._coremltools()
