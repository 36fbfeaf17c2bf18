"""Evaluation protocols: the official TF canvas (mean-pixel/ignore padding, image pooling over the
whole padded canvas, ADE20K's resize), torchvision's and mmsegmentation's resizes, and
``atrous eval --protocol official``. Expected values are computed by hand from the official
rules (research/deeplab ``input_preprocess.py``, ``preprocess_utils.resize_to_range``,
``model.py``'s ``scale_dimension``; torchvision's ``resize``; ``mmcv.rescale_size``)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_bn
from PIL import Image
from torch import nn
from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights
from torchvision.transforms.functional import resize as tv_resize

import atrous
from atrous.cli import main
from atrous.data.palettes import VOC_CLASSES
from atrous.evaluation.protocols import (
    ATROUS,
    EvalProtocol,
    mmseg_size,
    official_protocol,
    prepare_pair,
    protocol_probabilities,
    tf_resize_image,
    tf_resize_label,
    tf_resize_to_range,
    tf_scaled_size,
    torchvision_size,
)
from atrous.hub.registry import REGISTRY
from atrous.inference.strategies import InferenceConfig
from atrous.models.layers import ImagePool

CANVAS = (129, 129)


class PoolingNetwork(nn.Module):
    """Two-class logits at the input's size: class 0 is the image pooling (an ASPP
    :class:`ImagePool` with the training crop's kernel) of channel 0, class 1 a constant."""

    output_stride, align_corners = 1, True

    def __init__(self, kernel: tuple[int, int], threshold: float) -> None:
        super().__init__()
        self.pool, self.threshold = ImagePool(kernel), threshold
        self.inputs: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(tuple(x.shape[-2:]))
        pooled = self.pool(x[:, :1])
        pooled = F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([pooled, torch.full_like(pooled, self.threshold)], 1)


def tf_pair(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return prepare_pair(image, mask, EvalProtocol("tf", CANVAS), [0.5] * 3, [0.5] * 3, 255)


def test_official_pooling_averages_the_whole_padded_canvas_and_the_default_the_image():
    """A 65×65 image of constant normalised value v: the official eval pools over the 129×129
    canvas (v·65²/129², the padding is the mean pixel, 0), atrous over the image (v)."""
    value = 200  # uint8; normalised with mean = std = 0.5: v = 200/127.5 - 1
    v = value / 127.5 - 1
    image = torch.full((3, 65, 65), value, dtype=torch.uint8)
    mask = torch.zeros(65, 65, dtype=torch.int64)
    threshold = 0.2  # between v·65²/129² (0.145) and v (0.569): the decisions differ
    network = PoolingNetwork(kernel=(33, 33), threshold=threshold).eval()  # 513/16 + 1 style

    canvas, _ = tf_pair(image, mask)
    official = protocol_probabilities(network, canvas[None], EvalProtocol("tf", CANVAS))
    atrous_image, _ = prepare_pair(image, mask, ATROUS, [0.5] * 3, [0.5] * 3, 255)
    default = protocol_probabilities(network, atrous_image[None], ATROUS)

    pooled_official = v * 65**2 / 129**2
    sigmoid = torch.sigmoid(torch.tensor([pooled_official - threshold, v - threshold]))
    assert torch.allclose(official[0, 0, :65, :65], sigmoid[0].expand(65, 65), atol=1e-5)
    assert torch.allclose(default[0, 0], sigmoid[1].expand(65, 65), atol=1e-5)
    assert (official[0, :, :65, :65].argmax(0) == 1).all() and (default[0].argmax(0) == 0).all()
    assert network.pool.kernel_size == (33, 33)  # restored after the official pass


def test_official_pooling_is_global_over_the_canvas_at_every_scale_and_flip():
    """On a random image the training-crop kernel would pool locally on larger inputs; the
    official eval pools the whole (scaled) canvas, whose mean is the canvas mean."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (3, 40, 50), dtype=np.uint8))
    canvas, _ = tf_pair(image, torch.zeros(40, 50, dtype=torch.int64))
    network = PoolingNetwork(kernel=(33, 33), threshold=0.0).eval()
    config = InferenceConfig(scales=(0.5, 1.75), flip=True)
    probs = protocol_probabilities(network, canvas[None], EvalProtocol("tf", CANVAS), config)
    assert network.inputs == [(65, 65)] * 2 + [(225, 225)] * 2  # int((129 - 1)·s + 1)
    total = torch.zeros(())
    for scale in (0.5, 1.75):
        size = (tf_scaled_size(129, scale),) * 2
        scaled = F.interpolate(canvas[None, :1], size=size, mode="bilinear", align_corners=True)
        total = total + 2 * torch.sigmoid(scaled.mean())  # the flip pools the same mean
    assert torch.allclose(probs[0, 0], (total / 4).expand(*CANVAS), atol=1e-5)


def test_canvas_padding_is_the_mean_pixel_for_images_and_ignore_for_labels():
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.integers(0, 256, (3, 20, 24), dtype=np.uint8))
    mask = torch.from_numpy(rng.integers(0, 21, (20, 24)))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    padded, label = prepare_pair(image, mask, EvalProtocol("tf", (33, 49)), mean, std, 255)
    assert padded.shape == (3, 33, 49) and label.shape == (33, 49)
    pixels = padded * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    assert torch.allclose(pixels[:, :20, :24] * 255, image.float(), atol=1e-3)
    mean_pixel = torch.tensor(mean).view(3, 1) * 255
    assert torch.allclose(pixels[:, 20:, :].reshape(3, -1) * 255, mean_pixel, atol=1e-3)
    assert torch.allclose(pixels[:, :, 24:].reshape(3, -1) * 255, mean_pixel, atol=1e-3)
    assert torch.equal(label[:20, :24], mask)
    assert (label[20:] == 255).all() and (label[:, 24:] == 255).all()
    with pytest.raises(ValueError, match=r"does not fit the official 16×16.*--protocol atrous"):
        prepare_pair(image, mask, EvalProtocol("tf", (16, 16)), mean, std, 255)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((375, 500), (385, 513)),  # 513/500·375 = 384.75 → 384 → 16·24+1
        ((683, 512), (513, 385)),
        ((300, 200), (513, 353)),  # 200·513/300 = 342 → 353
        ((256, 256), (513, 513)),  # the min-side rule gives 513 on both sides
        ((10, 20), (257, 513)),  # small images grow to the canvas
    ],
)
def test_ade20k_is_resized_so_its_longest_side_is_513(size, expected):
    assert tf_resize_to_range(*size, 513, 16) == expected


def test_ade20k_resize_keeps_the_aspect_and_fits_the_canvas_on_random_sizes():
    rng = np.random.default_rng(2)
    for height, width in rng.integers(50, 2000, (200, 2)):
        h, w = tf_resize_to_range(int(height), int(width), 513, 16)
        assert max(h, w) == 513 and (h - 1) % 16 == 0 and (w - 1) % 16 == 0
        exact = 513 * min(height, width) / max(height, width)  # the proportional short side
        assert -1 < min(h, w) - exact < 16  # floored, then rounded up to 16·k+1


def test_ade20k_pair_is_resized_then_padded():
    protocol = official_protocol("tf", "ade20k")
    image = torch.zeros(3, 10, 20, dtype=torch.uint8)
    mask = torch.arange(20).repeat(10, 1)  # column index as the label
    padded, label = prepare_pair(image, mask, protocol, [0.5] * 3, [0.5] * 3, 255)
    assert padded.shape == (3, 513, 513) and (label[257:] == 255).all()
    # nearest neighbour with aligned corners: column j reads round(j·19/512)
    expected = torch.floor(torch.arange(513) * (19 / 512) + 0.5).long()
    assert torch.equal(label[0], expected) and torch.equal(label[256], expected)


def test_ade20k_resizes_equal_tensorflows_own():
    """Labels: TF's nearest neighbour with aligned corners; images: its aligned bilinear resize
    (fixture made with TensorFlow 2.21: tests/fixtures/protocols/README.md)."""
    fixture = np.load(Path(__file__).parents[1] / "fixtures" / "protocols" / "tf_resize.npz")
    for i in range(3):
        size = tuple(int(n) for n in fixture[f"size{i}"])
        mask = torch.from_numpy(fixture[f"mask{i}"].astype(np.int64))
        assert np.array_equal(tf_resize_label(mask, size).numpy(), fixture[f"nearest{i}"])
        image = torch.from_numpy(fixture[f"image{i}"][0]).permute(2, 0, 1)
        official = torch.from_numpy(fixture[f"bilinear{i}"][0]).permute(2, 0, 1)
        assert torch.allclose(tf_resize_image(image, size), official, atol=1e-6)


def test_torchvision_and_mmseg_sizes():
    assert torchvision_size(375, 500, 520) == (520, 693)  # int(520·500/375)
    assert torchvision_size(500, 333, 520) == (780, 520)
    assert mmseg_size(375, 500, (2048, 512)) == (512, 683)  # 512/375 bound, rounded half up
    assert mmseg_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert mmseg_size(375, 500, (2048, 512), 0.5) == (256, 341)  # the scale's int(512·0.5)
    image = torch.zeros(3, 375, 500, dtype=torch.uint8)
    mask = torch.zeros(375, 500, dtype=torch.int64)
    protocol = official_protocol("torchvision", "voc")
    resized, label = prepare_pair(image, mask, protocol, [0.5] * 3, [0.5] * 3, 255)
    assert resized.shape[-2:] == label.shape == (520, 693)


def test_torchvision_protocol_equals_torchvisions_own_preset_within_a_grey_level():
    """torchvision's weights' preset (PIL, antialiased bilinear resize of the shorter side to
    520, then normalisation) against atrous's torch resize: the same sizes, pixels within one
    uint8 step."""
    preset = DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.transforms()
    protocol = official_protocol("torchvision", "voc")
    rng = np.random.default_rng(4)
    for height, width in [(97, 131), (140, 90)]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = preset(Image.fromarray(pixels))
        image = torch.from_numpy(pixels).permute(2, 0, 1)
        mask = torch.zeros(height, width, dtype=torch.int64)
        ours, label = prepare_pair(image, mask, protocol, preset.mean, preset.std, 255)
        assert ours.shape == expected.shape and label.shape == expected.shape[-2:]
        grey_levels = (ours - expected).abs() * torch.tensor(preset.std).view(3, 1, 1) * 255
        assert grey_levels.max() <= 1.01
    for height, width in rng.integers(20, 3000, (20, 2)).tolist():
        resized = tv_resize(torch.zeros(1, height, width), [520])
        assert tuple(resized.shape[-2:]) == torchvision_size(height, width, 520)


def test_mmseg_runs_the_test_scale_and_scores_at_the_original_size():
    network = PoolingNetwork(kernel=(33, 33), threshold=0.0).eval()
    images = torch.randn(1, 3, 20, 24)
    protocol = official_protocol("mmseg", "voc")
    probs = protocol_probabilities(network, images, protocol, InferenceConfig(scales=(1, 0.5)))
    assert network.inputs == [mmseg_size(20, 24, (2048, 512)), mmseg_size(20, 24, (2048, 512), 0.5)]
    assert probs.shape == (1, 2, 20, 24)
    with pytest.raises(ValueError, match="runs whole images"):
        protocol_probabilities(network, images, protocol, InferenceConfig(window=16))


def test_every_registry_entry_records_its_protocol():
    sources = {entry.measured_with.source for entry in REGISTRY.values()}
    assert sources == {"tf", "torchvision", "mmseg"}
    cityscapes = REGISTRY["tf:xception65_cityscapes_trainfine"].measured_with
    assert cityscapes.canvas == (1025, 2049) and cityscapes.resize_range is None
    assert REGISTRY["tf:xception65_ade20k_train"].measured_with.resize_range == 513
    assert REGISTRY["mmseg:deeplabv3plus_r50_cityscapes"].measured_with.test_scale == (2048, 1024)


def test_eval_protocol_official_on_a_folder_fetched_from_a_tf_entry(voc_tree, tmp_path, capsys):
    """A tiny model saved as a fetched TF entry's folder (its source.json names the entry):
    ``--protocol official`` runs the 513×513 canvas and scores exactly the labelled pixels."""
    model = atrous.create_model(
        "deeplabv3_mobilenetv2",
        num_classes=21,
        width_multiplier=0.25,
        image_pool_crop_size=(513, 513),
    ).eval()
    folder = tmp_path / "fetched"
    model.save_pretrained(folder, class_names=VOC_CLASSES)
    root = voc_tree[0] / "VOCdevkit" / "VOC2012"
    command = ["eval", "--model", str(folder), "--data.dataset", "voc", "--data.root", str(root)]
    report_path = tmp_path / "e.json"
    assert main([*command, "--protocol", "official", "--output", str(report_path)]) == 2
    assert "--protocol official needs a published checkpoint" in capsys.readouterr().err
    (folder / "source.json").write_text(json.dumps({"name": "tf:mobilenetv2_coco_voc_trainaug"}))
    assert main([*command, "--protocol", "official", "--output", str(report_path)]) == 0
    assert "padded to 513×513" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["protocol"].startswith("official TF: padded to 513×513")
    val = [root / "SegmentationClass" / f"{name}.png" for name in ("2007_000004", "2007_000005")]
    labelled = sum(int((np.asarray(Image.open(path)) != 255).sum()) for path in val)
    assert np.asarray(report["confusion_matrix"]).sum() == labelled  # padding is ignored


def test_a_deeplab_pools_the_whole_canvas_officially_and_its_aligned_input_by_default():
    """A tiny DeepLab built for 129×129 crops (pooling kernel 9×9 at OS16), on a 65×65 image:
    the official pass pools the 9×9 feature map of the padded canvas, the default the 5×5 map
    of the image."""
    torch.manual_seed(0)
    model = atrous.create_model(
        "deeplabv3_mobilenetv2", num_classes=3, width_multiplier=0.25, image_pool_crop_size=CANVAS
    ).eval()
    randomize_bn(model)  # trained-like statistics, so that pooling shows in the logits
    pool = next(module for module in model.modules() if isinstance(module, ImagePool))
    seen = []
    pool.register_forward_hook(lambda module, args, output: seen.append((args[0], output)))
    image = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (3, 65, 65), dtype=np.uint8))
    mask = torch.zeros(65, 65, dtype=torch.int64)
    mean, std = model.config.mean, model.config.std
    canvas, _ = prepare_pair(image, mask, EvalProtocol("tf", CANVAS), mean, std, 255)
    official = protocol_probabilities(model, canvas[None], EvalProtocol("tf", CANVAS))
    plain, _ = prepare_pair(image, mask, ATROUS, mean, std, 255)
    default = protocol_probabilities(model, plain[None], ATROUS)
    (features, pooled), (image_features, image_pooled) = seen
    assert features.shape[-2:] == (9, 9) and image_features.shape[-2:] == (5, 5)
    assert torch.allclose(pooled, features.mean((2, 3), keepdim=True), atol=1e-6)
    assert torch.allclose(image_pooled, image_features.mean((2, 3), keepdim=True), atol=1e-6)
    assert not torch.allclose(official[..., :65, :65], default, atol=1e-3)


def test_official_ade20k_protocol_follows_the_checkpoints_own_crop() -> None:
    """The ADE20K MobileNetV2 is evaluated at 257 (resized and padded there), Xception-65 at 513."""
    mnv2 = REGISTRY["tf:mobilenetv2_ade20k_train"].measured_with
    assert (mnv2.canvas, mnv2.resize_range) == ((257, 257), 257)
    x65 = REGISTRY["tf:xception65_ade20k_train"].measured_with
    assert (x65.canvas, x65.resize_range) == ((513, 513), 513)
