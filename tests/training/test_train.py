import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_config, wait_for_steps
from safetensors.torch import save_file

from atrous.apps.demo import demo_config
from atrous.data import build_dataset
from atrous.evaluation.evaluate import evaluate_dataset
from atrous.hub.load import load
from atrous.models.checkpoint import load_checkpoint
from atrous.models.zoo import build_model, get_config
from atrous.runtime.distributed import DistributedEnv
from atrous.training.config import OptimConfig, TrainConfig
from atrous.training.loop import poly_schedule, prepare_model, train

ROOT = Path(__file__).resolve().parents[2]


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_training_lowers_the_loss_and_raises_miou(tmp_path):
    config = tiny_config(tmp_path, iterations=60, val_every=60)
    torch.manual_seed(config.run.seed)
    untrained = build_model(config.model)
    env = DistributedEnv(0, 1, 0, torch.device("cpu"))
    before = evaluate_dataset(
        untrained,
        build_dataset(config.data, "val"),
        config.model.mean,
        config.model.std,
        env,
        progress=False,
    ).scores()
    result = train(config)
    losses = [r["loss"] for r in read_metrics(tmp_path) if "loss" in r]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert result.scores.mean_iou > before.mean_iou + 0.05
    for name in ("last.pt", "best.pt", "config.yaml", "curves.png", "metrics.jsonl"):
        assert (tmp_path / name).is_file(), name
    assert any((tmp_path / "tensorboard").iterdir())
    saved = TrainConfig.from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert saved == config


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_weights(tmp_path):
    straight = train(tiny_config(tmp_path / "straight"))
    stopped = tiny_config(tmp_path / "resumed", stop_after=5)
    assert train(stopped).iteration == 5
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["iteration"] == 5
    resumed = train(tiny_config(tmp_path / "resumed"))
    assert straight.iteration == resumed.iteration == 12
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["best_miou"] == b["best_miou"]


def process_with_rank(marker: str, rank: int) -> int:
    """The pid of the torchrun worker of ``rank`` whose environment carries ``marker``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if marker.encode() in environ and f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.05)
    raise TimeoutError(f"no process of rank {rank}")


@pytest.mark.slow
def test_two_process_ddp_stops_together_resumes_and_matches_one_process(tmp_path):
    """torchrun with 2 gloo processes, global batch 4 (2 each), against 1 process with batch 4.

    Midway, SIGUSR1 goes to rank 1 alone: both ranks stop after the same step (rank 0 writes
    last.pt), and the same command resumes to the single process's weights.
    BN is frozen (``bn_mode: frozen``): SyncBN needs CUDA, and per-process BN statistics would
    differ from one process's by construction. Dropout is off: each process draws its own masks.
    Scale jitter is off so every image has the same number of labelled pixels, which makes the
    average of per-process mean losses equal the single-process mean.
    """
    base = tiny_config(tmp_path, iterations=24, val_every=12, bn_mode="frozen", checkpoint_every=0)
    base = dataclasses.replace(
        base,
        model=base.model.replace(aspp_dropout=0.0),
        data=dataclasses.replace(base.data, scale_min=1.0, scale_max=1.0),
    )
    single = dataclasses.replace(
        base, run=dataclasses.replace(base.run, output_dir=str(tmp_path / "one"))
    )
    train(single)
    config_path = tmp_path / "ddp.yaml"
    ddp = dataclasses.replace(
        base, run=dataclasses.replace(base.run, output_dir=str(tmp_path / "two"))
    )
    config_path.write_text(yaml.safe_dump(ddp.to_dict()))
    marker = f"ATROUS_TEST_RUN={tmp_path}"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["ATROUS_TEST_RUN"] = str(tmp_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", "29517", "-m", "atrous", "train", "--config", str(config_path)]
    job = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    rank1 = process_with_rank(marker, 1)
    wait_for_steps(tmp_path / "two", 3)
    os.kill(rank1, signal.SIGUSR1)
    stdout, stderr = job.communicate(timeout=300)
    assert job.returncode != 0
    stops = dict(re.findall(r"\(seen by rank (\d) of 2\) at iteration (\d+)", stdout))
    assert stops.keys() == {"0", "1"} and stops["0"] == stops["1"], stdout + stderr[-3000:]
    assert "preempted by SIGUSR1 (seen by rank 1 of 2)" in stdout
    assert load_checkpoint(tmp_path / "two" / "last.pt")["iteration"] == int(stops["0"]) < 24

    completed = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "2 process(es)" in completed.stdout
    assert sorted(p.name for p in (tmp_path / "two").glob("*.pt")) == ["best.pt", "last.pt"]
    one = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    two = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=key)
    val_one = [r["val_miou"] for r in read_metrics(tmp_path / "one") if "val_miou" in r]
    val_two = [r["val_miou"] for r in read_metrics(tmp_path / "two") if "val_miou" in r]
    assert val_two == pytest.approx(val_one, abs=1e-6)


def test_poly_schedule_with_warmup():
    factor = poly_schedule(100, 0.9, warmup=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(50) == pytest.approx(0.5**0.9)
    assert factor(100) == 0.0


def test_bad_settings_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"model\.num_classes is 21 but dataset 'synthetic' has 6"):
        train(
            dataclasses.replace(
                tiny_config(tmp_path), model=get_config("deeplabv3plus_mobilenetv2")
            )
        )
    with pytest.raises(ValueError, match="divisible by processes × accumulate = 3"):
        train(tiny_config(tmp_path, accumulate=3))
    with pytest.raises(ValueError, match="one image per step cannot train BatchNorm"):
        train(tiny_config(tmp_path, batch_size=1))


@pytest.mark.slow
def test_the_class_count_defaults_to_the_datasets(tmp_path):
    config = tiny_config(tmp_path, iterations=2, val_every=0)
    config = dataclasses.replace(config, model=config.model.replace(num_classes=None))
    train(config)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == 6
    assert load(tmp_path / "model").num_classes == 6


def test_recipes_parse_and_build(tmp_path):
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        config = TrainConfig.from_dict(yaml.safe_load(path.read_text()))
        classes = config.model.num_classes or 21  # reference.yaml: the dataset's, unset
        with torch.device("meta"):
            model = build_model(config.model.replace(num_classes=classes))
        assert model.num_classes == classes, path
    demo = TrainConfig.from_dict(yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text()))
    assert demo == demo_config()


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    """2 micro-steps of 2 images = 1 step of 4 (frozen BN, no dropout, no padding)."""
    base = tiny_config(tmp_path, iterations=3, val_every=3, bn_mode="frozen")
    base = dataclasses.replace(
        base,
        model=base.model.replace(aspp_dropout=0.0),
        data=dataclasses.replace(base.data, scale_min=1.0, scale_max=1.0),
    )
    full = train(
        dataclasses.replace(base, run=dataclasses.replace(base.run, output_dir=str(tmp_path / "a")))
    )
    split = train(
        dataclasses.replace(
            base, run=dataclasses.replace(base.run, output_dir=str(tmp_path / "b"), accumulate=2)
        )
    )
    assert full.iteration == split.iteration == 3
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_no_decay_for_bn_and_biases():
    from atrous.training.loop import build_optimizer

    model = build_model(get_config("deeplabv3plus_mobilenetv2").replace(width_multiplier=0.25))
    optimizer = build_optimizer(model, OptimConfig(no_decay_bn_bias=True))
    decay, no_decay = optimizer.param_groups
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 4e-5
    assert any(p is model.classifier.bias for p in no_decay["params"])
    assert all(p.ndim == 4 for p in decay["params"])
    assert len(build_optimizer(model, OptimConfig()).param_groups) == 1


@pytest.mark.slow
def test_bf16_training_runs(tmp_path):
    result = train(
        tiny_config(tmp_path, iterations=2, val_every=2, precision="bf16", channels_last=True)
    )
    assert result.iteration == 2 and result.scores is not None


@pytest.mark.slow
def test_training_starts_from_backbone_weights_and_saved_models(tiny_run, tmp_path):
    env = DistributedEnv(0, 1, 0, torch.device("cpu"))
    saved = load(tiny_run / "model")
    backbone_file = tmp_path / "backbone.safetensors"
    save_file(saved.backbone.state_dict(), backbone_file)
    config = tiny_config(tmp_path, backbone_weights=str(backbone_file))
    model, _ = prepare_model(config, env, resuming=False)
    for key, value in saved.backbone.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[key], value, rtol=0, atol=0)
    assert not torch.equal(model.classifier.weight, saved.classifier.weight)

    config = tiny_config(tmp_path, init_from=str(tiny_run / "model"))
    config = dataclasses.replace(config, model=config.model.replace(num_classes=4))
    with pytest.warns(UserWarning, match="classifier"):
        model, _ = prepare_model(config, env, resuming=False)
    torch.testing.assert_close(model.aspp.state_dict(), saved.aspp.state_dict(), rtol=0, atol=0)
    assert model.classifier.weight.shape[0] == 4
    # A resumed run takes its weights from last.pt: the starting weights are not read again.
    missing = tiny_config(tmp_path, init_from=str(tmp_path / "gone"), backbone_weights="gone")
    model, _ = prepare_model(missing, env, resuming=True)
    assert not torch.equal(
        model.aspp.state_dict()["project.0.weight"], saved.aspp.state_dict()["project.0.weight"]
    )
