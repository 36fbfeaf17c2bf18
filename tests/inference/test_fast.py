"""The fast inference paths (atrous.inference.fast, --fast) and activation checkpointing, on
small inputs.

Correctness only: fp32 paths agree with the eager model within 1e-4 (max |Δlogit|), bf16 and int8
agree in argmax on most pixels; timings live in benchmarks/, never here.
"""

import json

import pytest
import torch
import yaml
from helpers import tiny_config
from torch import nn

import atrous
from atrous.cli import main
from atrous.data import build_dataset
from atrous.export.onnx import OnnxNetwork
from atrous.hub.load import load
from atrous.inference.fast import (
    FastCheckError,
    fold_batchnorm,
    normalise_images,
    optimize_for_inference,
)
from atrous.training.config import TrainConfig
from atrous.training.loop import train


@pytest.fixture(scope="module")
def trained(tiny_run):
    """The 12-iteration tiny run's model (MobileNetV2 ×0.25, 6 classes) and its validation
    images, normalised."""
    model = load(tiny_run / "model")
    config = TrainConfig.from_dict(yaml.safe_load((tiny_run / "config.yaml").read_text()))
    dataset = build_dataset(config.data, "val")
    images = [dataset.load(i)[0] for i in range(len(dataset))]
    return model, images


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory):
    """The tiny run trained for 100 iterations instead of 12: on the held-out validation images
    it predicts five classes (the 12-iteration model predicts the background everywhere, which
    any path that keeps one class would match). Its model and validation images, as
    :func:`trained`."""
    output_dir = tmp_path_factory.mktemp("multiclass")
    train(tiny_config(output_dir, iterations=100, val_every=100, log_every=50))
    config = TrainConfig.from_dict(yaml.safe_load((output_dir / "config.yaml").read_text()))
    dataset = build_dataset(config.data, "val")
    return load(output_dir / "model"), [dataset.load(i)[0] for i in range(len(dataset))]


def _logits(model, batch):
    with torch.no_grad():
        return model(batch)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["deeplabv3plus_resnet50_beta", "deeplabv3plus_xception65", "deeplabv3_mobilenetv2"]
)
def test_fold_batchnorm_removes_every_bn_and_keeps_the_logits(name):
    torch.manual_seed(0)
    kwargs = {"width_multiplier": 0.5} if "mobilenet" in name else {}
    model = atrous.create_model(name, num_classes=3, **kwargs).eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        # Random statistics and affine terms: a fresh BN is the identity, which any folding keeps.
        bn.running_mean.normal_(0, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.normal_(bn.bias, 0, 0.2)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is kept
    batch = torch.randn(1, 3, 65, 81)
    expected = _logits(model, batch)
    assert (_logits(folded, batch) - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_fold_batchnorm_leaves_a_bn_whose_conv_output_is_used_elsewhere():
    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # folding would change the second use of y

    model = Branching().eval()
    model.bn.running_var.fill_(4.0)
    folded = fold_batchnorm(model, torch.randn(1, 3, 8, 8))
    assert isinstance(folded.bn, nn.BatchNorm2d)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_fp32_fast_path_matches_eager_at_two_sizes(trained, backend):
    model, _ = trained
    example = torch.randn(1, 3, 65, 97)
    network = optimize_for_inference(model, example, backend=backend)
    assert network.report.backend == backend and network.report.max_abs_diff <= 1e-4
    for size in ((65, 97), (129, 113)):
        batch = torch.randn(2, 3, *size)
        assert (network(batch) - _logits(model, batch)).abs().max().item() <= 1e-4
    assert model.training is False and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.slow
def test_onnxruntime_fp32_adds_a_graph_fixed_to_the_example_size(trained, tmp_path):
    model, _ = trained
    network = optimize_for_inference(model, (65, 97), backend="onnxruntime", workdir=tmp_path)
    files = tmp_path / "onnxruntime"
    assert sorted(p.name for p in files.glob("*.onnx")) == ["model.65x97.onnx", "model.onnx"]
    fixed = OnnxNetwork(files / "model.65x97.onnx")
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        fixed(torch.randn(1, 3, 65, 98))  # that graph takes its own size only
    dispatch = network._run
    used = []
    for name in ("fixed", "general"):
        graph = getattr(dispatch, name)
        setattr(dispatch, name, lambda x, graph=graph, name=name: used.append(name) or graph(x))
    for size in ((65, 97), (65, 98)):  # the fixed graph, then the any-size one
        batch = torch.randn(3, 3, *size)
        assert (network(batch) - _logits(model, batch)).abs().max().item() <= 1e-4
    assert used == ["fixed", "general"]
    optimize_for_inference(model, backend="onnxruntime", workdir=tmp_path / "no_example")
    files = tmp_path / "no_example" / "onnxruntime"
    assert [p.name for p in files.glob("*.onnx")] == ["model.onnx"]


@pytest.mark.slow
def test_compiled_fast_path_matches_eager():
    torch.manual_seed(0)
    model = atrous.create_model("deeplabv3_mobilenetv2", num_classes=3, width_multiplier=0.25)
    example = torch.randn(1, 3, 33, 41)
    network = optimize_for_inference(model.eval(), example, backend="compile")
    assert network.report.backend == "compile" and network.report.max_abs_diff <= 1e-4
    assert (network(example) - _logits(model, example)).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_fp32_check_refuses_a_network_outside_the_tolerance(trained):
    with pytest.raises(FastCheckError, match="tolerance"):
        optimize_for_inference(trained[0], (49, 49), backend="torch", tolerance=0.0)


def test_bf16_fast_path_is_close_and_agrees_in_argmax(trained):
    model, images = trained
    network = optimize_for_inference(model, (65, 65), precision="bf16")
    assert network.report.backend == "torch"
    batch = torch.cat(normalise_images(images[:4], model.config.mean, model.config.std))
    expected, logits = _logits(model, batch), network(batch)
    assert logits.dtype == torch.float32 and logits.shape == expected.shape
    # bf16 keeps 8 bits of mantissa: differences stay within 5% of the logit range.
    assert (logits - expected).abs().max() <= 0.05 * expected.abs().max()
    assert (logits.argmax(1) == expected.argmax(1)).float().mean() >= 0.98


@pytest.mark.slow
def test_int8_fast_path_calibrates_on_images_and_keeps_the_predictions(multiclass, tmp_path):
    model, images = multiclass
    network = optimize_for_inference(
        model,
        (48, 48),
        precision="int8",
        calibration=images[:4],
        backend="onnxruntime",
        workdir=tmp_path,
    )
    assert network.report.backend == "onnxruntime"
    import onnx

    graph = tmp_path / "onnxruntime" / "model.int8.onnx"
    ops = {node.op_type for node in onnx.load(graph).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # Held-out images (not used for calibration): int8 predicts the same class on most pixels,
    # and on most pixels of each class that eager predicts on at least 2% of them (at least 3
    # such classes, so keeping the background alone cannot pass).
    batch = torch.cat(normalise_images(images[4:], model.config.mean, model.config.std))
    expected = _logits(model, batch).argmax(1)
    agree = network(batch).argmax(1) == expected
    frequent = [c for c in expected.unique() if (expected == c).float().mean() >= 0.02]
    assert len(frequent) >= 3, expected.unique(return_counts=True)
    per_class = [agree[expected == c].float().mean().item() for c in frequent]
    assert agree.float().mean() >= 0.9 and sum(per_class) / len(per_class) >= 0.7, per_class


def test_int8_needs_calibration_and_fp16_needs_cuda(trained):
    with pytest.raises(ValueError, match="calibration"):
        optimize_for_inference(trained[0], precision="int8")
    with pytest.raises(ValueError, match="CUDA"):
        optimize_for_inference(trained[0], precision="fp16")


@pytest.mark.slow
def test_predict_and_eval_run_fast(tiny_run, trained, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(trained[1][:3]):
        Image.fromarray(image).save(folder / f"{i}.png")
    model = str(tiny_run / "best.pt")
    args = ["--model", model, "--output_dir", str(tmp_path / "out"), "--progress", "false"]
    assert main(["predict", str(folder), *args, "--fast", "true", "--precision", "bf16"]) == 0
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 3
    assert main(["predict", str(folder), *args, "--precision", "int8"]) == 2
    assert "needs --fast" in capsys.readouterr().err

    scores = {}
    for fast in ("false", "true"):
        output = tmp_path / f"eval_{fast}.json"
        command = ["eval", "--model", model, "--output", str(output), "--progress", "false"]
        assert main([*command, "--fast", fast]) == 0
        scores[fast] = json.loads(output.read_text())["scores"]["mean_iou"]
    assert scores["true"] == pytest.approx(scores["false"], abs=1e-6)


UNITS = ("Bottleneck", "XceptionUnit", "InvertedResidual")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("deeplabv3plus_resnet50_beta", marks=pytest.mark.slow),
        pytest.param("deeplabv3plus_xception65", marks=pytest.mark.slow),
        "deeplabv3plus_mobilenetv2",
    ],
)
def test_activation_checkpointing_gives_the_same_step(name):
    torch.manual_seed(0)
    kwargs = {"width_multiplier": 0.5} if "mobilenet" in name else {}
    plain = atrous.create_model(name, num_classes=3, output_stride=8, **kwargs).train()
    checkpointed = atrous.create_model(name, num_classes=3, output_stride=8, **kwargs).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_activation_checkpointing(True)
    batch, target = torch.randn(2, 3, 49, 49), torch.randint(0, 3, (2, 49, 49))
    calls = []
    for model in (plain, checkpointed):
        last_unit = [m for m in model.backbone.modules() if m.__class__.__name__ in UNITS][-1]
        count = [0]
        last_unit.register_forward_pre_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        torch.manual_seed(1)  # the same dropout mask in ASPP
        nn.functional.cross_entropy(model(batch), target).backward()
        calls.append(count[0])
    assert calls == [1, 2]  # the checkpointed unit ran again during backward
    for (key, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), key
    for (key, a), b in zip(plain.named_buffers(), checkpointed.buffers(), strict=True):
        assert torch.equal(a, b), key  # BN statistics updated once, not again on recompute
