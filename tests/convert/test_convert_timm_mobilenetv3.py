"""Conversions that came with the timm and MobileNetV3 backbones: torchvision's
``deeplabv3_mobilenet_v3_large`` and smp DeepLabV3Plus with ``tu-*`` (timm) encoders give the same
logits (random weights, randomised BN statistics, compared within 1e-4 of the logits' scale)."""

import pytest
import torch
from helpers import randomize_bn
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

from atrous.convert.torch_models import from_smp, from_torchvision
from atrous.hub.registry import REGISTRY

smp = pytest.importorskip("segmentation_models_pytorch")
pytest.importorskip("timm", reason="smp tu-* encoders need timm")

RELATIVE_TOLERANCE = 1e-4


def assert_same_logits(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= RELATIVE_TOLERANCE * theirs.abs().max()


def test_torchvision_deeplabv3_mobilenet_v3_large_gives_the_same_logits():
    torch.manual_seed(0)
    reference = deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=7, aux_loss=True
    )
    randomize_bn(reference)
    reference.eval()
    model = from_torchvision(reference)
    config = model.config
    assert (config.backbone, config.decoder, config.output_stride) == (
        "mobilenetv3_large",
        False,
        16,
    )
    assert model.aspp.rates == (12, 24, 36)
    x = torch.randn(1, 3, 49, 67)
    with torch.no_grad():
        expected = reference(x)["out"]
        assert_same_logits(model(x), expected)
        assert_same_logits(from_torchvision(reference.state_dict())(x), expected)
        model.set_output_stride(8)  # the same weights at OS8
        assert model(x).shape == (1, 7, 49, 67)
    with pytest.raises(ValueError, match="auxiliary classifier on a stride-8 stage"):
        from_torchvision(reference, aux_head=True)


def test_registry_has_torchvision_mobilenet_v3_with_its_published_figure():
    entry = REGISTRY["torchvision:deeplabv3_mnv3_large_coco"]
    assert entry.backbone == "mobilenetv3_large" and entry.dataset == "voc"
    assert entry.scores[0].miou == pytest.approx(60.3)
    assert entry.scores[0].protocol.output_stride == 16


@pytest.mark.parametrize(("encoder", "output_stride"), [("resnet18", 16), ("efficientnet_b0", 8)])
def test_smp_timm_encoder_gives_the_same_logits(tmp_path, encoder, output_stride):
    torch.manual_seed(0)
    reference = smp.DeepLabV3Plus(
        encoder_name=f"tu-{encoder}",
        encoder_weights=None,
        classes=5,
        encoder_output_stride=output_stride,
    )
    randomize_bn(reference)
    reference.eval()
    model = from_smp(reference)
    assert model.config.backbone == f"timm:{encoder}"
    assert model.config.output_stride == output_stride
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = reference(x)
        assert_same_logits(model(x), expected)
        reference.save_pretrained(tmp_path)  # config.json names the encoder
        assert_same_logits(from_smp(str(tmp_path))(x), expected)
    with pytest.raises(ValueError, match=r"hold a timm \(tu-\*\) encoder but not its name"):
        from_smp(reference.state_dict())
