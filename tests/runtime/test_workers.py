"""An error in a data-loading worker ends the command with its message and a non-zero exit, and
the process never waits at exit for workers that ignore stop signals.

The commands run in subprocesses: the hang this guards against happens at interpreter exit. A
timeout fails the test instead of hanging it.
"""

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import random_image, tiny_config, write_index_png, write_rgb

from atrous.data.io import DataError
from atrous.models.zoo import build_model
from atrous.runtime.workers import worker_errors, worker_message

#: Seconds a command may take, start-up included (imports alone took 25 s on a loaded 2-core
#: machine); it failed within a second of reaching the broken image when measured, and never
#: exited before the fix.
LIMIT = 120


@pytest.fixture
def broken_folder(tmp_path) -> Path:
    """A folder dataset of 8 train and 8 val pairs; image 3 of each split is not an image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    root.mkdir()
    (root / "classes.yaml").write_text("names: [background, a, b]\n")
    for split in ("train", "val"):
        for i in range(8):
            write_rgb(root / "images" / split / f"i{i}.png", random_image(rng, 40, 40))
            write_index_png(root / "masks" / split / f"i{i}.png", rng.integers(0, 3, (40, 40)))
        (root / "images" / split / "i3.png").write_bytes(b"not an image")
    return root


def run_atrous(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "atrous", *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=LIMIT, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"atrous {args[0]} did not exit within {LIMIT} s after a worker failed")


def assert_clean_failure(result: subprocess.CompletedProcess, broken: Path) -> None:
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None), output[-2000:]
    assert str(broken) in output, output[-2000:]
    assert "data-loading worker" in output
    assert "Traceback" not in output, output[-2000:]


@pytest.mark.slow
def test_train_with_workers_stops_on_an_unreadable_image(broken_folder, tmp_path):
    config = tiny_config(tmp_path / "run", iterations=20, val_every=1000)
    data = dataclasses.replace(config.data, dataset="folder", root=str(broken_folder), workers=2)
    config = dataclasses.replace(config, model=config.model.replace(num_classes=None), data=data)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config.to_dict()))
    result = run_atrous("train", "--config", str(tmp_path / "run.yaml"))
    assert_clean_failure(result, broken_folder / "images" / "train" / "i3.png")


@pytest.mark.slow
def test_evaluate_with_workers_stops_on_an_unreadable_image(broken_folder, tmp_path):
    model = build_model(tiny_config(tmp_path).model.replace(num_classes=3))
    model.save_pretrained(tmp_path / "model")
    result = run_atrous(
        "eval",
        "--model",
        str(tmp_path / "model"),
        "--data.dataset",
        "folder",
        "--data.root",
        str(broken_folder),
        "--device",
        "cpu",
        "--progress",
        "false",
        "--pipeline.workers",
        "2",
    )
    assert_clean_failure(result, broken_folder / "images" / "val" / "i3.png")


@pytest.mark.slow
def test_a_pipeline_whose_worker_raises_exits_at_once(tmp_path):
    """What ``predict`` and ``evaluate`` read through: any exception, not only DataError."""
    script = textwrap.dedent(
        """
        import sys
        from atrous.inference.pipeline import decoded_items

        class Items:
            def __len__(self):
                return 50

            def __getitem__(self, index):
                if index == 7:
                    raise KeyError("item 7 is broken")
                return index

        try:
            for item in decoded_items(Items(), workers=2):
                pass
        except KeyError as error:
            print("caught:", error)
        sys.exit(3)
        """
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=LIMIT
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the process did not exit within {LIMIT} s after a worker raised")
    assert result.returncode == 3, result.stderr[-2000:]
    assert "in a data-loading worker: 'item 7 is broken'" in result.stdout


class Broken(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 2:
            raise DataError("cannot read image /data/x.png: truncated\nsee atrous check-data")
        return torch.zeros(2)


def test_a_worker_error_keeps_its_type_and_message_and_the_traceback_as_cause():
    loader = torch.utils.data.DataLoader(Broken(), batch_size=None, num_workers=1)
    with pytest.raises(DataError) as caught:
        list(worker_errors(loader))
    assert str(caught.value) == (
        "in a data-loading worker: cannot read image /data/x.png: truncated\nsee atrous check-data"
    )
    assert "Traceback" in str(caught.value.__cause__)


def test_errors_that_did_not_come_from_a_worker_pass_unchanged():
    error = ValueError("plain")
    assert worker_message(error) is None
    with pytest.raises(ValueError, match=r"^plain$"):
        list(worker_errors(iter_raising(error)))


def iter_raising(error: Exception):
    yield 1
    raise error
