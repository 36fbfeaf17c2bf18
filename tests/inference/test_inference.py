import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous.inference.strategies import (
    InferenceConfig,
    aligned_size,
    segment,
    sliding_window,
    window_starts,
)
from atrous.models.layers import resize
from atrous.models.zoo import create_model


def as_network(module: nn.Module) -> nn.Module:
    """``module`` with the inference contract's attributes: no stated output stride (inputs run
    as given) and aligned corners."""
    module.output_stride, module.align_corners = None, True
    return module


def pointwise_net(seed: int = 0) -> nn.Module:
    """A network with a 1-pixel receptive field: 1×1 conv, tanh, 1×1 conv."""
    torch.manual_seed(seed)
    return as_network(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Tanh(), nn.Conv2d(8, 5, 1)).eval())


def test_flip_changes_nothing_for_a_mirror_symmetric_network():
    conv = as_network(nn.Conv2d(3, 4, 3, padding=1, bias=False))
    with torch.no_grad():
        conv.weight.copy_(conv.weight + conv.weight.flip(-1))  # symmetric left-right
    images = torch.randn(2, 3, 33, 47)
    plain = segment(conv, images)
    flipped = segment(conv, images, InferenceConfig(flip=True))
    torch.testing.assert_close(flipped, plain, atol=1e-6, rtol=0)


def test_flip_averages_the_mirrored_pass():
    net = as_network(nn.Conv2d(3, 4, 3, padding=1).eval())
    images = torch.randn(1, 3, 21, 30)
    expected = (net(images).softmax(1) + net(images.flip(-1)).softmax(1).flip(-1)) / 2
    result = segment(net, images, InferenceConfig(flip=True))
    torch.testing.assert_close(result, expected.detach(), atol=1e-6, rtol=0)
    assert not torch.allclose(result, net(images).softmax(1), atol=1e-3)


def test_multi_scale_of_a_uniform_image_equals_one_scale():
    """A pointwise network sees the same colour at every scale: every pass agrees."""
    net = pointwise_net()
    images = torch.randn(2, 3, 1, 1).expand(2, 3, 40, 52).contiguous()
    single = segment(net, images)
    multi = segment(net, images, InferenceConfig(scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)))
    torch.testing.assert_close(multi, single, atol=1e-6, rtol=0)


def test_multi_scale_averages_resized_probabilities():
    net = as_network(nn.Conv2d(3, 4, 3, padding=1).eval())
    images = torch.randn(1, 3, 40, 40)
    half = resize(net(resize(images, (20, 20))).softmax(1), (40, 40))
    expected = (net(images).softmax(1) + half) / 2
    result = segment(net, images, InferenceConfig(scales=(0.5, 1.0)))
    torch.testing.assert_close(result, expected.detach(), atol=1e-6, rtol=0)
    assert result.shape == (1, 4, 40, 40)
    torch.testing.assert_close(result.sum(1), torch.ones(1, 40, 40))


@pytest.mark.parametrize("size", [(150, 97), (40, 31)])
def test_sliding_window_equals_whole_image_for_a_small_receptive_field(size):
    net = pointwise_net()
    images = torch.randn(2, 3, *size)
    whole = segment(net, images)
    windowed = segment(net, images, InferenceConfig(window=64, overlap=0.25, window_batch=3))
    torch.testing.assert_close(windowed, whole, atol=1e-6, rtol=0)


def test_sliding_window_runs_bounded_batches_covering_every_pixel():
    seen = []

    def net(crops):
        seen.append(tuple(crops.shape))
        return torch.zeros(crops.shape[0], 2, *crops.shape[2:])

    sliding_window(net, torch.randn(1, 3, 200, 130), window=64, overlap=0.5, window_batch=2)
    assert all(shape[0] <= 2 and shape[2:] == (64, 64) for shape in seen)
    assert sum(shape[0] for shape in seen) == len(window_starts(200, 64, 32)) * len(
        window_starts(130, 64, 32)
    )
    assert window_starts(200, 64, 32) == [0, 32, 64, 96, 128, 136]
    assert window_starts(50, 64, 32) == [0]


def test_eval_output_stride_runs_at_that_stride_and_restores_it():
    model = create_model(
        "deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.5, output_stride=16
    ).eval()
    images = torch.randn(1, 3, 65, 65)
    result = segment(model, images, InferenceConfig(output_stride=8))
    assert model.output_stride == 16
    model.set_output_stride(8)
    with torch.no_grad():
        expected = model(images).softmax(1)
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="fixed output stride"):
        segment(pointwise_net(), images, InferenceConfig(output_stride=8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scales": ()}, "scales"),
        ({"scales": (0.0,)}, "scales"),
        ({"window": 8}, "window"),
        ({"overlap": 1.0}, "overlap"),
        ({"output_stride": 12}, "output_stride"),
    ],
)
def test_bad_inference_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InferenceConfig(**kwargs)


def test_aligned_sizes_follow_the_output_stride_and_corner_mode():
    assert aligned_size(128, 16, True) == 129
    assert aligned_size(129, 16, True) == 129
    assert aligned_size(10, 16, True) == 17
    assert aligned_size(128, 16, False) == 128
    assert aligned_size(130, 8, False) == 136


def test_whole_images_run_padded_to_an_aligned_size_and_cut_back():
    """128×100 at OS16 runs as 129×113 (mean-pixel padding) and the extra rows are cut off."""
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.5).eval()
    with torch.no_grad():
        model.classifier.weight *= 1000  # logits of a trained model's size, not ~0.01
    images = torch.randn(1, 3, 128, 100)
    with torch.no_grad():
        expected = model(F.pad(images, (0, 13, 0, 1)))[..., :128, :100].softmax(1)
        unaligned = model(images).softmax(1)
    torch.testing.assert_close(segment(model, images), expected, atol=1e-6, rtol=0)
    plain = segment(model, images, InferenceConfig(align=False))
    torch.testing.assert_close(plain, unaligned, atol=1e-6, rtol=0)
    assert (plain - expected).abs().max() > 1e-4  # unaligned inputs shift the output
