"""Hub-style sharing: the model card, from_pretrained from the offline Hugging Face cache, and what
push_to_hub would upload."""

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file

from atrous.data import SyntheticScenes
from atrous.hub.load import load
from atrous.models.model import DeepLab
from atrous.models.summary import TrainingSummary
from atrous.models.zoo import create_model


def test_training_writes_a_model_card_with_classes_recipe_and_scores(tiny_run):
    card = (tiny_run / "model" / "README.md").read_text()
    summary = load(tiny_run / "model").training_summary
    assert card.startswith("---\n") and "library_name: atrous" in card
    assert "pipeline_tag: image-segmentation" in card
    assert "# DeepLabV3+ mobilenetv2, output stride 16" in card
    for name, colour in zip(SyntheticScenes.classes, SyntheticScenes.palette, strict=True):
        assert f"| {name} | " in card
        assert "`#{:02x}{:02x}{:02x}`".format(*colour) in card
    assert summary.dataset == "synthetic" and summary.train_images == 64
    assert summary.iterations == 12 and summary.crop_size == 33
    assert 0 <= summary.val_miou <= 1 and len(summary.class_iou) == 6
    assert f"**{100 * summary.val_miou:.1f}%** on `val` (12 images" in card
    assert "Mult-Adds at 33×33" in card
    assert f"latency: {summary.latency_ms:.1f} ms per 33×33 image" in card


def test_training_summary_round_trips_and_rejects_unknown_keys(tiny_run, tmp_path):
    model = load(tiny_run / "model")
    model.save_pretrained(tmp_path)
    again = load(tmp_path)
    assert again.training_summary == model.training_summary
    assert (tmp_path / "README.md").read_text() == (tiny_run / "model" / "README.md").read_text()
    config = json.loads((tmp_path / "config.json").read_text())
    config["training"]["epochs"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unknown training keys \['epochs'\]"):
        load(tmp_path)
    with pytest.raises(ValueError, match="lacks"):
        TrainingSummary.from_dict({"dataset": "voc"}, "here")


def test_a_converted_model_card_says_training_is_unknown(tmp_path):
    model = create_model("deeplabv3_mobilenetv2", num_classes=3, width_multiplier=0.25)
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "# DeepLabV3 mobilenetv2, output stride 16" in card
    assert "Mult-Adds at 513×513" in card and "Not recorded" in card
    assert load(tmp_path).training_summary is None


def test_from_pretrained_reads_the_hugging_face_cache_with_hub_offline(
    tiny_run, tmp_path, monkeypatch
):
    saved = tiny_run / "model"
    repo = tmp_path / "hub" / "models--someone--atrous-demo"
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(saved, repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    # huggingface_hub reads its environment once, at import: mirror what a fresh process sees.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    from_hub = DeepLab.from_pretrained("someone/atrous-demo")
    from_folder = DeepLab.from_pretrained(saved)
    assert from_hub.training_summary == from_folder.training_summary
    assert from_hub.class_names == SyntheticScenes.classes
    reference = from_folder.state_dict()
    for key, value in from_hub.state_dict().items():
        assert value.dtype == reference[key].dtype
        assert torch.equal(value, reference[key]), key


def test_push_to_hub_uploads_the_saved_folder_with_its_card(tiny_run, monkeypatch):
    model = load(tiny_run / "model")
    uploaded: dict[str, bytes] = {}
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append(("upload_folder", repo_id))
        for path in Path(folder_path).rglob("*"):
            if path.is_file():
                uploaded[path.relative_to(folder_path).as_posix()] = path.read_bytes()
        return "https://huggingface.co/someone/atrous-demo/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model.push_to_hub("someone/atrous-demo")
    assert calls == [
        ("create_repo", "someone/atrous-demo"),
        ("upload_folder", "someone/atrous-demo"),
    ]
    assert set(uploaded) == {"config.json", "model.safetensors", "README.md"}
    for name in uploaded:
        assert uploaded[name] == (tiny_run / "model" / name).read_bytes(), name


def test_saved_models_leave_the_aux_head_out(tmp_path):
    """A saved model is for inference: no aux_head tensors, aux_head false, none when loaded."""
    torch.manual_seed(0)
    model = create_model(
        "deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25, aux_head=True
    ).eval()
    model.save_pretrained(tmp_path / "model")
    saved = load_file(tmp_path / "model" / "model.safetensors")
    state = model.state_dict()
    assert any(k.startswith("aux_head.") for k in state)
    assert set(saved) == {k for k in state if not k.startswith("aux_head.")}
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model"]["aux_head"] is False
    loaded = load(tmp_path / "model")
    assert loaded.aux_head is None and loaded.config == model.config.replace(aux_head=False)
    assert model.aux_head is not None and model.config.aux_head  # saving changed nothing
    x = torch.randn(1, 3, 49, 49)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # A fine-tuning start keeps it, but is not published.
    model.save_pretrained(tmp_path / "start", keep_aux_head=True)
    start = load(tmp_path / "start")
    assert torch.equal(start.aux_head[4].weight, model.aux_head[4].weight)
    with pytest.raises(ValueError, match="push without it"):
        model.save_pretrained(tmp_path / "hub", keep_aux_head=True, push_to_hub=True)


def test_a_four_band_model_saves_its_normalisation(tmp_path):
    model = create_model(
        "deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25, in_channels=4
    ).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["mean"] == [0.485, 0.456, 0.406, 0.485] and config["model"]["in_channels"] == 4
    assert (
        "| input normalisation | mean [0.485, 0.456, 0.406, 0.485]"
        in (tmp_path / "README.md").read_text()
    )
    loaded = load(tmp_path)
    x = torch.randn(1, 4, 49, 49)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    config["mean"] = config["mean"][:3]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"mean \[0.485, 0.456, 0.406\] differs"):
        load(tmp_path)
