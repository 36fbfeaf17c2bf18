"""Saved models: model.safetensors + config.json, loaded without pickle, mismatches named."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from helpers import randomize_bn, use_offline_hf_cache

from atrous import DeepLab, DeepLabV3, create_model, list_models, list_published, load
from atrous.data import SyntheticScenes
from atrous.models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("background", "cat", "dog", "bird")
PALETTE = ((0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255))


def small_model(num_classes: int = 4) -> DeepLab:
    torch.manual_seed(0)
    model = create_model(
        "deeplabv3plus_mobilenetv2", num_classes=num_classes, width_multiplier=0.25
    )
    randomize_bn(model)
    return model.eval()


def test_every_built_model_has_config_class_names_and_palette():
    model = create_model("deeplabv3_mobilenetv2", width_multiplier=0.25)
    assert model.config.backbone == "mobilenetv2"
    assert model.class_names is None and model.palette is None


def test_save_and_load_round_trip_is_bit_exact(tmp_path):
    model = small_model()
    model.set_output_stride(8)
    model.save_pretrained(tmp_path, class_names=list(CLASSES), palette=[list(c) for c in PALETTE])
    assert {"model.safetensors", "config.json"} <= {p.name for p in tmp_path.iterdir()}
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["format_version"] == 1
    assert saved["model"] == model.config.replace(output_stride=8).to_dict()
    assert saved["class_names"] == list(CLASSES)
    assert saved["palette"] == [list(c) for c in PALETTE]
    assert saved["mean"] == list(model.config.mean) and saved["std"] == list(model.config.std)

    loaded = load(tmp_path)
    assert not loaded.training and loaded.output_stride == 8
    assert loaded.config == model.config.replace(output_stride=8)
    assert loaded.class_names == CLASSES and loaded.palette == PALETTE
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert value.dtype == original[key].dtype and torch.equal(value, original[key]), key
    x = torch.randn(1, 3, 49, 63)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert isinstance(DeepLab.from_pretrained(tmp_path), DeepLab)


def test_save_checks_class_names_and_palette(tmp_path):
    model = small_model()
    with pytest.raises(ValueError, match="need 4 class names"):
        model.save_pretrained(tmp_path, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"need 4 \(r, g, b\) colours"):
        model.save_pretrained(tmp_path, palette=[[0, 0, 0]] * 3 + [[0, 0, 300]])


class Payload:
    """Unpickling this runs code: it creates the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_load_never_unpickles(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"classifier.weight": Payload(marker)}, evil)
    folder = tmp_path / "model"
    small_model().save_pretrained(folder)
    (folder / "model.safetensors").unlink()

    shutil.copy(evil, folder / "model.pt")  # a pickle in place of the weights
    with pytest.raises(ValueError, match=r"has no model\.safetensors \(found: .*model\.pt"):
        load(folder)
    (folder / "model.pt").rename(folder / "model.safetensors")  # a pickle under the right name
    with pytest.raises(ValueError, match=r"model\.safetensors is not a valid safetensors file"):
        load(folder)
    with pytest.raises(ValueError, match=r"evil\.pt: it holds objects besides tensors.*refused"):
        load(evil)  # a training checkpoint's ending: read with weights_only=True
    shutil.copy(evil, tmp_path / "evil.bin")
    with pytest.raises(ValueError, match=r"evil\.bin: atrous\.load reads .* never unpickles"):
        load(tmp_path / "evil.bin")
    assert not marker.exists()
    # The file was live: unpickling it runs the payload.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil, weights_only=True)
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_other_class_count_is_an_error_listing_shapes_or_a_fresh_classifier(tmp_path):
    model = small_model(num_classes=4)
    model.save_pretrained(tmp_path, class_names=CLASSES)
    with pytest.raises(ValueError) as error:
        load(tmp_path, num_classes=7)
    message = str(error.value)
    assert "2 differ in shape" in message
    assert "classifier.weight (weights (4, 256, 1, 1), model (7, 256, 1, 1))" in message
    assert "classifier.bias (weights (4,), model (7,))" in message
    assert "strict=False" in message

    torch.manual_seed(1)
    with pytest.warns(UserWarning, match=r"classifier\.weight") as record:
        tuned = load(tmp_path, num_classes=7, strict=False)
    assert "2 differ in shape" in str(record[0].message)
    assert tuned.num_classes == 7 and tuned.config.num_classes == 7
    assert tuned.class_names is None  # the checkpoint's names describe other classes
    original = model.state_dict()
    for key, value in tuned.state_dict().items():
        if key.startswith("classifier."):
            assert value.shape[0] == 7
        else:
            assert torch.equal(value, original[key]), key
    assert tuned(torch.randn(1, 3, 33, 33)).shape == (1, 7, 33, 33)


def test_wrong_backbone_is_an_error_listing_keys(tmp_path):
    small_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"].update(backbone="resnet50", width_multiplier=1.0, separable=False)
    config["model"]["aspp_rates"] = None
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        load(tmp_path)
    message = str(error.value)
    assert "missing from the weights: backbone.conv1.weight (64, 3, 7, 7)" in message
    assert "differ in shape: aspp.convs.0.0.weight (weights (256, 80, 1, 1), model (256, 2048" in (
        message
    )
    assert "not in the model: aspp.convs.1.2.bias (256,)" in message
    assert "backbone.features.0.0.weight (8, 3, 3, 3)" in message
    assert "… and" in message  # only the first few are listed


def test_config_json_is_checked(tmp_path):
    small_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version: 99"):
        load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "mean": [0.5, 0.5, 0.5]}))
    with pytest.raises(ValueError, match="mean"):
        load(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match=r"has no config\.json"):
        load(tmp_path)
    with pytest.raises(ValueError, match="holds a DeepLabV3Plus, not a DeepLabV3"):
        small_model().save_pretrained(tmp_path)
        DeepLabV3.from_pretrained(tmp_path)


def test_repo_id_is_read_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    model = small_model()
    folder = tmp_path / "saved"
    model.save_pretrained(folder, class_names=CLASSES)
    files = [folder / "config.json", folder / "model.safetensors"]
    use_offline_hf_cache(monkeypatch, tmp_path / "hf", "someone/tiny-deeplab", files)
    loaded = load("someone/tiny-deeplab")
    assert loaded.class_names == CLASSES
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    with pytest.raises(FileNotFoundError, match="no such folder, and no Hugging Face model repo"):
        load("someone/not-cached")


def test_training_saves_the_best_model_with_class_names(tiny_run):
    loaded = load(tiny_run / "model")
    assert loaded.class_names == SyntheticScenes.classes
    assert loaded.palette == SyntheticScenes.palette
    best = load_checkpoint(tiny_run / "best.pt")["model"]
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, best[key]), key


def test_model_zoo_doc_lists_every_named_configuration_and_published_checkpoint():
    text = (ROOT / "docs" / "model_zoo.md").read_text()
    for name in list_models() + list_published():
        assert f"`{name}`" in text, name
