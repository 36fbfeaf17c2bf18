"""Shared fixtures: one short training run per session and a VOC tree on disk."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from helpers import random_image, tiny_config, write_index_png, write_rgb

from atrous.inference import runtimes
from atrous.training.loop import train


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch) -> Path:
    """Each test its own ATROUS_CACHE: no remembered runtime choice or download leaks between
    tests, or from the user's own cache into them."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("ATROUS_CACHE", str(folder))
    return folder


@pytest.fixture(autouse=True)
def short_runtime_rests(monkeypatch) -> None:
    """The runtime choice rests 0.2 s before each timed call (so that one runtime's threads do
    not slow the next); on the tiny models of the tests 10 ms is as good and saves seconds a
    choice. Tests check which runtime may win, not how long the machine rests."""
    monkeypatch.setattr(runtimes, "PAUSE_S", 0.01)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Output folder of a 12-iteration run of :func:`tiny_config` (checkpoints, saved model)."""
    output_dir = tmp_path_factory.mktemp("tiny_run")
    train(tiny_config(output_dir))
    return output_dir


@pytest.fixture
def voc_tree(tmp_path):
    """VOCdevkit/VOC2012 with 3 train and 2 val images, and SBD with 3 .mat annotations."""
    rng = np.random.default_rng(0)
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    masks = {}
    for i in ["2007_000001", "2007_000002", "2007_000003", "2007_000004", "2007_000005"]:
        write_rgb(voc / "JPEGImages" / f"{i}.jpg", random_image(rng))
        mask = rng.integers(0, 21, (20, 24))
        mask[0, :] = 255  # VOC's ignored boundary pixels
        write_index_png(voc / "SegmentationClass" / f"{i}.png", mask)
        masks[i] = mask
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000001\n2007_000002\n2007_000003\n")
    (sets / "val.txt").write_text("2007_000004\n2007_000005\n")
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    for i in ["2008_000010", "2008_000011", "2007_000004"]:
        write_rgb(sbd / "img" / f"{i}.jpg", random_image(rng))
        mask = rng.integers(0, 21, (20, 24)).astype(np.uint8)
        (sbd / "cls").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(
            sbd / "cls" / f"{i}.mat",
            {"GTcls": {"Segmentation": mask, "Boundaries": np.zeros(1), "CategoriesPresent": [1]}},
        )
        masks[i] = mask
    # SBD's lists overlap VOC train (2007_000001) and VOC val (2007_000004, must be excluded).
    (sbd / "train.txt").write_text("2008_000010\n2007_000001\n")
    (sbd / "val.txt").write_text("2008_000011\n2007_000004\n")
    return tmp_path, masks
