"""LiteRT export: a tiny MobileNetV2 at a fixed 65×65 through ``atrous export --format tflite``,
fp32 within the model's own fp32 rounding of eager in the LiteRT interpreter and int8 within the
int8 floor on real-looking scenes; a graph with one perturbed weight, or another model's, fails
the check. Conversion needs litert-torch (the ``tflite`` extra, not in ``dev``: it pins
typing-extensions below what ``dev``'s selenium needs), so those tests skip without it."""

import importlib.util
import sys

import numpy as np
import pytest
import torch
from helpers import tiny_model
from PIL import Image

from atrous.cli import main
from atrous.data.synthetic import render_scene
from atrous.errors import AtrousError
from atrous.export import tflite
from atrous.export.onnx import ExportCheckError, compare_logits, rounding_tolerance
from atrous.export.tflite import (
    INT8_TOLERANCE,
    TfliteNetwork,
    check_tflite,
    export_tflite,
    read_metadata,
)
from atrous.inference.fast import normalise_images

SIZE = (65, 65)
needs_litert_torch = pytest.mark.skipif(
    importlib.util.find_spec("litert_torch") is None,
    reason="needs litert-torch (pip install 'atrous[tflite]')",
)


def scenes(model: torch.nn.Module, count: int = 4) -> list[torch.Tensor]:
    """Built-in scenes of 80×72 normalised as the model expects (not the export size)."""
    images = [render_scene(0, i, 80)[0][:, :72] for i in range(count)]
    return normalise_images(images, model.config.mean, model.config.std)


def perturbed_bias(content: bytes, shift: float) -> bytes:
    """``content`` with ``shift`` added to the classifier bias (the graph's one 3-vector)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    (bias,) = [
        t for t in tree.subgraphs[0].tensors if b"classifier" in t.name and list(t.shape) == [3]
    ]
    values = np.frombuffer(tree.buffers[bias.buffer].data.tobytes(), dtype=np.float32)
    tree.buffers[bias.buffer].data = (values + np.float32(shift)).view(np.uint8)
    builder = flatbuffers.Builder(len(content))
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory):
    """The tiny model saved, then exported by the command at 65×65."""
    folder = tmp_path_factory.mktemp("tflite")
    model = tiny_model()
    model.save_pretrained(folder / "model")
    output = folder / "model.tflite"
    argv = ["export", "--model", str(folder / "model"), "--format", "tflite"]
    status = main([*argv, "--size", *map(str, SIZE), "--output", str(output)])
    assert status == 0
    return model, output


@pytest.mark.slow
@needs_litert_torch
def test_fp32_export_keeps_nchw_and_matches_eager(fp32_export):
    """Within the model's own fp32 rounding on random images and on a scene."""
    model, path = fp32_export
    network = TfliteNetwork(path)
    assert list(network.input["shape"]) == [1, 3, *SIZE]  # NCHW, batch 1, fixed size
    assert list(network.output["shape"]) == [1, 3, *SIZE]
    images = [
        torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(5)),
        tflite.fit_calibration(scenes(model), SIZE)[0],
    ]
    for image in images:
        with torch.no_grad():
            reference = model(image)
        assert reference.abs().max() > 1
        agreement = compare_logits(network(image), reference)
        assert agreement.relative_diff <= rounding_tolerance(model, image, reference)
        assert agreement.argmax_agreement > 0.999


@pytest.mark.slow
@needs_litert_torch
def test_the_file_carries_size_layout_classes_and_normalisation(fp32_export):
    model, path = fp32_export
    metadata = read_metadata(path)
    assert metadata["input_size"] == list(SIZE)
    assert metadata["layout"] == "NCHW"
    assert metadata["precision"] == "fp32"
    assert metadata["mean"] == list(model.config.mean)
    assert metadata["std"] == list(model.config.std)
    assert len(metadata["class_names"]) == 3


@pytest.mark.slow
@needs_litert_torch
def test_one_perturbed_weight_fails_the_check(fp32_export, tmp_path):
    """The classifier bias of every class moved by 1% of the logits' scale: far above fp32
    rounding, small beside the logits."""
    model, path = fp32_export
    with torch.no_grad():
        scale = model(torch.randn(1, 3, *SIZE)).abs().max().item()
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(perturbed_bias(path.read_bytes(), 0.01 * scale))
    with pytest.raises(ExportCheckError, match=r"LiteRT output at 65×65 differs from the eager"):
        check_tflite(model, broken)


@pytest.mark.slow
@needs_litert_torch
def test_a_failed_check_keeps_the_file_as_failed_and_the_previous_export(
    fp32_export, tmp_path, monkeypatch
):
    model, good = fp32_export
    path = tmp_path / "model.tflite"
    path.write_bytes(b"the previous, good export")
    broken = perturbed_bias(good.read_bytes(), 1.0)
    monkeypatch.setattr(tflite, "convert_tflite", lambda *args: broken)
    with pytest.raises(ExportCheckError) as failed:
        export_tflite(model, path, SIZE)
    assert f"{path} was not written, the file is in {tmp_path / 'model.failed.tflite'}" in str(
        failed.value
    )
    assert path.read_bytes() == b"the previous, good export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.failed.tflite", "model.tflite"]


@pytest.mark.slow
@needs_litert_torch
def test_int8_is_calibrated_on_a_folder_and_within_the_floor(tmp_path, capsys):
    """``--precision int8 --calibration DIR``: scenes of another size, read and normalised as
    the model expects; another model's logits fail the int8 floor."""
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "scenes").mkdir()
    for i in range(4):
        Image.fromarray(render_scene(0, i, 80)[0][:, :72]).save(tmp_path / "scenes" / f"{i}.png")
    path = tmp_path / "model.int8.tflite"
    argv = ["export", "--model", str(tmp_path / "model"), "--format", "tflite", "--size", "65"]
    argv += ["65", "--precision", "int8", "--calibration", str(tmp_path / "scenes")]
    assert main([*argv, "--output", str(path)]) == 0
    assert "LiteRT int8 vs eager at 65×65" in capsys.readouterr().out
    network = TfliteNetwork(path)
    assert network.input["dtype"] == np.int8 and list(network.input["shape"]) == [1, 3, *SIZE]
    assert read_metadata(path)["precision"] == "int8"
    calibration = tflite.fit_calibration(scenes(model), SIZE)
    report = check_tflite(model, path, "int8", calibration[:2])
    assert 0 < report.relative_rms <= INT8_TOLERANCE
    assert report.agreement[SIZE].argmax_agreement > 0.9
    with pytest.raises(ExportCheckError, match=r"int8 LiteRT output .* rms \|Δlogit\|"):
        check_tflite(tiny_model(seed=1), path, "int8", calibration[:1])


def test_without_litert_torch_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(AtrousError, match=r"pip install 'atrous\[tflite\]'"):
        export_tflite(tiny_model(), tmp_path / "model.tflite", SIZE)
    assert list(tmp_path.iterdir()) == []


def test_int8_without_calibration_is_refused_before_loading(tmp_path, capsys):
    output = tmp_path / "model.tflite"
    argv = ["export", "--model", str(tmp_path / "absent"), "--format", "tflite"]
    assert main([*argv, "--precision", "int8", "--output", str(output)]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert not output.exists()


def test_a_precision_tflite_lacks_is_refused(tmp_path):
    with pytest.raises(AtrousError, match="fp32 or int8"):
        export_tflite(tiny_model(), tmp_path / "model.tflite", SIZE, "fp16")
