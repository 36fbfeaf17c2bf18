"""``--runtime`` and the default of ``--fast``: the fast path on a runtime by name, or the
fastest installed one that passes the check (atrous.inference.runtimes), remembered on this
machine (atrous.inference.choices), on a tiny MobileNetV2 (×0.25, 3 classes).

Which runtime wins is the machine's business; these tests check that only a correct one can
win, that the choice and the timings are reported and remembered (and measured again when what
decides them changes), and that a runtime that cannot run here is one clear error. Each test
has its own ATROUS_CACHE (conftest)."""

import importlib.util
import json
import time
from collections import Counter

import pytest
import torch
from helpers import randomize_bn
from PIL import Image

from atrous.cli import main
from atrous.errors import AtrousError, UsageError
from atrous.export.tflite import relative_rms
from atrous.inference import runtimes
from atrous.inference.choices import choices_file
from atrous.inference.fast import optimize_for_inference
from atrous.inference.runtimes import INT8_FLOOR, MAX_ROUNDS, RUNTIMES, Runtime, require_runtime
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

    def install(int8=None, **extra):
        for name in [n for n in RUNTIMES if n != "torch"]:
            monkeypatch.delitem(RUNTIMES, name)
        for name, build in extra.items():
            monkeypatch.setitem(RUNTIMES, name, Runtime(name, "torch", build))
        for name, build in (int8 or {}).items():
            monkeypatch.setitem(RUNTIMES, name, Runtime(name, "torch", None, build))

    return install


def test_auto_never_chooses_a_runtime_that_fails_the_check(model, only_torch_and):
    """A runtime that answers instantly with wrong logits is refused; the choice is remembered
    per model and size (the second network is built from the remembered choice alone)."""
    builds = []

    def wrong(folded, size, folder):
        builds.append(size)
        return lambda images: torch.zeros(images.shape[0], 3, *images.shape[-2:])

    only_torch_and(wrong=wrong)
    network = optimize_for_inference(model, SIZE, backend="auto")
    report = network.report
    assert report.backend == "torch"
    assert report.choice.startswith("runtime auto: torch for fp32 at 65×81")
    assert "torch" in report.choice and "wrong refused" in report.choice
    batch = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        assert (network(batch) - model(batch)).abs().max() <= 1e-4 * model(batch).abs().max()
    again = optimize_for_inference(model, SIZE)
    assert again.report.choice.startswith(report.choice) and builds == [SIZE]
    assert again.report.choice.endswith(f"measured earlier ({choices_file()})")
    optimize_for_inference(model, (49, 49), backend="auto")  # another size: measured again
    assert builds == [SIZE, (49, 49)]


def test_auto_picks_the_fastest_correct_runtime(model, only_torch_and):
    """A correct runtime that is slower than torch loses; timings are in the line."""

    def slow(folded, size, folder):
        def run(images):
            time.sleep(0.05)
            with torch.no_grad():
                return folded(images.contiguous())

        return run

    only_torch_and(slow=slow)
    report = optimize_for_inference(model, SIZE, backend="auto").report
    assert report.backend == "torch"
    assert "slow " in report.choice and " ms" in report.choice and "refused" not in report.choice


def test_a_near_tie_is_timed_longer_than_a_clear_gap(monkeypatch):
    """On a clock that advances by each network's own duration: runtimes within 5% of the
    fastest take turns up to MAX_ROUNDS calls, a clearly slower one stops after ROUNDS."""
    clock, calls = [0.0], Counter()
    monkeypatch.setattr(runtimes.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(runtimes, "PAUSE_S", 0.0)

    def network(name, seconds):
        def run(batch):
            calls[name] += 1
            clock[0] += seconds

        return run

    networks = {"a": network("a", 0.100), "b": network("b", 0.103), "slow": network("s", 0.2)}
    milliseconds = runtimes._interleaved_ms(networks, torch.zeros(1), runtimes.ROUNDS)
    assert calls == {"a": 1 + MAX_ROUNDS, "b": 1 + MAX_ROUNDS, "s": 1 + runtimes.ROUNDS}
    assert milliseconds == pytest.approx({"a": 100, "b": 103, "slow": 200})
    calls.clear()
    runtimes._interleaved_ms({"a": network("a", 0.1), "b": network("b", 0.2)}, None, 3)
    assert calls == {"a": 4, "b": 4}


def test_a_remembered_choice_is_measured_again_when_what_decides_it_changes(model, only_torch_and):
    """Another runtime installed, or an unreadable choices file: measured again; a choice
    whose runtime no longer passes the check: measured again too."""
    builds = []

    def counted(folded, size, folder):
        builds.append("counted")
        return lambda images: folded(images.contiguous())

    only_torch_and(counted=counted)
    optimize_for_inference(model, SIZE)
    assert builds == ["counted"] and json.loads(choices_file().read_text())
    only_torch_and(counted=counted, other=lambda folded, size, folder: folded)
    assert "measured earlier" not in optimize_for_inference(model, SIZE).report.choice
    assert builds == ["counted", "counted"]
    choices_file().write_text("{not json")
    assert "measured earlier" not in optimize_for_inference(model, SIZE).report.choice
    assert len(builds) == 3 and json.loads(choices_file().read_text())


def test_int8_auto_refuses_a_runtime_far_from_the_best_one(model, only_torch_and):
    """int8 candidates are timed only when they stay near the best one's distance from the
    eager logits: a faster runtime with noisy logits loses to a slower, close one."""

    def close(folded, size, folder, calibration):
        assert calibration and calibration[0].shape == (1, 3, *SIZE)

        def run(images):
            time.sleep(0.03)
            return folded(images.contiguous()) * 1.01

        return run

    def noisy(folded, size, folder, calibration):
        def run(images):
            logits = folded(images.contiguous())
            return logits + logits.abs().max() * torch.randn_like(logits)

        return run

    only_torch_and(int8={"close": close, "noisy": noisy})
    calibration = [torch.randn(1, 3, *SIZE) for _ in range(2)]
    report = optimize_for_inference(model, SIZE, precision="int8", calibration=calibration).report
    assert report.backend == "close" and report.precision == "int8"
    expected = "runtime auto: close for int8 at 65×81 (the only one that passed; noisy refused"
    assert report.choice.startswith(expected)
    assert "noisy refused (int8 RMS difference" in report.choice
    with pytest.raises(UsageError, match="--runtime torch runs fp32 only; int8 runs on: auto"):
        require_runtime("torch", "int8")


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
def test_predict_runtime_auto_prints_its_choice(tiny_run, tmp_path, capsys, only_torch_and):
    """With the real registry: torch and ONNX Runtime both measured, both pass the check. The
    next run's default (``--fast``), here with torch and a second PyTorch runtime installed (no
    export: quick), measures again (other runtimes) and prints its choice too."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 48), (40 * i, 100, 200)).save(folder / f"{i}.png")
    args = ["predict", str(folder), "--model", str(tiny_run / "best.pt"), "--progress", "false"]
    assert main([*args, "--output_dir", str(tmp_path / "out"), "--runtime", "auto"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("runtime auto"))
    assert "torch" in line and "onnxruntime" in line and "refused" not in line
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 2
    only_torch_and(other=lambda folded, size, folder: folded)
    assert main([*args, "--output_dir", str(tmp_path / "again"), "--fast", "true"]) == 0
    again = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("runtime auto"))
    assert "torch" in again and "other" in again and "measured earlier" not in again
    assert len(json.loads(choices_file().read_text())) == 2


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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("runtime", "package"),
    [("openvino", "nncf"), ("tflite", "litert_torch")],
)
def test_each_int8_runtime_keeps_the_predictions(model, runtime, package):
    """OpenVINO's (NNCF) and LiteRT's (PT2E) int8 networks, calibrated on a few images, stay
    near the eager logits on images like them at the example's size (ONNX Runtime's QDQ:
    tests/inference/test_fast.py)."""
    pytest.importorskip(package)
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(1, 3, *SIZE, generator=generator) for _ in range(4)]
    network = optimize_for_inference(
        model, images[0], precision="int8", calibration=images[:3], backend=runtime
    )
    assert network.report.backend == runtime and network.report.precision == "int8"
    with torch.no_grad():
        expected = model(images[3])
    logits = network(images[3])
    assert logits.shape == expected.shape
    assert relative_rms(logits, expected) <= INT8_FLOOR
