"""``atrous.load``, the one loader: each kind of source gives back the same model, offline.

The Hub repo is a Hugging Face cache folder the test fills (``use_offline_hf_cache``); the
published name reads the converted folder that a first download leaves in atrous's cache, written
here by ``save_pretrained`` (the download itself is tested in ``test_published.py``).
"""

import json

import pytest
import torch
from helpers import randomize_bn, use_offline_hf_cache

import atrous
from atrous import DeepLab, ModelConfig, create_model
from atrous.data import SyntheticScenes
from atrous.hub.download import cached_folder, converter_version
from atrous.hub.load import load_segmenter
from atrous.models.checkpoint import load_checkpoint

CLASSES = ("background", "cat", "dog")
PUBLISHED = "tf:mobilenetv2_coco_voc_trainaug"


@pytest.fixture(scope="module")
def model() -> DeepLab:
    torch.manual_seed(0)
    built = create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25)
    randomize_bn(built)
    return built.eval()


def saved_folder(model, tmp_path):
    model.save_pretrained(tmp_path / "saved", class_names=CLASSES)
    return tmp_path / "saved"


def hub_repo(model, tmp_path, monkeypatch):
    folder = saved_folder(model, tmp_path)
    files = [folder / "config.json", folder / "model.safetensors"]
    use_offline_hf_cache(monkeypatch, tmp_path / "hf", "someone/tiny-deeplab", files)
    return "someone/tiny-deeplab"


def published(model, tmp_path, monkeypatch):
    monkeypatch.setenv("ATROUS_CACHE", str(tmp_path / "cache"))
    folder = cached_folder(PUBLISHED)
    model.save_pretrained(folder, class_names=CLASSES)
    record = {"name": PUBLISHED, "converter": converter_version()}
    (folder / "source.json").write_text(json.dumps(record))
    return PUBLISHED


SOURCES = {
    "folder": lambda model, tmp_path, _: saved_folder(model, tmp_path),
    "safetensors": lambda model, tmp_path, _: saved_folder(model, tmp_path) / "model.safetensors",
    "hub id": hub_repo,
    "registry name": published,
}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_each_saved_source_loads_the_same_model(kind, model, tmp_path, monkeypatch):
    loaded = atrous.load(SOURCES[kind](model, tmp_path, monkeypatch))
    assert isinstance(loaded, DeepLab) and not loaded.training
    assert loaded.config == model.config and loaded.class_names == CLASSES
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(1, 3, 65, 65)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_a_training_checkpoint_loads_tensors_only_with_its_dataset_classes(tiny_run):
    loaded = atrous.load(tiny_run / "best.pt")
    saved = load_checkpoint(tiny_run / "best.pt")
    assert loaded.config == ModelConfig.from_dict(saved["config"]["model"])
    assert loaded.class_names == SyntheticScenes.classes
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, saved["model"][key]), key
    with pytest.warns(UserWarning, match=r"2 differ in shape: classifier\.weight"):
        again = atrous.load(tiny_run / "best.pt", num_classes=2, strict=False)
    assert again.num_classes == 2 and again.class_names is None


def test_a_safetensors_file_takes_a_config_given_or_beside_it(model, tmp_path):
    folder = saved_folder(model, tmp_path)
    weights = tmp_path / "weights.safetensors"
    (folder / "model.safetensors").rename(weights)
    with pytest.raises(FileNotFoundError, match=r"weights\.safetensors needs its config\.json"):
        atrous.load(weights)
    for config in (model.config, model.config.to_dict(), folder / "config.json"):
        loaded = atrous.load(weights, config=config)
        assert loaded.config == model.config
        assert torch.equal(loaded.classifier.weight, model.classifier.weight)
    assert atrous.load(weights, config=folder / "config.json").class_names == CLASSES
    with pytest.raises(ValueError, match=r"config= goes with a \.safetensors file"):
        atrous.load(folder, config=model.config)


def test_bad_sources_are_named(model, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"no model at .*gone\.pt"):
        atrous.load(tmp_path / "gone.pt")
    with pytest.raises(ValueError, match="ImageNet backbone, not a segmentation model"):
        atrous.load("tf:xception65_imagenet")
    with pytest.raises(ValueError, match="unknown published checkpoint 'tf:nothing'"):
        atrous.load("tf:nothing")
    with pytest.raises(ValueError, match="revision: options of a Hugging Face Hub repo, not"):
        atrous.load(saved_folder(model, tmp_path), revision="main")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match=r"notes\.txt: atrous\.load reads a saved model folder"):
        atrous.load(tmp_path / "notes.txt")
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="exported ONNX graph, not a model to rebuild"):
        atrous.load(tmp_path / "model.onnx")
    with pytest.raises(FileNotFoundError, match=r"^runs/no/model: no such file or folder$"):
        atrous.load("runs/no/model")  # not a Hub repo id either
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"the default\): run `atrous demo` first"):
        load_segmenter("runs/demo/model")


def test_load_segmenter_applies_the_output_stride_to_the_loaded_model(model, tmp_path):
    folder = saved_folder(model, tmp_path)
    segmenter = load_segmenter(folder, atrous.inference.strategies.InferenceConfig(8))
    assert segmenter.network.output_stride == 8 and segmenter.network.config.output_stride == 8
    assert segmenter.inference.output_stride is None  # applied once, to the model
    assert tuple(segmenter.class_names) == CLASSES and segmenter.num_classes == 3
