"""Test-time augmentation: flips and the 8 symmetries of the square, against predictions
transformed and averaged by hand, whole and in sliding windows, on a non-square input."""

import numpy as np
import pytest
import torch
from helpers import randomize_bn, write_rgb

from atrous.cli import main
from atrous.data.io import read_mask
from atrous.evaluation.protocols import EvalProtocol, protocol_probabilities
from atrous.hub.load import load_segmenter
from atrous.inference.strategies import (
    InferenceConfig,
    align_input,
    aligned_size,
    describe_inference,
    segment,
    sliding_window,
)
from atrous.models.layers import resize
from atrous.models.zoo import create_model

#: The dihedral group D4 written out by hand as (transform, its inverse) on (N, C, H, W).
D4 = [
    (lambda x: x, lambda y: y),
    (lambda x: x.rot90(1, (2, 3)), lambda y: y.rot90(-1, (2, 3))),
    (lambda x: x.rot90(2, (2, 3)), lambda y: y.rot90(-2, (2, 3))),
    (lambda x: x.rot90(3, (2, 3)), lambda y: y.rot90(-3, (2, 3))),
    (lambda x: x.flip(3), lambda y: y.flip(3)),  # left-right
    (lambda x: x.flip(2), lambda y: y.flip(2)),  # up-down
    (lambda x: x.transpose(2, 3), lambda y: y.transpose(2, 3)),  # main diagonal
    (lambda x: x.flip(2, 3).transpose(2, 3), lambda y: y.flip(2, 3).transpose(2, 3)),  # anti
]


class Recorder(torch.nn.Module):
    """The model, recording the input sizes it ran at."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []
        self.output_stride, self.align_corners = model.output_stride, model.align_corners

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(images.shape[-2:]))
        return self.model(images)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25)
    randomize_bn(net)
    return net.eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(1, 3, 50, 70, generator=torch.Generator().manual_seed(1))


def whole(model, view):
    """One whole-image pass as segment runs it: padded to its aligned size, cut back."""
    height, width = view.shape[-2:]
    return model(align_input(model, view))[..., :height, :width].softmax(1)


@torch.no_grad()
def by_hand(model, images, transforms, run=whole):
    return sum(undo(run(model, do(images))) for do, undo in transforms) / len(transforms)


def test_d4_is_the_mean_of_the_eight_transformed_predictions(model, images):
    recorder = Recorder(model)
    result = segment(recorder, images, InferenceConfig(tta="d4"))
    expected = by_hand(model, images, D4)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=0)
    plain = segment(model, images)
    assert (result - plain).abs().max() > 1e-3  # the views differ: the average is not a no-op
    # Quarter turns of the 50×70 input run at 70×50, each side padded to its own OS·k+1 size.
    tall, wide = (aligned_size(n, 16, True) for n in (70, 50))
    assert sorted(set(recorder.sizes)) == sorted({(wide, tall), (tall, wide)})
    assert len(recorder.sizes) == 8 and InferenceConfig(tta="d4").passes == 8


def test_d4_in_sliding_windows(model, images):
    config = InferenceConfig(tta="d4", window=32, overlap=0.25, window_batch=3)

    def windows(net, view):
        return sliding_window(net, view, 32, 0.25, 3)

    result = segment(model, images, config)
    torch.testing.assert_close(result, by_hand(model, images, D4, windows), atol=1e-5, rtol=0)


def test_d4_composes_with_scales(model, images):
    config = InferenceConfig(tta="d4", scales=(0.75, 1.0))
    scaled = resize(images, (38, 52))  # round(50·0.75), round(70·0.75)
    small = resize(by_hand(model, scaled, D4), (50, 70))
    expected = (small + by_hand(model, images, D4)) / 2
    torch.testing.assert_close(segment(model, images, config), expected, atol=1e-5, rtol=0)


def test_vflip_and_hvflip_average_their_flips(model, images):
    vflip = [D4[0], D4[5]]
    flips = [D4[0], D4[4], D4[5], D4[2]]  # identity, left-right, up-down, both (a half turn)
    result = segment(model, images, InferenceConfig(tta="vflip"))
    torch.testing.assert_close(result, by_hand(model, images, vflip), atol=1e-5, rtol=0)
    result = segment(model, images, InferenceConfig(tta="hvflip"))
    torch.testing.assert_close(result, by_hand(model, images, flips), atol=1e-5, rtol=0)


def test_hflip_is_the_flip_option(model, images):
    """``tta: hflip`` and ``flip: true`` run the same passes in the same order: equal bits."""
    hflip = segment(model, images, InferenceConfig(tta="hflip"))
    assert torch.equal(hflip, segment(model, images, InferenceConfig(flip=True)))
    torch.testing.assert_close(hflip, by_hand(model, images, D4[:1] + D4[4:5]), atol=1e-6, rtol=0)
    assert InferenceConfig(flip=True).augmentation == "hflip"
    assert InferenceConfig(flip=True, tta="vflip").augmentation == "hvflip"
    assert InferenceConfig(flip=True, tta="d4").passes == 8
    assert describe_inference(InferenceConfig(tta="hflip")).endswith("flip on")
    assert describe_inference(InferenceConfig(tta="d4", scales=(1, 2))).endswith("tta d4")
    with pytest.raises(ValueError, match="tta must be one of"):
        InferenceConfig(tta="rot")


def test_a_published_protocol_runs_the_same_views(model, images):
    """mmseg's protocol (no padding; here its test scale keeps the 50×70 size) averages the
    same eight views."""
    protocol = EvalProtocol("mmseg", test_scale=(70, 50))
    result = protocol_probabilities(model, images, protocol, InferenceConfig(tta="d4"))
    expected = by_hand(model, images, D4, lambda net, view: net(view).softmax(1))
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_predict_takes_tta_from_the_command_line(tiny_run, tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    write_rgb(tmp_path / "photo.png", image)
    command = ["predict", str(tmp_path / "photo.png"), "--model", str(tiny_run / "best.pt")]
    options = ["--output_dir", str(tmp_path / "out"), "--overlays", "false", "--progress", "false"]
    assert main([*command, "--inference.tta", "d4", *options]) == 0
    expected = load_segmenter(tiny_run / "best.pt", InferenceConfig(tta="d4"))(image)
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "masks" / "photo.png"), expected)
