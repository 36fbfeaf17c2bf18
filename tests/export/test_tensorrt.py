"""TensorRT-ready ONNX (atrous.export.tensorrt) and fixed-size graphs with folded resize sizes,
checked in ONNX Runtime on a tiny MobileNetV2 (×0.25, 3 classes, logits of a trained scale).

Building a TensorRT engine needs a GPU (``benchmarks/gpu_check.py``); here the graph is held to
what TensorRT's parser takes: its operators, its Resize modes, int8 zero points that are 0."""

import numpy as np
import onnx
import pytest
import torch
from helpers import randomize_bn
from onnx import numpy_helper

from atrous.cli import main
from atrous.export.graph import op_types, resize_scale
from atrous.export.onnx import ExportCheckError, OnnxNetwork, export_onnx
from atrous.export.tensorrt import (
    calibration_batches,
    check_int8,
    export_tensorrt,
    tensorrt_problems,
)
from atrous.models.zoo import create_model

SIZE = (65, 97)


@pytest.fixture(scope="module")
def model():
    """Randomised BN and a classifier ×50, so logits reach a trained model's scale (≫ 1)."""
    torch.manual_seed(0)
    net = create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25).eval()
    randomize_bn(net)
    with torch.no_grad():
        net.classifier.weight.mul_(50)
    return net


@pytest.fixture(scope="module")
def calibration():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8) for _ in range(3)]


@pytest.fixture(scope="module")
def int8_export(model, calibration, tmp_path_factory):
    path = tmp_path_factory.mktemp("trt") / "model.trt.onnx"
    report = export_tensorrt(model, path, size=SIZE, precision="int8", calibration=calibration)
    return path, report


@pytest.mark.parametrize("source", [1, 7, 9, 13, 25, 33, 65, 97, 129])
def test_resize_scales_give_the_exact_output_size(source):
    for target in range(source, 8 * source + 2):
        scale = resize_scale(source, target)
        assert int(np.floor(np.float32(source) * scale)) == target
        assert int(np.floor(source * np.float64(scale))) == target


def _unfolded_fixed_graph(model, path):
    """The graph at SIZE with a free batch as the exporter writes it, before the fold."""
    program = torch.onnx.export(
        model,
        (torch.randn(2, 3, *SIZE),),
        dynamo=True,
        opset_version=18,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
        verbose=False,
    )
    onnx.save(program.model_proto, path)
    return path


@pytest.mark.slow
def test_fixed_size_graph_has_no_shape_nodes_and_the_same_outputs(model, tmp_path):
    fixed = export_onnx(model, tmp_path / "fixed.onnx", check=False, size=SIZE).path
    unfolded = _unfolded_fixed_graph(model, tmp_path / "unfolded.onnx")
    ops_fixed, ops_unfolded = op_types(onnx.load(fixed)), op_types(onnx.load(unfolded))
    assert ops_unfolded["Shape"] == 3 and ops_fixed["Shape"] == 0
    assert ops_fixed["Resize"] == ops_unfolded["Resize"] == 3
    assert ops_fixed["Concat"] == ops_unfolded["Concat"] - 3
    assert ops_fixed["Conv"] == ops_unfolded["Conv"]
    batch = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        eager = model(batch)
    folded, before = OnnxNetwork(fixed)(batch), OnnxNetwork(unfolded)(batch)
    scale = eager.abs().max().item()
    assert scale > 2
    assert (folded - before).abs().max().item() <= 1e-5 * scale
    assert (folded - eager).abs().max().item() <= 1e-4 * scale


@pytest.mark.slow
def test_int8_zero_points_are_int8_zeros_and_weights_per_channel(int8_export):
    path, report = int8_export
    proto = onnx.load(path)
    tensors = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 100
    for node in qdq:
        zero_point = tensors[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    weights = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in tensors]
    assert weights and all(tensors[n.input[0]].dtype == np.int8 for n in weights)
    assert all(tensors[n.input[1]].size == tensors[n.input[0]].shape[0] for n in weights)
    assert tensorrt_problems(proto, fixed=True) == []
    assert "atrous" in {entry.key for entry in proto.metadata_props}
    assert report.precision == "int8" and report.int8_agreement.relative_diff < 0.15
    assert report.int8_agreement.scale > 2


@pytest.mark.slow
def test_a_broken_int8_graph_fails_the_floor(model, calibration, int8_export, tmp_path):
    """The classifier's int8 weights negated: every logit's sign flips (within the output's
    calibrated range, so its quantisation cannot hide the change)."""
    path, _ = int8_export
    proto = onnx.load(path)
    weight = next(
        t
        for t in proto.graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4 and t.dims[0] == 3
    )
    flipped = -numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array(flipped, weight.name))
    onnx.save(proto, tmp_path / "broken.onnx")
    batches = calibration_batches(model, calibration, SIZE)
    check_int8(model, path, batches)  # the good graph passes
    with pytest.raises(ExportCheckError, match="int8 graph"):
        check_int8(model, tmp_path / "broken.onnx", batches)


@pytest.mark.slow
def test_what_tensorrt_refuses_is_named(int8_export, tmp_path):
    proto = onnx.load(int8_export[0])
    zero = next(t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8
                and t.dims == [])  # fmt: skip
    zero.CopyFrom(numpy_helper.from_array(np.uint8(128), zero.name))
    resize = next(n for n in proto.graph.node if n.op_type == "Resize")
    for attribute in resize.attribute:
        if attribute.name == "mode":
            attribute.s = b"cubic"
    proto.graph.node.append(onnx.helper.make_node("NonZero", ["images"], ["nz"]))
    problems = " | ".join(tensorrt_problems(proto))
    assert "zero point uint8" in problems and "mode='cubic'" in problems
    assert "NonZero node(s): TensorRT has no such operator" in problems


@pytest.mark.slow
def test_export_command_writes_a_fixed_size_tensorrt_graph(tiny_run, tmp_path, capsys):
    output = tmp_path / "model.trt.onnx"
    args = ["export", "--model", str(tiny_run / "best.pt"), "--output", str(output)]
    assert main([*args, "--format", "tensorrt", "--size", "65", "65"]) == 0
    assert "ONNX Runtime vs eager at 65×65" in capsys.readouterr().out
    proto = onnx.load(output)
    assert op_types(proto)["Shape"] == 0 and tensorrt_problems(proto, fixed=True) == []


def test_int8_tensorrt_export_needs_calibration_images(tiny_run, tmp_path, capsys):
    output = tmp_path / "model.trt.onnx"
    args = ["export", "--model", str(tiny_run / "best.pt"), "--output", str(output)]
    assert main([*args, "--format", "tensorrt", "--precision", "int8"]) == 2
    assert "--calibration" in capsys.readouterr().err and not output.exists()
    int8 = [*args, "--format", "tensorrt", "--precision", "int8"]
    assert main([*int8, "--calibration", str(tmp_path / "none")]) == 1
    assert f"--calibration {tmp_path / 'none'}: no image files" in capsys.readouterr().err
    assert main([*args, "--format", "tensorrt", "--calibration", str(tmp_path)]) == 2
    assert "only an int8 export" in capsys.readouterr().err
