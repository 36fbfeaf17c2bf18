"""``--runtime``: the fp32 fast path on a runtime by name, or the fastest installed one that
passes the fp32 check (atrous.inference.runtimes), on a tiny MobileNetV2 (×0.25, 3 classes).

Which runtime wins is the machine's business; these tests check that only a correct one can
win, that the choice and the timings are reported and cached, and that a runtime that cannot
run here is one clear error."""

import importlib.util
import json

import pytest
import torch
from helpers import randomize_bn
from PIL import Image

from atrous.cli import main
from atrous.errors import AtrousError, UsageError
from atrous.inference.fast import optimize_for_inference
from atrous.inference.runtimes import RUNTIMES, Runtime, require_runtime
from atrous.models.zoo import create_model

SIZE = (65, 81)


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25).eval()
    randomize_bn(net)
    return net


@pytest.fixture
def only_torch_and(monkeypatch):
    """The registry with torch and the given runtimes only (no ONNX export: fast tests)."""

    def install(**extra):
        for name in [n for n in RUNTIMES if n != "torch"]:
            monkeypatch.delitem(RUNTIMES, name)
        for name, build in extra.items():
            monkeypatch.setitem(RUNTIMES, name, Runtime(name, "torch", build))

    return install


def test_auto_never_chooses_a_runtime_that_fails_the_check(model, only_torch_and):
    """A runtime that answers instantly with wrong logits is refused; the choice is cached per
    model and size (the second network is built from the cached choice alone)."""
    builds = []

    def wrong(folded, size, folder):
        builds.append(size)
        return lambda images: torch.zeros(images.shape[0], 3, *images.shape[-2:])

    only_torch_and(wrong=wrong)
    network = optimize_for_inference(model, SIZE, backend="fastest")
    report = network.report
    assert report.backend == "torch" and report.choice.startswith("runtime auto: torch at 65×81")
    assert "torch" in report.choice and "wrong refused" in report.choice
    batch = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        assert (network(batch) - model(batch)).abs().max() <= 1e-4 * model(batch).abs().max()
    again = optimize_for_inference(model, SIZE, backend="fastest")
    assert again.report.choice == report.choice and builds == [SIZE]
    optimize_for_inference(model, (49, 49), backend="fastest")  # another size: measured again
    assert builds == [SIZE, (49, 49)]


def test_auto_picks_the_fastest_correct_runtime(model, only_torch_and):
    """A correct runtime that is slower than torch loses; timings are in the line."""

    def slow(folded, size, folder):
        def run(images):
            import time

            time.sleep(0.05)
            with torch.no_grad():
                return folded(images.contiguous())

        return run

    only_torch_and(slow=slow)
    report = optimize_for_inference(model, SIZE, backend="fastest").report
    assert report.backend == "torch"
    assert "slow " in report.choice and " ms" in report.choice and "refused" not in report.choice


def test_a_runtime_by_name_is_checked_like_any(model, only_torch_and):
    only_torch_and(wrong=lambda folded, size, folder: lambda x: torch.zeros(1, 3, *SIZE))
    with pytest.raises(AtrousError, match="the wrong fp32 network differs"):
        optimize_for_inference(model, SIZE, backend="wrong")


def test_an_unavailable_runtime_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(RUNTIMES, "fake", Runtime("fake", "atrous_no_such_runtime", None))
    with pytest.raises(AtrousError, match="pip install atrous_no_such_runtime"):
        require_runtime("fake")
    with pytest.raises(UsageError, match="not available in this version"):
        require_runtime("nonesuch")


@pytest.mark.skipif("openvino" in RUNTIMES and importlib.util.find_spec("openvino") is not None,
                    reason="openvino runs here")  # fmt: skip
def test_predict_runtime_openvino_that_cannot_run_is_one_clear_error(tiny_run, tmp_path, capsys):
    """Not installed: the extra to install (exit 1); installed but not in this version: the
    runtimes it offers (exit 2). No traceback either way."""
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (90, 120, 30)).save(image)
    args = ["predict", str(image), "--model", str(tiny_run / "best.pt"), "--progress", "false"]
    status = main([*args, "--output_dir", str(tmp_path / "out"), "--runtime", "openvino"])
    err = capsys.readouterr().err
    assert "--runtime openvino" in err and "Traceback" not in err
    if importlib.util.find_spec("openvino") is None:
        assert status == 1 and "pip install 'atrous[openvino]'" in err
    else:
        assert status == 2 and "not available in this version" in err


@pytest.mark.slow
def test_predict_runtime_auto_prints_its_choice(tiny_run, tmp_path, capsys):
    """With the real registry: torch and ONNX Runtime both measured, both pass the check."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 48), (40 * i, 100, 200)).save(folder / f"{i}.png")
    args = ["predict", str(folder), "--model", str(tiny_run / "best.pt"), "--progress", "false"]
    assert main([*args, "--output_dir", str(tmp_path / "out"), "--runtime", "auto"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("runtime auto"))
    assert "torch" in line and "onnxruntime" in line and "refused" not in line
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 2


@pytest.mark.slow
def test_eval_runtime_by_name_runs_fast_and_records_it(tiny_run, tmp_path):
    output = tmp_path / "eval.json"
    args = ["eval", "--model", str(tiny_run / "best.pt"), "--progress", "false"]
    assert main([*args, "--runtime", "torch", "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert record["runtime"] == "torch" and record["fast"] is True


@pytest.mark.slow
@pytest.mark.parametrize(
    ("runtime", "package"), [("openvino", "openvino"), ("tflite", "litert_torch")]
)
def test_openvino_and_litert_run_the_fast_path(model, runtime, package):
    """OpenVINO (its IR compiled at f32) and LiteRT (a .tflite file at the example's size,
    PyTorch for other sizes) pass the fp32 check and give the eager logits at the example's
    size and another."""
    pytest.importorskip(package)
    network = optimize_for_inference(model, SIZE, backend=runtime)
    assert network.report.backend == runtime
    for size in (SIZE, (49, 57)):
        batch = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = model(batch)
        assert (network(batch) - expected).abs().max() <= 1e-4 * expected.abs().max()
