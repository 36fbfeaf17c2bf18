"""The export check holds a graph to what fp32 rounding does on its own model: a deep, untrained
model with large logits passes, a graph with one perturbed weight fails and is not left where a
good export would be; an opset the exporter cannot write is refused, never replaced."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import atrous.export.onnx as onnx_export
from atrous.cli import main
from atrous.export.onnx import (
    OPSETS,
    RELATIVE_TOLERANCE,
    ExportCheckError,
    UnsupportedOpset,
    check_graph,
    export_onnx,
    rounding_tolerance,
)
from atrous.models.config import ModelConfig
from atrous.models.zoo import build_model, create_model

SIZE = (65, 65)


def large_logit_resnet(backbone: str) -> torch.nn.Module:
    """An untrained DeepLabV3+ of the ResNet layout whose classifier is scaled ×50, so its
    logits reach hundreds (as an untrained R-101's ±200 did)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, num_classes=5)).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    return model


@pytest.fixture(scope="module")
def deep_export(tmp_path_factory):
    model = large_logit_resnet("resnet101")
    path = tmp_path_factory.mktemp("deep") / "r101.onnx"
    return model, export_onnx(model, path, size=SIZE)


@pytest.mark.slow
def test_a_deep_large_logit_model_passes_within_its_own_rounding(deep_export):
    _model, report = deep_export
    (agreement,) = report.agreement.values()
    (tolerance,) = report.tolerance.values()
    assert agreement.scale > 100
    assert agreement.relative_diff <= tolerance
    assert tolerance >= RELATIVE_TOLERANCE
    assert agreement.argmax_agreement > 0.99


@pytest.mark.slow
def test_one_perturbed_weight_fails_the_check(deep_export, tmp_path):
    """The classifier bias of one class moved by 2% of the logits' scale: far above rounding."""
    model, report = deep_export
    (agreement,) = report.agreement.values()
    proto = onnx.load(report.path)
    (bias,) = [t for t in proto.graph.initializer if t.name == "classifier.bias"]
    values = numpy_helper.to_array(bias).copy()
    values[2] += 0.02 * agreement.scale
    bias.CopyFrom(numpy_helper.from_array(values.astype(np.float32), bias.name))
    onnx.save(proto, tmp_path / "perturbed.onnx")
    with pytest.raises(ExportCheckError, match=r"differs from the eager model: max \|Δlogit\|"):
        check_graph(model, tmp_path / "perturbed.onnx", (SIZE, SIZE))


def test_the_tolerance_follows_the_models_fp32_rounding():
    """The tolerance is ten times the eager fp32 distance from float64: a model with larger
    logits and more layers rounds more; the floor holds for a small one."""
    images = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    deep = large_logit_resnet("resnet50")
    with torch.no_grad():
        reference = deep(images)
    exact = onnx_export.float64_logits(deep, images)
    rounding = (reference.double() - exact).abs().max().item() / exact.abs().max().item()
    assert rounding > 0
    expected = max(RELATIVE_TOLERANCE, 10 * rounding)
    assert rounding_tolerance(deep, images, reference) == pytest.approx(expected)
    assert rounding_tolerance(deep, images, exact.float() + 1e-3 * exact.abs().max()) > 1e-2


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25)


@pytest.mark.slow
def test_a_failed_check_keeps_the_graph_as_failed_and_the_previous_export(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the previous, good export")
    proto_of = onnx_export._onnx_proto

    def perturbed(*args, **kwargs):
        proto = proto_of(*args, **kwargs)
        (bias,) = [t for t in proto.graph.initializer if t.name == "classifier.bias"]
        values = numpy_helper.to_array(bias) + np.float32(1.0)
        bias.CopyFrom(numpy_helper.from_array(values, bias.name))
        return proto

    monkeypatch.setattr(onnx_export, "_onnx_proto", perturbed)
    with pytest.raises(ExportCheckError) as failed:
        export_onnx(small_model(), path)
    assert f"{path} was not written, the graph is in {tmp_path / 'model.failed.onnx'}" in str(
        failed.value
    )
    assert path.read_bytes() == b"the previous, good export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.failed.onnx", "model.onnx"]


@pytest.mark.parametrize("opset", [17, 9, OPSETS.stop])
def test_an_opset_the_exporter_cannot_write_is_refused_with_the_range(tmp_path, opset):
    with pytest.raises(UnsupportedOpset, match=f"--opset {opset} is not supported.*18 to 23"):
        export_onnx(small_model(), tmp_path / "model.onnx", opset=opset)
    assert list(tmp_path.iterdir()) == []


def test_export_opset_17_exits_non_zero_and_writes_nothing(tmp_path, capsys):
    small_model().save_pretrained(tmp_path / "model")
    output = tmp_path / "model.onnx"
    status = main(
        ["export", "--model", str(tmp_path / "model"), "--output", str(output), "--opset", "17"]
    )
    assert status != 0
    captured = capsys.readouterr()
    assert "--opset 17" in captured.out + captured.err
    assert not output.exists()


@pytest.mark.slow
def test_an_opset_in_range_is_written_as_asked(tmp_path):
    report = export_onnx(small_model(), tmp_path / "model.onnx", opset=20, check=False)
    versions = {o.domain: o.version for o in onnx.load(report.path).opset_import}
    assert versions[""] == 20
