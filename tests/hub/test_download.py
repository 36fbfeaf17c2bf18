"""Downloads that can be trusted, against a local HTTP server made here (127.0.0.1, supporting
Range): truncated, wrong-hash, 404, slow and stalled files, and a server that ignores Range.
Extraction refuses unsafe archives on every Python; the published-checkpoint flow keeps the
archive when conversion fails and converts again for a new converter. No test reaches the
internet."""

import dataclasses
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tarball, use_offline_hf_cache

import atrous.hub.published as published
from atrous.convert.archive import ArchiveError
from atrous.hub.download import (
    ChecksumError,
    DownloadError,
    cached_folder,
    check_url,
    download_file,
    downloads_folder,
)
from atrous.hub.load import load
from atrous.hub.registry import REGISTRY, get_published

DATA = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
DIGEST = hashlib.sha256(DATA).hexdigest()
NAME = "tf:mobilenetv2_coco_voc_trainaug"


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; ``server.modes[name]`` makes a file misbehave."""

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        name, server = self.path.lstrip("/"), self.server
        asked = self.headers.get("Range")
        if name not in server.files:
            server.log.append((name, asked, 404))
            self.send_error(404)
            return
        data, mode = server.files[name], server.modes.get(name, set())
        start = int(asked[6:-1]) if asked and "ignore_range" not in mode else 0
        if start >= len(data):
            server.log.append((name, asked, 416))
            self.send_error(416)
            return
        status = 206 if start else 200
        server.log.append((name, asked, status))
        self.send_response(status)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self._body(data[start:], mode)

    def _body(self, body: bytes, mode: set) -> None:
        if "truncate_once" in mode:  # half the body, then the connection closes
            mode.discard("truncate_once")
            self.wfile.write(body[: len(body) // 2])
        elif "stall" in mode:  # 100 bytes, then silence longer than the client waits
            self.wfile.write(body[:100])
            self.wfile.flush()
            time.sleep(1.0)
        elif "slow" in mode:
            for i in range(0, len(body), 2000):
                self.wfile.write(body[i : i + 2000])
                self.wfile.flush()
                time.sleep(0.01)
        else:
            self.wfile.write(body)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local file server; ``server.url(name)`` is where it serves ``name``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.modes, httpd.log = {}, {}, []
    httpd.url = lambda name: f"http://127.0.0.1:{httpd.server_port}/{name}"
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setenv("ATROUS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ATROUS_DOWNLOAD_TIMEOUT", "0.3")
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_a_truncated_download_is_resumed_with_a_range_request(server, tmp_path):
    server.files["w.bin"], server.modes["w.bin"] = DATA, {"truncate_once"}
    target = download_file(server.url("w.bin"), tmp_path / "w.bin", len(DATA), DIGEST, False)
    assert target.read_bytes() == DATA and not (tmp_path / "w.bin.part").exists()
    assert server.log == [("w.bin", None, 200), ("w.bin", f"bytes={len(DATA) // 2}-", 206)]


def test_a_server_that_ignores_range_is_read_again_from_the_start(server, tmp_path):
    server.files["w.bin"], server.modes["w.bin"] = DATA, {"truncate_once", "ignore_range"}
    target = download_file(server.url("w.bin"), tmp_path / "w.bin", len(DATA), DIGEST, False)
    assert target.read_bytes() == DATA
    assert [status for *_, status in server.log] == [200, 200]  # the Range was answered whole


def test_a_wrong_hash_names_the_file_both_digests_and_keeps_the_part(server, tmp_path):
    server.files["w.bin"] = DATA
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as error:
        download_file(server.url("w.bin"), tmp_path / "w.bin", len(DATA), wrong, False)
    assert f"w.bin: expected SHA-256 {wrong}, got {DIGEST}" in str(error.value)
    assert (tmp_path / "w.bin.part").read_bytes() == DATA and not (tmp_path / "w.bin").exists()
    target = download_file(server.url("w.bin"), tmp_path / "w.bin", None, DIGEST, False)
    assert target.read_bytes() == DATA  # the next try starts afresh, not from the bad part
    assert [status for *_, status in server.log] == [200, 416, 200]


def test_a_size_other_than_the_pinned_one_is_refused_before_downloading(server, tmp_path):
    server.files["w.bin"] = DATA
    with pytest.raises(ChecksumError, match="offers 20,000 bytes; its publisher pins 19,999"):
        download_file(server.url("w.bin"), tmp_path / "w.bin", len(DATA) - 1, None, False)
    assert not (tmp_path / "w.bin").exists()


def test_a_missing_file_is_an_error_naming_the_url_and_status(server, tmp_path):
    url = server.url("nothing.bin")
    with pytest.raises(DownloadError, match=f"cannot download {url}: HTTP 404"):
        download_file(url, tmp_path / "nothing.bin", progress=False)
    assert not list(tmp_path.glob("nothing.bin*"))


def test_a_slow_server_finishes(server, tmp_path):
    server.files["w.bin"], server.modes["w.bin"] = DATA, {"slow"}
    target = download_file(server.url("w.bin"), tmp_path / "w.bin", len(DATA), DIGEST, False)
    assert target.read_bytes() == DATA


def test_a_stalled_server_fails_in_seconds_and_the_next_try_resumes(server, tmp_path):
    server.files["w.bin"], server.modes["w.bin"] = DATA, {"stall"}
    began = time.monotonic()
    with pytest.raises(DownloadError, match=r"w.bin: .* stopped at 400 of 20,000 bytes 4 times"):
        download_file(server.url("w.bin"), tmp_path / "w.bin", len(DATA), DIGEST, False)
    assert time.monotonic() - began < 10
    assert (tmp_path / "w.bin.part").read_bytes() == DATA[:400]
    server.modes["w.bin"] = set()
    target = download_file(server.url("w.bin"), tmp_path / "w.bin", len(DATA), DIGEST, False)
    assert target.read_bytes() == DATA and server.log[-1] == ("w.bin", "bytes=400-", 206)


def test_only_https_leaves_this_machine(monkeypatch):
    with pytest.raises(DownloadError, match="only https"):
        check_url("http://download.tensorflow.org/models/x.tar.gz")
    monkeypatch.delenv("ATROUS_TF_MODELS_URL", raising=False)
    assert all(entry.url.startswith("https://") for entry in REGISTRY.values())


def zoo_entry(server, monkeypatch, data: bytes):
    """The registry's MobileNetV2 VOC entry served locally, pinned to ``data``."""
    entry = get_published(NAME)
    server.files[entry.file] = data
    monkeypatch.setenv("ATROUS_TF_MODELS_URL", server.url("").rstrip("/"))
    pinned = dataclasses.replace(entry, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(REGISTRY, NAME, pinned)
    return pinned


def fake_convert_tf(seen: list):
    """Stands in for the TF converter: records what it was given, writes a model folder."""

    def convert(checkpoint, output, crop_size, dataset):
        seen.append(sorted(p.name for p in checkpoint.rglob("*") if p.is_file()))
        assert str(checkpoint).startswith(str(downloads_folder()))  # the cache, not /tmp
        output.mkdir(parents=True)
        return output, SimpleNamespace(describe=lambda: "converted")

    return convert


def test_an_archive_is_kept_when_conversion_fails_and_reconverted_for_a_new_converter(
    server, monkeypatch
):
    files = {"m/model.ckpt.index": b"i", "m/model.ckpt.data-00000-of-00001": b"d", "m/g.pb": b"g"}
    entry = zoo_entry(server, monkeypatch, tarball(files))

    def missing_tensorflow(*args):
        raise ImportError("reading TensorFlow checkpoints needs TensorFlow")

    monkeypatch.setattr(published, "convert_tf", missing_tensorflow)
    with pytest.raises(ImportError):
        published.fetch(NAME, progress=False)
    assert (downloads_folder() / entry.filename).is_file()
    seen = []
    monkeypatch.setattr(published, "convert_tf", fake_convert_tf(seen))
    folder = published.fetch(NAME, progress=False)
    assert len(server.log) == 1  # the kept archive was used, not downloaded again
    assert seen == [["model.ckpt.data-00000-of-00001", "model.ckpt.index"]]
    assert not (downloads_folder() / entry.filename).exists()  # converted: archive dropped
    assert published.fetch(NAME, progress=False) == folder and len(seen) == 1  # cached
    monkeypatch.setattr(published, "converter_version", lambda: "atrous 9, conversion 9")
    published.fetch(NAME, progress=False)
    assert len(seen) == 2  # a new converter converts again
    record = json.loads((cached_folder(NAME) / "source.json").read_text())
    assert record["converter"] == "atrous 9, conversion 9"


@pytest.mark.parametrize(
    "data, problem",
    [
        (tarball({"m/model.ckpt.index": DATA})[:3000], "is not a readable .tar.gz"),
        (tarball({"README": b"not a checkpoint"}), r"holds no TensorFlow checkpoint \(\*.index\)"),
    ],
    ids=["corrupt", "wrong"],
)
def test_a_corrupt_or_wrong_archive_is_named_and_removed(server, monkeypatch, data, problem):
    entry = zoo_entry(server, monkeypatch, data)
    monkeypatch.setattr(published, "convert_tf", fake_convert_tf([]))
    with pytest.raises(ArchiveError, match=problem) as error:
        published.fetch(NAME, progress=False)
    assert entry.filename in str(error.value) and "the next use downloads it again" in str(
        error.value
    )
    assert not (downloads_folder() / entry.filename).exists()


def test_hugging_face_falls_back_to_pytorch_model_bin(tmp_path, monkeypatch):
    """A repository without safetensors (google/deeplabv3_mobilenet_v2_1.0_513 has only
    pytorch_model.bin): the pickle is read tensors-only and converts to equal logits."""
    transformers = pytest.importorskip("transformers")
    config = transformers.MobileNetV2Config(num_labels=3, output_stride=16)
    reference = transformers.MobileNetV2ForSemanticSegmentation(config).eval()
    reference.config.architectures = ["MobileNetV2ForSemanticSegmentation"]
    reference.config.save_pretrained(tmp_path / "hf")  # the repo's two files, as it has them
    torch.save(reference.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    repo = get_published("hf:google/deeplabv3_mobilenet_v2_1.0_513").file
    files = [tmp_path / "hf" / "config.json", tmp_path / "hf" / "pytorch_model.bin"]
    use_offline_hf_cache(monkeypatch, tmp_path / "hub", repo, files)
    monkeypatch.setenv("ATROUS_CACHE", str(tmp_path / "cache"))
    model = load("hf:google/deeplabv3_mobilenet_v2_1.0_513")
    record = json.loads((cached_folder(f"hf:{repo}") / "source.json").read_text())
    assert record["file"] == "pytorch_model.bin"
    images = torch.randn(1, 3, 65, 65, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = reference(pixel_values=images).logits  # at the output stride
        theirs = F.interpolate(theirs, size=(65, 65), mode="bilinear", align_corners=True)
        ours = model(images)
    assert model.num_classes == 3 and (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()
