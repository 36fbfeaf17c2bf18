import json

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.cli import gather_paths, main
from atrous.data import build_dataset
from atrous.data.synthetic import render_scene
from atrous.evaluation.evaluate import evaluate_dataset
from atrous.evaluation.metrics import ConfusionMatrix
from atrous.hub.load import load_segmenter
from atrous.inference.predict import expand_inputs, predict_files
from atrous.runtime.distributed import DistributedEnv
from atrous.training.config import TrainConfig


@pytest.fixture()
def mixed_folder(tmp_path):
    """Images in many modes, plus a truncated PNG and a text file named like an image.

    Returns the folder and the expected (width, height) of each readable image's outputs.
    """
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = render_scene(7, 0, 64)[0]
    sizes = {}

    def save(name, image, **kwargs):
        image.save(folder / name, **kwargs)
        sizes[name.rsplit(".", 1)[0]] = image.size

    save("rgb.jpg", Image.fromarray(rgb))
    save("gray.png", Image.fromarray(rgb).convert("L"))
    save("alpha.png", Image.fromarray(rgb).convert("RGBA"))
    save("palette.gif", Image.fromarray(rgb).convert("P"))
    save("deep.png", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257))
    save("cmyk.jpg", Image.fromarray(rgb[:50, :40]).convert("CMYK"))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° to display
    Image.fromarray(rgb[:48, :64]).save(folder / "rotated.jpg", exif=exif)
    sizes["rotated"] = (48, 64)  # displayed upright: width and height swap
    png = (folder / "rgb.jpg").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 3])
    (folder / "notes.jpg").write_text("not an image")
    return folder, sizes


@pytest.mark.slow
def test_predict_writes_masks_and_overlays_of_each_input_size(tiny_run, mixed_folder, tmp_path):
    folder, sizes = mixed_folder
    segmenter = load_segmenter(tiny_run / "best.pt")
    report = predict_files(segmenter, [folder], tmp_path / "out", figures=True, progress=False)
    assert sorted(p.name for p, _ in report.failed) == ["notes.jpg", "truncated.png"]
    assert all(p.name in message for p, message in report.failed)
    for stem, size in sizes.items():
        mask = Image.open(tmp_path / "out" / "masks" / f"{stem}.png")
        assert mask.mode == "P" and mask.size == size
        assert np.asarray(mask).max() < 6
        assert Image.open(tmp_path / "out" / "overlays" / f"{stem}.png").size == size
        figure = Image.open(tmp_path / "out" / "figures" / f"{stem}.png")
        assert figure.size == (3 * size[0], size[1])
    assert len(report.written) == 3 * len(sizes)


def test_predict_command_reports_bad_files_and_exit_code(tiny_run, mixed_folder, tmp_path, capsys):
    folder, _ = mixed_folder
    good = [str(folder / "rgb.jpg"), str(folder / "gray.png")]
    out = tmp_path / "cli"
    args = ["predict", *good, str(folder / "notes.jpg"), "--model", str(tiny_run / "best.pt")]
    status = main([*args, "--output_dir", str(out), "--progress", "false"])
    printed = "".join(capsys.readouterr())
    assert status == 1
    assert "notes.jpg" in printed and "2 images segmented" in printed
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["gray.png", "rgb.png"]
    status = main([*args[:3], "--model", str(tiny_run / "best.pt"), "--output_dir", str(out)])
    assert status == 0


def test_gather_paths_makes_one_list_of_bare_words():
    args = ["predict", "a.jpg", "--model", "m", "b.png", "--flag=1"]
    assert gather_paths(args) == ["predict", '["a.jpg", "b.png"]', "--model", "m", "--flag=1"]
    assert gather_paths(["eval", "m"]) == ["eval", "m"]


def test_inputs_expand_globs_and_refuse_colliding_names(tmp_path):
    for name in ("a.png", "b.jpg", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(b"")
    assert [p.name for p in expand_inputs([str(tmp_path / "*")])] == ["a.png", "b.jpg"]
    with pytest.raises(ValueError, match="no image files match"):
        expand_inputs([str(tmp_path / "*.bmp")])
    with pytest.raises(ValueError, match="share the name 'a'"):
        expand_inputs([tmp_path, tmp_path / "sub"])


@pytest.mark.slow
def test_segmenter_predicts_what_evaluation_scores(tiny_run):
    """One preprocessing and inference path: predict on raw images == evaluation."""
    segmenter = load_segmenter(tiny_run / "best.pt")
    config = TrainConfig.from_dict(torch.load(tiny_run / "best.pt", weights_only=True)["config"])
    dataset = build_dataset(config.data, "val")
    env = DistributedEnv(0, 1, 0, torch.device("cpu"))
    evaluation = evaluate_dataset(
        segmenter.network, dataset, segmenter.mean, segmenter.std, env, progress=False
    )
    confusion = ConfusionMatrix(dataset.num_classes)
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        confusion.update(torch.from_numpy(segmenter(image)), torch.from_numpy(mask))
    torch.testing.assert_close(confusion.matrix, evaluation.confusion.matrix, rtol=0, atol=0)


@pytest.mark.slow
def test_eval_command_prints_table_and_writes_json(tiny_run, tmp_path, capsys):
    output = tmp_path / "eval.json"
    status = main(
        [
            "eval",
            "--model",
            str(tiny_run / "best.pt"),
            "--inference.flip",
            "true",
            "--trimap",
            "[1,3]",
            "--trimap_source",
            "edges",
            "--output",
            str(output),
            "--progress",
            "false",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert "mIoU" in printed and "triangle" in printed and "trimap   3 px" in printed
    assert "protocol: whole image padded to OS·k+1, model's OS, scales [1], flip on" in printed
    report = json.loads(output.read_text())
    assert report["images"] == 12 and report["inference"]["flip"] is True
    assert set(report["scores"]["per_class"]) >= {"background", "stroke"}
    assert 0 <= report["scores"]["mean_iou"] <= 1
    assert set(report["trimap"]["mean_iou"]) == {"1", "3"}
    assert "Dice/F1" in printed and "precision" in printed and "mean recall" in printed
    scores = report["scores"]
    assert {"mean_dice", "mean_precision", "mean_recall"} <= set(scores)
    counts = np.array(report["confusion_matrix"])  # [truth][prediction], the per-class scores'
    assert counts.shape == (6, 6)
    for c, name in enumerate(report["scores"]["per_class"]):
        entry, tp = scores["per_class"][name], counts[c, c]
        if entry["precision"] is not None:
            assert entry["precision"] == pytest.approx(tp / counts[:, c].sum())
        if entry["dice"] is not None:
            assert entry["dice"] == pytest.approx(2 * tp / (counts[c].sum() + counts[:, c].sum()))
    assert "foreground" not in scores  # six classes: not a binary task
    heatmap = tmp_path / "eval_confusion.png"
    assert f"written: {heatmap}" in printed
    with Image.open(heatmap) as image:
        assert image.format == "PNG"


def test_eval_of_an_unknown_model_is_one_clear_error(tmp_path, capsys):
    status = main(["eval", "--model", str(tmp_path / "missing.pt"), "--data.dataset", "synthetic"])
    assert status == 1
    assert "no model at" in capsys.readouterr().err
