"""Published checkpoints: the real download code against a local file server, checksum checks,
the converted cache used offline, and the published protocol in ``atrous eval``."""

import dataclasses
import functools
import hashlib
import json
import re
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
from atrous.hub.download import ChecksumError, DownloadError, cached_folder, downloads_folder
from atrous.hub.published import fetch
from atrous.hub.registry import REFUSED, REGISTRY, get_published

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
    """A local HTTP server standing in for download.tensorflow.org, an empty cache, and the
    MobileNetV2 entry unpinned (the tarballs served here are made in the tests)."""
    entry = get_published(NAME)
    monkeypatch.setitem(REGISTRY, NAME, dataclasses.replace(entry, size=None, sha256=None))
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


@pytest.mark.slow
def test_first_use_downloads_checks_converts_and_later_uses_read_the_cache_offline(
    file_server, tmp_path, capsys
):
    folder, server = file_server
    data = voc_tarball(folder)
    model = atrous.load(NAME)
    assert model.num_classes == 21 and model.class_names == VOC_CLASSES
    assert model.config.image_pool_crop_size == (513, 513) and model.config.mean == (0.5,) * 3
    record = json.loads((cached_folder(NAME) / "source.json").read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert "dropped: 1 the training step counter" in record["conversion"]
    assert record["sha256"] in capsys.readouterr().out
    assert not list(cached_folder(NAME).glob("*.tar.gz"))  # tarball not kept

    server.shutdown()  # offline from here on
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(image)
    status = main(["predict", str(image), "--model", NAME, "--output_dir", str(tmp_path / "out")])
    assert status == 0 and (tmp_path / "out" / "masks" / "photo.png").is_file()
    assert main(["models", "--pretrained", "true"]) == 0
    listing = capsys.readouterr().out
    assert "23 MB" in listing and "cached" in listing


def test_a_checksum_mismatch_keeps_the_part_and_a_missing_file_is_named(file_server, monkeypatch):
    folder, _ = file_server
    voc_tarball(folder)
    entry = dataclasses.replace(get_published(NAME), size=None, sha256="0" * 64)
    monkeypatch.setitem(REGISTRY, NAME, entry)
    with pytest.raises(ChecksumError, match=f"{entry.file}: expected SHA-256 0000"):
        fetch(NAME, progress=False)
    assert not cached_folder(NAME).exists()
    assert not [p for p in cached_folder(NAME).parent.iterdir()]  # no partial folder left
    assert (downloads_folder() / f"{entry.file}.part").is_file()  # kept for inspection
    (folder / entry.file).unlink()
    monkeypatch.setitem(REGISTRY, NAME, dataclasses.replace(entry, sha256=None))
    with pytest.raises(DownloadError, match=r"cannot download http://127.*HTTP 404"):
        fetch(NAME, progress=False)


def test_a_file_whose_hash_differs_from_its_names_prefix_is_refused(file_server, monkeypatch):
    """mmsegmentation's files carry a SHA-256 prefix in their names; it is checked."""
    folder, _ = file_server
    name = "mmseg:deeplabv3plus_r50_voc"
    entry = get_published(name)
    port = file_server[1].server_port
    monkeypatch.setattr("atrous.hub.registry.MMSEG_URL", f"http://127.0.0.1:{port}/models/")
    (folder / entry.file).parent.mkdir(parents=True)
    (folder / entry.file).write_bytes(b"not the published weights")
    with pytest.raises(ChecksumError, match="expected SHA-256 e1b43aa9"):
        fetch(name, progress=False)
    assert not cached_folder(name).exists()


@pytest.mark.slow
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
    assert "published: 75.32 on VOC 2012 val (OS16, scales [1], flip off, padded to 513×513)" in out
    report = json.loads((folder / "e.json").read_text())
    assert report["inference"]["output_stride"] == 16 and report["published"]["miou"] == 75.32
    assert main([*command, "--score", "1", "--output", str(folder / "e.json")]) == 0
    out = capsys.readouterr().out
    assert (
        "published: 77.33 on VOC 2012 val (OS8, scales [0.5, 0.75, 1, 1.25, 1.5, 1.75], flip "
        in out
    )
    report = json.loads((folder / "e.json").read_text())
    assert report["inference"]["flip"] and len(report["inference"]["scales"]) == 6


def test_unknown_names_and_imagenet_backbones_are_clear_errors(tmp_path, capsys):
    output = str(tmp_path / "x.onnx")
    assert main(["export", "--model", "tf:no_such_model", "--output", output]) == 1
    assert "unknown published checkpoint 'tf:no_such_model'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"ImageNet backbone.*--run.backbone_weights"):
        atrous.load("tf:xception65_imagenet")


def test_every_figure_states_its_split_and_trainval_figures_are_test_figures():
    """model_zoo.md: trainval checkpoints report VOC test; depth 0.5: 70.19 val, 71.83 test."""
    for entry in REGISTRY.values():
        for score in entry.scores:
            assert score.split.split(" (")[0].rsplit(" ", 1)[-1] in ("val", "test", "val2017")
            assert ("trainval" in entry.name) == (score.split == "VOC 2012 test"), entry.name
    trainaug = get_published("tf:mobilenetv2_dm05_coco_voc_trainaug").scores
    trainval = get_published("tf:mobilenetv2_dm05_coco_voc_trainval").scores
    assert [(s.miou, s.split, s.protocol.output_stride) for s in trainaug + trainval] == [
        (70.19, "VOC 2012 val", 16),
        (71.83, "VOC 2012 test", 8),
    ]
    ade = get_published("tf:mobilenetv2_ade20k_train")
    assert (
        ade.file == "deeplabv3_mnv2_ade20k_train_2018_12_03.tar.gz" and ade.scores[0].miou == 32.04
    )


def test_the_one_published_size_and_hash_are_pinned():
    """OpenVINO's Open Model Zoo publishes size and SHA-256 of the MobileNetV2 VOC tarball."""
    entry = get_published(NAME)
    assert entry.size == 23_882_985 and entry.sha256.startswith("cd506941e4f88fd0")
    assert all(e.sha256 and len(e.sha256) >= 8 for e in REGISTRY.values() if e.kind == "mmseg")


def test_the_table_fits_80_columns_and_labels_test_figures(capsys):
    assert main(["models", "--pretrained", "true"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    for name in [*REGISTRY, *REFUSED]:
        assert name in out  # whole, not cut short with an ellipsis
    assert "80.25 test OS8 MS flip" in out and "71.83 test OS8" in out
    assert "66.40 COCO OS8" in out  # torchvision's figure is on COCO, not VOC val
    assert re.search(r"tf:xception71_dpc_cityscapes_trainval +│ not built: DPC head", out)


def test_refused_checkpoints_say_why(tmp_path, capsys):
    assert "tf:xception71_dpc_cityscapes_trainfine" in REFUSED
    with pytest.raises(ValueError, match="Dense Prediction Cell"):
        get_published("tf:xception71_dpc_cityscapes_trainval")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    model = "tf:mobilenetv3_large_cityscapes_trainfine"
    assert main(["predict", str(image), "--model", model]) != 0
    printed = capsys.readouterr()
    assert "MobileNetV3" in printed.out + printed.err
