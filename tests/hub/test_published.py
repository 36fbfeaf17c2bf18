"""Published checkpoints: the real download code against a local file server, checksum checks,
the converted cache used offline, and the published protocol in ``atrous eval``."""

import dataclasses
import functools
import hashlib
import json
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from helpers import load_fixture, official_weights, write_checkpoint
from PIL import Image

import atrous
from atrous.cli import main
from atrous.data.palettes import VOC_CLASSES
from atrous.hub.published import REGISTRY, cached_folder, fetch, get_published

NAME = "tf:mobilenetv2_coco_voc_trainaug"


def voc_tarball(folder) -> bytes:
    """A model-zoo-shaped tarball: the MobileNetV2 fixture's graph with 21 VOC classes."""
    _, variables, _ = load_fixture("mobilenetv2_deeplabv3")
    variables["logits/semantic/weights"] = official_weights(
        "logits/semantic/weights", [1, 1, 256, 21], 1.2
    )
    variables["logits/semantic/biases"] = official_weights("logits/semantic/biases", [21], 1.2)
    variables["global_step"] = np.array(30000, dtype=np.int64)
    checkpoint = folder / "deeplabv3_mnv2_pascal_train_aug"
    write_checkpoint(variables, checkpoint / "model.ckpt")
    entry = get_published(NAME)
    with tarfile.open(folder / entry.file, "w:gz") as archive:
        archive.add(checkpoint, arcname=checkpoint.name)
    return (folder / entry.file).read_bytes()


@pytest.fixture
def file_server(tmp_path, monkeypatch):
    """A local HTTP server standing in for download.tensorflow.org, and an empty cache."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("ATROUS_TF_MODELS_URL", f"http://127.0.0.1:{server.server_port}/models")
    monkeypatch.setenv("ATROUS_CACHE", str(tmp_path / "cache"))
    (served / "models").mkdir()
    yield served / "models", server
    server.shutdown()


def test_first_use_downloads_checks_converts_and_later_uses_read_the_cache_offline(
    file_server, tmp_path, capsys
):
    folder, server = file_server
    data = voc_tarball(folder)
    model = atrous.load_model(NAME)
    assert model.num_classes == 21 and model.class_names == VOC_CLASSES
    assert model.config.image_pool_crop_size == (513, 513) and model.config.mean == (0.5,) * 3
    record = json.loads((cached_folder(get_published(NAME)) / "source.json").read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert "dropped: 1 the training step counter" in record["conversion"]
    assert record["sha256"] in capsys.readouterr().out
    assert not list(cached_folder(get_published(NAME)).glob("*.tar.gz"))  # tarball not kept

    server.shutdown()  # offline from here on
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(image)
    status = main(["predict", str(image), "--model", NAME, "--output_dir", str(tmp_path / "out")])
    assert status == 0 and (tmp_path / "out" / "masks" / "photo.png").is_file()
    assert main(["models", "--pretrained", "true"]) == 0
    assert "yes" in capsys.readouterr().out  # listed as cached


def test_a_checksum_mismatch_or_a_missing_file_keeps_nothing(file_server, monkeypatch):
    folder, _ = file_server
    voc_tarball(folder)
    entry = dataclasses.replace(get_published(NAME), sha256="0" * 64)
    monkeypatch.setitem(REGISTRY, NAME, entry)
    with pytest.raises(ValueError, match="not the registered 0000"):
        fetch(NAME, progress=False)
    assert not cached_folder(entry).exists()
    assert not [p for p in cached_folder(entry).parent.iterdir()]  # no partial folder left
    (folder / entry.file).unlink()
    monkeypatch.setitem(REGISTRY, NAME, dataclasses.replace(entry, sha256=None))
    with pytest.raises(OSError, match="cannot download tf:mobilenetv2_coco_voc_trainaug"):
        fetch(NAME, progress=False)


def test_a_file_whose_hash_differs_from_its_names_prefix_is_refused(file_server, monkeypatch):
    """mmsegmentation's files carry a SHA-256 prefix in their names; torch.hub checks it."""
    folder, _ = file_server
    name = "mmseg:deeplabv3plus_r50_voc"
    entry = get_published(name)
    port = file_server[1].server_port
    monkeypatch.setattr("atrous.hub.published.MMSEG_URL", f"http://127.0.0.1:{port}/models/")
    (folder / entry.file).parent.mkdir(parents=True)
    (folder / entry.file).write_bytes(b"not the published weights")
    with pytest.raises(ValueError, match="is not the published file"):
        fetch(name, progress=False)
    assert not cached_folder(entry).exists()


def test_eval_runs_the_published_protocol_and_prints_the_published_miou(
    file_server,
    voc_tree,
    capsys,
):
    folder, _ = file_server
    voc_tarball(folder)
    root = voc_tree[0] / "VOCdevkit" / "VOC2012"
    command = ["eval", "--model", NAME, "--data.dataset", "voc", "--data.root", str(root)]
    assert main([*command, "--output", str(folder / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "published: 75.32 on val (OS16, scales [1], flip off); measured here:" in out
    report = json.loads((folder / "e.json").read_text())
    assert report["inference"]["output_stride"] == 16 and report["published"]["miou"] == 75.32
    assert main([*command, "--protocol", "1", "--output", str(folder / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "published: 77.33 on val (OS8, scales [0.5, 0.75, 1, 1.25, 1.5, 1.75], flip on)" in out
    report = json.loads((folder / "e.json").read_text())
    assert report["inference"]["flip"] and len(report["inference"]["scales"]) == 6


def test_unknown_names_and_imagenet_backbones_are_clear_errors(tmp_path, capsys):
    output = str(tmp_path / "x.onnx")
    assert main(["export", "--model", "tf:no_such_model", "--output", output]) == 1
    assert "unknown published checkpoint 'tf:no_such_model'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"ImageNet backbone.*--run.backbone_weights"):
        atrous.load_model("tf:xception65_imagenet")
