"""Per-pixel confidence and entropy maps: from the probabilities the labels come from, within
their bounds, and written by ``atrous predict --save_confidence --save_entropy``."""

import math

import numpy as np
import pytest
import torch
from helpers import decisive_model
from PIL import Image

from atrous.apps.serve import confidence_image
from atrous.cli import main
from atrous.inference.regions import decide, segment_labels, segment_regions
from atrous.inference.strategies import InferenceConfig


@pytest.fixture(scope="module")
def model():
    return decisive_model(torch.randn(1, 3, 65, 97), pooling=True, num_classes=5)


def test_maps_stay_within_their_bounds():
    logits = torch.randn(2, 7, 33, 41) * torch.logspace(-2, 1, 41)  # flat to peaked
    decision = decide(logits.softmax(1), maps=["confidence", "entropy"])
    confidence, entropy = (decision.maps[k].float() for k in ("confidence", "entropy"))
    assert decision.maps["confidence"].dtype == torch.float16 and confidence.shape == (2, 33, 41)
    assert confidence.min() >= 1 / 7 - 1e-3 and confidence.max() <= 1
    assert entropy.min() >= 0 and entropy.max() <= math.log(7) + 1e-3
    assert confidence.min() < 0.2 and confidence.max() > 0.99  # both ends are reached
    assert torch.equal(decision.labels, logits.argmax(1).byte())


def test_confidence_is_the_softmax_maximum_of_the_eager_logits(model):
    image = torch.randn(1, 3, 65, 97)  # OS·k+1 on both sides: segment() pads nothing
    with torch.no_grad():
        probabilities = model(image).softmax(1)
    decision = segment_labels(model, image, maps=["confidence", "entropy"])
    expected = probabilities.amax(1)
    assert expected.min() < 0.9  # a range of confidences, not all certain
    torch.testing.assert_close(decision.maps["confidence"].float(), expected, atol=1e-3, rtol=1e-3)
    entropy = -(probabilities * probabilities.clamp_min(1e-30).log()).sum(1)
    torch.testing.assert_close(decision.maps["entropy"].float(), entropy, atol=2e-3, rtol=1e-3)


@pytest.mark.slow
def test_maps_come_from_the_same_probabilities_region_by_region(model):
    image = torch.randn(1, 3, 129, 161)
    config = InferenceConfig(max_pixels=97 * 97)
    decision = segment_labels(model, image, config, maps=["confidence", "entropy"])
    expected = decide(segment_regions(model, image, config), maps=["confidence", "entropy"])
    assert torch.equal(decision.labels, expected.labels)
    for name in ("confidence", "entropy"):
        assert torch.equal(decision.maps[name], expected.maps[name])


def test_multilabel_maps_are_per_class():
    p = torch.rand(1, 3, 8, 9)
    decision = decide(p, multilabel=True, maps=["confidence", "entropy"])
    assert decision.maps["confidence"].shape == (1, 3, 8, 9)
    assert decision.maps["confidence"].float().min() >= 0.5
    assert decision.maps["entropy"].float().max() <= math.log(2) + 1e-3
    with pytest.raises(ValueError, match="unknown maps"):
        decide(p, maps=["certainty"])


def test_the_page_shows_chance_black_and_certainty_white():
    grey = confidence_image(np.array([[0.25, 1.0], [0.625, 0.1]], np.float16), 4)
    assert grey.dtype == np.uint8 and grey.tolist() == [[0, 255], [128, 0]]


@pytest.mark.slow
def test_predict_writes_float16_maps_beside_the_masks(model, tmp_path):
    model.save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), np.uint8)).save(tmp_path / "a.png")
    command = ["predict", str(tmp_path / "a.png"), "--model", str(tmp_path / "model")]
    command += ["--output_dir", str(tmp_path / "out"), "--progress", "false"]
    command += ["--save_confidence", "true", "--save_entropy", "true", "--pipeline.workers", "0"]
    assert main(command) == 0
    confidence = np.load(tmp_path / "out" / "confidence" / "a.npy")
    entropy = np.load(tmp_path / "out" / "entropy" / "a.npy")
    assert confidence.dtype == entropy.dtype == np.float16
    assert confidence.shape == entropy.shape == (70, 90)
    assert confidence.min() >= 1 / 5 - 1e-3 and confidence.max() <= 1
    assert entropy.min() >= 0 and entropy.max() <= math.log(5) + 1e-3
    mask = np.array(Image.open(tmp_path / "out" / "masks" / "a.png"))
    assert mask.shape == (70, 90)
