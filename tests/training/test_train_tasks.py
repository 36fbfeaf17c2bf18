"""Training on users' data: binary 0/255 masks, multilabel masks, more than three bands, the
auxiliary head, configurable losses, the one-batch pre-flight and compiled training."""

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from helpers import tiny_config
from PIL import Image

import atrous.training.loop
from atrous.cli import main
from atrous.hub.load import load, load_segmenter
from atrous.inference.predict import predict_files
from atrous.training.config import TrainConfig
from atrous.training.loop import train
from atrous.training.losses import LossConfig
from atrous.training.overfit import OverfitFailed, overfit_check


def disc_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy background with one bright disc: image and its 0/255 mask."""
    image = rng.integers(0, 120, (size, size, 3)).astype(np.uint8)
    radius = rng.uniform(size / 6, size / 3)
    cy, cx = rng.uniform(radius, size - radius, 2)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    image[disc] = rng.integers(150, 256, (disc.sum(), 3))
    return image, disc.astype(np.uint8) * 255


def write_binary_folder(root, count: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for split, n in (("train", count), ("val", count // 4)):
        for folder in ("images", "masks"):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        for index in range(n):
            image, mask = disc_scene(rng, size)
            Image.fromarray(image).save(root / "images" / split / f"{index}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{index}.png")


def folder_config(tmp_path, root, **data_changes):
    config = tiny_config(tmp_path / "run")
    data = dataclasses.replace(
        config.data, dataset="folder", root=str(root), scale_min=1.0, scale_max=1.0, **data_changes
    )
    model = config.model.replace(num_classes=None)
    return dataclasses.replace(config, data=data, model=model)


@pytest.mark.slow
def test_binary_0_255_masks_train_to_a_high_foreground_iou(tmp_path):
    """One option (data.task binary) reads 0/255 masks as background/foreground."""
    write_binary_folder(tmp_path / "discs", 48, 48, seed=0)
    config = folder_config(tmp_path, tmp_path / "discs", task="binary", crop_size=49)
    run = dataclasses.replace(config.run, iterations=150, val_every=150, batch_size=8)
    result = train(dataclasses.replace(config, run=run))
    foreground = result.scores.foreground()
    assert foreground.iou >= 0.9, foreground
    model = load(result.output_dir / "model")
    assert model.config.task == "binary" and model.num_classes == 2
    record = json.loads((result.output_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_fg_iou"] == pytest.approx(foreground.iou)
    segmenter = load_segmenter(result.output_dir / "model")
    images = tmp_path / "discs" / "images" / "val"
    report = predict_files(segmenter, [images], tmp_path / "out", progress=False)
    mask = np.asarray(Image.open(report.written[0]))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}


def write_multilabel_folder(root, count: int, size: int) -> None:
    """Two overlapping classes: 'left' covers the left 60%, 'top' the top 60%; colours say which."""
    root.mkdir()
    (root / "classes.yaml").write_text("names: [left, top]\n")
    rng = np.random.default_rng(3)
    for split, n in (("train", count), ("val", 4)):
        (root / "images" / split).mkdir(parents=True)
        for name in ("left", "top"):
            (root / "masks" / split / name).mkdir(parents=True)
        for index in range(n):
            cut = int(size * rng.uniform(0.4, 0.7))
            left = np.zeros((size, size), np.uint8)
            top = np.zeros((size, size), np.uint8)
            left[:, :cut], top[:cut] = 255, 255
            image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
            image[..., 0] += left // 2
            image[..., 1] += top // 2
            Image.fromarray(image).save(root / "images" / split / f"{index}.png")
            Image.fromarray(left).save(root / "masks" / split / "left" / f"{index}.png")
            Image.fromarray(top).save(root / "masks" / split / "top" / f"{index}.png")


@pytest.mark.slow
def test_multilabel_training_scores_each_class_and_predicts_a_mask_per_class(tmp_path):
    write_multilabel_folder(tmp_path / "ml", 24, 40)
    config = folder_config(tmp_path, tmp_path / "ml", task="multilabel", crop_size=33)
    loss = LossConfig(dice=0.5)
    run = dataclasses.replace(config.run, iterations=80, val_every=80, batch_size=8)
    result = train(dataclasses.replace(config, run=run, loss=loss))
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < 0.6 * losses[0] and "dice" in records[0] and "ce" in records[0]
    assert len(result.scores.iou) == 2 and result.scores.mean_iou > 0.5
    segmenter = load_segmenter(result.output_dir / "model")
    assert segmenter.task == "multilabel"
    images = tmp_path / "ml" / "images" / "val"
    predict_files(segmenter, [images], tmp_path / "out", progress=False)
    for name in ("left", "top"):
        mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "0" / f"{name}.png"))
        assert mask.shape == (40, 40) and set(np.unique(mask)) <= {0, 255}


@pytest.mark.slow
def test_four_band_tiffs_train_and_the_aux_head_stays_out_of_the_saved_model(tmp_path):
    root = tmp_path / "bands"
    root.mkdir()
    (root / "classes.yaml").write_text("names: [water, land]\n")
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for index in range(8):
            mask = (rng.random((40, 40)) > 0.5).astype(np.uint8)
            bands = rng.integers(0, 20000, (40, 40, 4)).astype(np.uint16)
            bands[..., 3] += (
                mask.astype(np.uint16) * 40000
            )  # the near-infrared band tells land from water
            tifffile.imwrite(root / "images" / split / f"{index}.tif", bands)
            Image.fromarray(mask).save(root / "masks" / split / f"{index}.png")
    config = folder_config(tmp_path, root, in_channels=4, crop_size=33)
    config = dataclasses.replace(config, model=config.model.replace(aux_head=True))
    run = dataclasses.replace(config.run, iterations=6, val_every=6)
    result = train(dataclasses.replace(config, run=run))
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").open()]
    assert all(r["aux"] > 0 for r in records if "loss" in r)
    model = load(result.output_dir / "model")
    assert model.config.in_channels == 4 and len(model.config.mean) == 4
    assert model.aux_head is None and not model.config.aux_head
    with pytest.raises(ValueError, match="reads 4 image bands"):
        predict_files(load_segmenter(result.output_dir / "model"), [root], tmp_path / "out")
    checkpoint = torch.load(result.output_dir / "last.pt", weights_only=True)
    assert any(k.startswith("aux_head.") for k in checkpoint["model"])


@pytest.mark.slow
def test_class_weights_come_from_the_training_masks(tmp_path, capsys, monkeypatch):
    write_binary_folder(tmp_path / "discs", 8, 32, seed=2)
    masks = [np.array(Image.open(p)) for p in (tmp_path / "discs" / "masks" / "train").iterdir()]
    share = sum(int((m == 255).sum()) for m in masks) / sum(m.size for m in masks)
    expected = 1 / np.log(1.02 + np.array([1 - share, share]))  # ENet's 1 / ln(1.02 + p_c)
    given = []

    def build_loss(*args):
        given.append(args[4])  # the class weights the loss is built with
        return real_build_loss(*args)

    real_build_loss = atrous.training.loop.build_loss
    monkeypatch.setattr(atrous.training.loop, "build_loss", build_loss)
    config = folder_config(tmp_path, tmp_path / "discs", task="binary", crop_size=33)
    loss = LossConfig(class_weighting="inverse_log", top_k_percent_pixels=0.5)
    run = dataclasses.replace(config.run, iterations=2, val_every=0)
    train(dataclasses.replace(config, run=run, loss=loss))
    np.testing.assert_allclose(given[0].numpy(), expected, rtol=1e-6)
    shown = f"background {expected[0]:.3g}, foreground {expected[1]:.3g}"
    assert f"class weights (inverse_log, 8 masks): {shown}" in capsys.readouterr().out


@pytest.mark.slow
def test_overfit_batch_passes_when_the_batch_can_be_fitted(tmp_path, capsys):
    config = tiny_config(tmp_path / "run", overfit_batch=60)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, flip=False))
    result = overfit_check(config)
    assert result.ratio <= 0.1 and result.steps == 60
    assert "pre-flight passed" in capsys.readouterr().out
    assert not (tmp_path / "run" / "last.pt").exists()  # a check, not a training run


@pytest.mark.slow
def test_overfit_batch_fails_loudly_when_the_loss_stays_high(tmp_path, capsys):
    config = tiny_config(tmp_path / "run", overfit_batch=10)
    stuck = dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=0.0))
    with pytest.raises(OverfitFailed, match="pre-flight failed: one batch, 10 steps"):
        overfit_check(stuck)
    args = ["train", "--data.synthetic_train", "8", "--data.synthetic_size", "48"]
    args += ["--data.crop_size", "33", "--data.workers", "0", "--optim.lr", "0"]
    args += ["--model.backbone", "mobilenetv2", "--model.width_multiplier", "0.25"]
    args += ["--run.batch_size", "4", "--run.overfit_batch", "5", "--run.progress", "false"]
    args += ["--run.output_dir", str(tmp_path / "cli")]
    assert main(args) == 1
    assert "check the masks" in capsys.readouterr().err.lower()


@pytest.mark.slow
def test_compiled_training_follows_the_eager_loss_trajectory(tmp_path, monkeypatch):
    """torch.compile of the training forward/backward (dynamo + AOTAutograd). The CPU test uses
    the aot_eager backend: inductor's C++ code generation takes minutes per graph on 2 cores
    (benchmarks/gpu_check.py runs inductor)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))

    def losses(name: str, compiled: bool) -> list[float]:
        # Frozen BN: batch statistics of 4 images over 1×1 image-pooling maps would magnify
        # float rounding differences between the graphs into percent-level loss differences.
        config = tiny_config(
            tmp_path / name, iterations=6, val_every=0, compile=compiled, bn_mode="frozen"
        )
        model = config.model.replace(aspp_dropout=0.0)
        # SGD: Adam's normalised steps would magnify float noise in near-zero gradients.
        optim = dataclasses.replace(config.optim, optimizer="sgd", lr=0.02)
        train(dataclasses.replace(config, model=model, optim=optim))
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if '"loss"' in line]

    eager, compiled = losses("eager", False), losses("compiled", True)
    assert len(eager) == 6
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)


def test_the_reference_config_lists_every_option_at_its_default():
    text = (Path(__file__).resolve().parents[2] / "configs" / "reference.yaml").read_text()
    reference = yaml.safe_load(text)
    defaults = TrainConfig().to_dict()
    assert reference == defaults  # every section and option, nothing more, at its default
    assert TrainConfig.from_dict(reference) == TrainConfig()
    for section in defaults.values():
        for name in section:
            line = next(line for line in text.splitlines() if line.startswith(f"  {name}:"))
            index = text.splitlines().index(line)
            assert "#" in line or text.splitlines()[index - 1].lstrip().startswith("#"), name
