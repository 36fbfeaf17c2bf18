"""``atrous serve``'s temporary folder: bounded while it runs, deleted when it stops (SIGTERM
as well as Ctrl-C)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.apps.serve import KEEP_REQUESTS, PageModel, PageOptions, prune
from atrous.models.zoo import create_model

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("serve_model") / "model"
    create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25).save_pretrained(
        folder
    )
    return folder


def touch(path: Path, when: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (when, when))
    return path


def test_prune_keeps_the_last_requests_and_the_page_own_files(tmp_path):
    start = 1000.0
    sample = touch(tmp_path / "gradio" / "s" / "scene_0.png", start - 5)  # cached at page build
    uploads, results = [], []
    for i in range(6):  # request i: its upload, then its result folder
        uploads.append(touch(tmp_path / "gradio" / f"u{i}" / "photo.jpg", start + 10 * i + 0.5))
        results.append(
            touch(tmp_path / "results" / f"r{i}" / "mask.png", start + 10 * i + 1).parent
        )
        os.utime(results[-1], (start + 10 * i + 1,) * 2)
    prune(tmp_path, keep=2, since=start)
    assert [r.exists() for r in results] == [False] * 4 + [True] * 2
    assert [u.exists() for u in uploads] == [False] * 4 + [True] * 2  # no newer than result 3
    assert not (tmp_path / "gradio" / "u0").exists()  # emptied folders go too
    assert sample.exists()


@pytest.mark.slow
def test_a_long_running_page_holds_only_its_last_requests(saved_model, tmp_path):
    page = PageModel(saved_model, tmp_path / "work")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(photo)
    for _ in range(KEEP_REQUESTS + 3):
        result = page.run(photo, PageOptions(16))
    assert result.mask_path.is_file() and result.confidence.shape == (40, 50)
    assert len(list((tmp_path / "work" / "results").iterdir())) == KEEP_REQUESTS
    page.close()
    assert not (tmp_path / "work").exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_sigterm_deletes_the_temporary_folder(saved_model):
    code = f"from atrous.apps.serve import launch; launch({str(saved_model)!r}, port={free_port()})"
    environment = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=environment
    )
    try:
        line = server.stdout.readline()  # "atrous serve: MODEL on URL (uploads in FOLDER)"
        workdir = Path(re.search(r"uploads in (.+)\)", line).group(1))
        assert workdir.name.startswith("atrous-serve-") and workdir.is_dir()
        time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        server.kill()
    assert not workdir.exists()
