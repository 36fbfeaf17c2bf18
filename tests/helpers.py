"""Helpers shared by test files: small models, data trees, checkpoints and fixtures.

Test files import from here (``from helpers import ...``), never from each other, so a skip in
one test file never spreads to another through an import.
"""

import dataclasses
import json
import shutil
import time
import zlib
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from atrous.data import DataConfig
from atrous.data.palettes import VOC_PALETTE
from atrous.data.visualize import palette_image
from atrous.models.zoo import get_config
from atrous.training.config import OptimConfig, RunConfig, TrainConfig

FIXTURES = Path(__file__).parent / "fixtures"
TF_FIXTURES = FIXTURES / "tf_deeplab"


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial statistics so eval-mode comparisons test real numbers."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def use_offline_hf_cache(monkeypatch, cache: Path, repo_id: str, files: list[Path]) -> None:
    """Put ``files`` where huggingface_hub caches a downloaded repo, and take the Hub offline."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in files:
        shutil.copy(path, snapshot / path.name)


def no_download(url: str, *args, **kwargs) -> None:
    pytest.fail(f"tried to download {url}")


def make_binary_folder(root: Path, names: str, foreground: int, count: int = 4) -> None:
    """Masks of 0 and ``foreground`` (a square on background), as users' binary tools write."""
    rng = np.random.default_rng(4)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(f"names: {names}\n")
    for i in range(count):
        write_rgb(root / "images" / "train" / f"b{i}.png", random_image(rng, 16, 16))
        mask = np.zeros((16, 16), dtype=np.uint8)
        mask[4:12, 4:12] = foreground
        (root / "masks" / "train").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask, mode="L").save(root / "masks" / "train" / f"b{i}.png")


def random_image(rng, h=20, w=24):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_index_png(path: Path, mask: np.ndarray, palette=VOC_PALETTE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    palette_image(mask, palette).save(path)


def write_rgb(path: Path, array: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path, format=fmt)


def load_fixture(variant: str) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    spec = json.loads((TF_FIXTURES / f"{variant}.json").read_text())
    scale = spec["settings"].get("conv_scale", 1.0)
    variables = {name: official_weights(name, shape, scale) for name, shape in spec["variables"]}
    with np.load(TF_FIXTURES / f"{variant}.npz") as arrays:
        outputs = dict(arrays)
    return spec, variables, outputs


def official_weights(name: str, shape: list[int], conv_scale: float) -> np.ndarray:
    """The fixtures' weight rule: seeded by the variable's name; conv kernels scaled by their
    fan-in (times ``conv_scale``, chosen per variant so the logits vary across pixels)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    size = tuple(shape)
    if name.endswith("/depthwise_weights"):
        value = rng.standard_normal(size) * np.sqrt(1.0 / (size[0] * size[1])) * conv_scale
    elif name.endswith("/weights"):
        value = rng.standard_normal(size) * np.sqrt(1.0 / np.prod(size[:-1])) * conv_scale
    elif name.endswith("/biases"):
        value = rng.normal(0.0, 0.1, size)
    elif name.endswith("/gamma"):
        value = rng.uniform(0.5, 1.5, size)
    elif name.endswith("/beta") or name.endswith("/moving_mean"):
        value = rng.normal(0.0, 0.1, size)
    elif name.endswith("/moving_variance"):
        value = rng.uniform(0.5, 1.5, size)
    else:
        raise ValueError(f"no rule for {name}")
    return value.astype(np.float32)


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


def write_checkpoint(variables: dict[str, np.ndarray], prefix: Path) -> Path:
    """A TF checkpoint (``prefix.index`` + data) holding exactly ``variables``; needs TensorFlow,
    so a test that calls it skips where TensorFlow is absent."""
    tf = pytest.importorskip("tensorflow", reason="writing a TF checkpoint needs atrous[tf]")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(variables)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[variables[n] for n in names],
    )
    return prefix
