"""benchmarks/gpu_check.py, run the way the suite can: ``--device cpu --tiny``, so that the GPU
check cannot rot between the runs on a GPU. Every row must be measured (finite figures) or say
why it was skipped; a diverging run or a failing row is reported, never fatal."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import atrous

ROOT = Path(__file__).resolve().parents[2]
TRAINING = [f"{p} {mode}" for mode in ("eager", "compiled") for p in ("fp32", "bf16", "fp16")]
INFERENCE = [
    "atrous eager fp32",
    "atrous optimize_for_inference fp32",
    "atrous optimize_for_inference bf16",
    "atrous optimize_for_inference fp16",
    "atrous optimize_for_inference fp32, backend compile",
    "atrous TensorRT engine fp32",
    "atrous TensorRT engine fp16",
    "atrous TensorRT engine int8",
    "smp eager fp32",
    "smp torch.compile (eager) fp32",
]
#: Rows the CPU cannot run, and a word their recorded reason must contain.
SKIPPED_ON_CPU = {
    "fp16 eager": "CUDA",
    "fp16 compiled": "CUDA",
    "atrous optimize_for_inference fp16": "CUDA",
    "atrous optimize_for_inference fp32, backend compile": "inductor",
    **{f"atrous TensorRT engine {p}": "TensorRT" for p in ("fp32", "fp16", "int8")},
}
FIGURES = {
    "training": ("first_step_s", "ms_per_step", "images_per_s", "peak_memory_mib", "final_loss"),
    "inference": ("build_s", "latency_ms", "images_per_s", "peak_memory_mib", "max_abs_diff"),
}


@pytest.fixture(scope="module")
def gpu_check(tmp_path_factory):
    """The check's JSON and Markdown from one ``--device cpu --tiny`` run."""
    output = tmp_path_factory.mktemp("gpu_check")
    paths = [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    env["OMP_NUM_THREADS"] = "1"  # tiny tensors: a second thread only waits on a shared machine
    command = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny"]
    done = subprocess.run(
        [*command, "--output_dir", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((output / "gpu_check.json").read_text())
    return results, (output / "gpu_check.md").read_text()


@pytest.mark.slow
def test_every_row_is_measured_or_says_why_not(gpu_check):
    results, _ = gpu_check
    assert [row["name"] for row in results["training"]] == TRAINING
    assert [row["name"] for row in results["inference"]] == INFERENCE
    for section, figures in FIGURES.items():
        for row in results[section]:
            if row["name"] in SKIPPED_ON_CPU:
                assert row["status"] == "skipped", row
                assert SKIPPED_ON_CPU[row["name"]] in row["reason"], row
                continue
            assert row["status"] == "ok", row
            values = [row[figure] for figure in figures]
            assert all(math.isfinite(v) and v >= 0 for v in values), row
    compiled = next(r for r in results["training"] if r["name"] == "fp32 compiled")
    assert compiled["compile"] == "eager" and compiled["compile_s"] is not None


@pytest.mark.slow
def test_the_inference_rows_are_checked_against_a_float64_reference(gpu_check):
    rows = {row["name"]: row for row in gpu_check[0]["inference"]}
    for name in ("atrous eager fp32", "smp eager fp32", "atrous optimize_for_inference fp32"):
        row = rows[name]  # fp32's own rounding: not zero (not compared with itself), but small
        assert 0 < row["max_abs_diff"] <= 1e-4 * row["logit_scale"], row
    assert rows["atrous optimize_for_inference bf16"]["argmax_agreement"] > 0.5


@pytest.mark.slow
def test_the_markdown_lists_every_row_with_its_command(gpu_check):
    results, text = gpu_check
    assert "python benchmarks/gpu_check.py --device cpu --tiny --output_dir" in text
    assert results["device_name"] in text and results["torch"] in text
    for row in results["training"]:
        mode = "eager" if row["compile"] is None else f"torch.compile ({row['compile']})"
        assert f"| {row['precision']} | {mode} | {row['status']}" in text, row["name"]
    for row in results["inference"]:
        assert f"| {row['side']} | {row['path']} | {row['status']}" in text, row["name"]
    for reason in {row["reason"] for row in results["training"] + results["inference"]} - {None}:
        assert reason in text


@pytest.fixture
def module(monkeypatch):
    """benchmarks/gpu_check.py imported (it imports the harness and modules beside it)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    return gpu_check


def test_an_inference_row_measures_its_distance_from_the_reference(module):
    torch.manual_seed(0)
    model = atrous.create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25)
    model = module.calibrate_bn(model, 65)
    example = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reference = module.reference_logits(model, example)
    shifted = reference.clone()
    shifted[:, 0] += 0.5  # class 0 half a logit higher at every pixel

    def build():
        return module.harness.eager(model, torch.device("cpu"))

    exact = module.infer_row(build, example, reference, 1, 1)
    off = module.infer_row(build, example, shifted, 1, 1)
    assert exact["max_abs_diff"] < 1e-4 * exact["logit_scale"]
    assert off["max_abs_diff"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.slow
def test_a_diverging_training_run_is_a_failed_row(module):
    model = module.NETWORKS["tiny"].build()[0]
    torch.nn.init.constant_(model.classifier.weight, float("nan"))
    cpu = torch.device("cpu")
    record = module.train_row(model, module.NETWORKS["tiny"], cpu, "fp32", None, 2, 0)
    assert record["status"] == "failed"
    assert record["reason"] == "loss became nan at step 1 of 3"


def test_a_failing_row_is_recorded_and_the_rest_still_run(module):
    def broken() -> dict:
        raise RuntimeError("CUDA out of memory\nTried to allocate 2 GiB")

    jobs = [
        module.Job("training", "compiles", {}, lambda: {"x": 1.0}, compiles=True),
        module.Job("training", "broken", {}, broken),
        module.Job("inference", "fine", {}, lambda: {"x": 2.0}),
        module.Job("inference", "refused", {}, lambda: {}, skip="needs CUDA"),
    ]
    rows = module.run_jobs(jobs, 480.0, torch.device("cpu"), lambda _: None)
    assert [(r["name"], r["status"]) for r in rows] == [
        ("compiles", "ok"),
        ("broken", "failed"),
        ("fine", "ok"),
        ("refused", "skipped"),
    ]
    assert rows[1]["reason"] == "RuntimeError: CUDA out of memory"
    assert rows[2]["x"] == 2.0 and rows[3]["reason"] == "needs CUDA"


def test_no_row_starts_once_the_budget_is_spent(module):
    jobs = [module.Job("training", name, {}, lambda: {}) for name in ("first", "second")]
    rows = module.run_jobs(jobs, -1.0, torch.device("cpu"), lambda _: None)
    assert all(r["status"] == "skipped" and "--budget_s" in r["reason"] for r in rows)
