import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from atrous.cli import main
from atrous.convert.torch_models import convert
from atrous.data.synthetic import render_scene
from atrous.export.onnx import (
    METADATA_KEY,
    RELATIVE_TOLERANCE,
    ExportCheckError,
    export_onnx,
    export_program,
)
from atrous.hub.load import load, load_segmenter
from atrous.inference.fast import optimize_for_inference
from atrous.models.zoo import create_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    segmenter = load_segmenter(tiny_run / "best.pt")
    report = export_onnx(segmenter.network, path, segmenter.class_names, segmenter.palette)
    return segmenter, path, report


def test_onnx_matches_eager_at_two_sizes(exported):
    segmenter, path, report = exported
    assert len(report.agreement) == 2
    assert all(0 <= a.max_abs_diff <= 1e-4 for a in report.agreement.values())
    assert all(a.argmax_agreement > 0.999 for a in report.agreement.values())
    graph_input = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in graph_input] == [True, False, True, True]
    onnx_segmenter = load_segmenter(path)
    assert list(onnx_segmenter.class_names) == list(segmenter.class_names)
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    torch.testing.assert_close(
        onnx_segmenter.probabilities(image), segmenter.probabilities(image), atol=1e-5, rtol=0
    )


def test_onnx_metadata_describes_the_model(exported):
    _, path, _ = exported
    entries = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert METADATA_KEY in entries
    assert '"triangle"' in entries[METADATA_KEY]


@pytest.mark.slow
def test_documented_onnxruntime_snippet_runs(exported, tmp_path):
    """docs/deployment.md's snippet, run as written, gives the eager model's labels."""
    segmenter, path, _ = exported
    text = (ROOT / "docs" / "deployment.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "demo.onnx").symlink_to(path)
    image = render_scene(3, 0, 72)[0]
    Image.fromarray(image).save(tmp_path / "photo.jpg", quality=100)
    subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, check=True, timeout=120)
    mask = Image.open(tmp_path / "photo_mask.png")
    reread = np.asarray(Image.open(tmp_path / "photo.jpg").convert("RGB"))
    assert mask.mode == "P" and mask.size == (72, 72)
    np.testing.assert_array_equal(np.asarray(mask), segmenter(reread))


@pytest.mark.slow
def test_torch_export_program_runs_at_other_sizes(exported, tmp_path):
    segmenter, _, _ = exported
    path = export_program(segmenter.network, tmp_path / "tiny.pt2")
    program = torch.export.load(path).module()
    images = torch.randn(2, 3, 75, 101)
    with torch.no_grad():
        torch.testing.assert_close(program(images), segmenter.network(images), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_export_command_reports_the_check(tiny_run, tmp_path, capsys):
    output = tmp_path / "cli.onnx"
    status = main(["export", "--model", str(tiny_run / "best.pt"), "--output", str(output)])
    printed = capsys.readouterr().out
    assert status == 0 and output.is_file()
    assert printed.count("ONNX Runtime vs eager") == 2
    assert "of the logits' scale" in printed and "argmax agreement" in printed


@pytest.fixture(scope="module")
def untrained_resnet101(tmp_path_factory):
    """smp's DeepLabV3Plus-ResNet-101, untrained, converted: logits near ±200."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    folder = tmp_path_factory.mktemp("r101")
    torch.manual_seed(0)
    smp.DeepLabV3Plus("resnet101", encoder_weights=None, classes=21).save_pretrained(folder / "smp")
    convert(str(folder / "smp"), "smp", str(folder / "atrous"))
    return folder / "atrous"


@pytest.mark.slow
def test_large_logits_pass_the_export_and_fast_path_checks(untrained_resnet101, tmp_path, capsys):
    """fp32 rounding of ±200 logits exceeds 1e-4 absolute (2.7e-4 measured): judged on the
    logits' scale, both the export and the fast path accept the network."""
    output = tmp_path / "r101.onnx"
    assert main(["export", "--model", str(untrained_resnet101), "--output", str(output)]) == 0
    assert capsys.readouterr().out.count("ONNX Runtime vs eager") == 2
    network = optimize_for_inference(load(untrained_resnet101), backend="onnxruntime")
    agreement = network.report.agreement
    assert network.report.backend == "onnxruntime" and agreement.scale > 100
    assert network.report.tolerance >= RELATIVE_TOLERANCE
    assert agreement.relative_diff <= network.report.tolerance
    assert agreement.argmax_agreement > 0.999


class WrongWhenExported(nn.Module):
    """A model whose exported graph scales its logits by 1.001: off by 1e-3 of their scale."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        return logits * 1.001 if torch.compiler.is_exporting() else logits


@pytest.mark.slow
def test_a_wrong_graph_still_fails_the_check(exported, tmp_path):
    segmenter, _, _ = exported
    with pytest.raises(
        ExportCheckError, match=r"argmax agreement .*tolerance [0-9.e-]+ of the scale"
    ):
        export_onnx(WrongWhenExported(segmenter.network), tmp_path / "wrong.onnx")


@pytest.mark.slow
def test_exports_leave_the_aux_head_out_and_take_the_models_bands_and_stride(tmp_path):
    """Neither the ONNX graph, its metadata nor the torch.export program holds the auxiliary head
    (torch.export would otherwise keep its unused parameters); the model keeps it. A 4-band
    model exports and checks with 4-band images; one switched to OS8 exports at OS8 and its
    metadata says so."""
    torch.manual_seed(0)
    model = create_model(
        "deeplabv3plus_mobilenetv2",
        num_classes=3,
        width_multiplier=0.25,
        aux_head=True,
        in_channels=4,
    )
    model.set_output_stride(8)
    report = export_onnx(model, tmp_path / "aux.onnx")
    assert all(a.relative_diff <= report.tolerance[k] for k, a in report.agreement.items())
    proto = onnx.load(tmp_path / "aux.onnx")
    assert proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 4
    names = [tensor.name for tensor in proto.graph.initializer]
    assert "classifier.weight" in names and not any("aux_head" in n for n in names)
    metadata = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    assert metadata["config"]["aux_head"] is False and metadata["config"]["output_stride"] == 8
    program = torch.export.load(export_program(model, tmp_path / "aux.pt2"))
    expected = {k for k in model.state_dict() if not k.startswith("aux_head.")}
    assert set(program.state_dict) | set(program.constants) >= expected
    assert not any(k.startswith("aux_head.") for k in [*program.state_dict, *program.constants])
    assert model.aux_head is not None and not model.training
