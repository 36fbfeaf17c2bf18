"""Shared fixtures: a tiny training configuration and one short run of it per session."""

import dataclasses
import time
from pathlib import Path

import pytest

from atrous.data import DataConfig
from atrous.train import train
from atrous.train_config import OptimConfig, RunConfig, TrainConfig
from atrous.zoo import get_config


def tiny_config(output_dir: Path, **run_changes) -> TrainConfig:
    """A small MobileNetV2 DeepLabV3+ on 48×48 built-in scenes: seconds per run on a CPU."""
    model = get_config("deeplabv3plus_mobilenetv2").replace(num_classes=6, width_multiplier=0.25)
    data = DataConfig(
        dataset="synthetic",
        crop_size=33,
        scale_min=0.75,
        scale_max=1.25,
        workers=0,
        synthetic_train=64,
        synthetic_val=12,
        synthetic_size=48,
    )
    optim = OptimConfig(optimizer="adamw", lr=3e-3, weight_decay=1e-4)
    run = RunConfig(
        iterations=12,
        batch_size=4,
        val_every=6,
        log_every=1,
        output_dir=str(output_dir),
        progress=False,
        seed=5,
    )
    return TrainConfig(model, data, optim, dataclasses.replace(run, **run_changes))


def wait_for_steps(output_dir: Path, steps: int, timeout: float = 120) -> None:
    """Wait until a run in another thread or process has logged ``steps`` records."""
    path = output_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while not path.is_file() or len(path.read_text().splitlines()) < steps:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{output_dir} did not log {steps} steps")
        time.sleep(0.01)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Output folder of a 12-iteration run of :func:`tiny_config` (checkpoints, saved model)."""
    output_dir = tmp_path_factory.mktemp("tiny_run")
    train(tiny_config(output_dir))
    return output_dir
