"""Whole-model conversion: torchvision DeepLabV3 and smp DeepLabV3Plus give the same logits."""

import pytest
import torch
import torchvision
from helpers import no_download, randomize_bn
from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights, deeplabv3_resnet50

from atrous import load
from atrous.convert.torch_models import convert, from_smp, from_torchvision
from atrous.data.palettes import VOC_CLASSES, VOC_PALETTE


@pytest.fixture
def smp():
    """segmentation_models_pytorch, for the tests that convert its models (only they skip)."""
    return pytest.importorskip("segmentation_models_pytorch")


TOLERANCE = 1e-4
#: The auxiliary head sits on layer3: fewer layers, so less rounding than the logits.
AUX_TOLERANCE = 1e-5


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def torchvision_model(num_classes: int = 21):
    torch.manual_seed(0)
    model = deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=True
    )
    randomize_bn(model)
    return model.eval()


@pytest.mark.slow
def test_torchvision_deeplabv3_resnet50_gives_the_same_logits():
    reference = torchvision_model(num_classes=7)
    model = from_torchvision(reference)
    config = model.config
    assert (config.backbone, config.decoder, config.output_stride) == ("resnet50", False, 8)
    assert model.aspp.rates == (12, 24, 36) and not model.training
    x = torch.randn(1, 3, 49, 67)
    with torch.no_grad():
        assert max_abs_diff(model(x), reference(x)["out"]) <= TOLERANCE
        model.set_output_stride(16)  # the same weights at OS16: rates follow the paper's rule
        assert model.aspp.rates == (6, 12, 18) and model(x).shape == (1, 7, 49, 67)


@pytest.mark.slow
def test_torchvision_aux_classifier_converts_into_the_aux_head(tmp_path):
    """aux_loss=True weights: our forward_train's "aux" is torchvision's model(x)["aux"]."""
    reference = torchvision_model(num_classes=7)
    model = from_torchvision(reference, aux_head=True)
    assert model.config.aux_head and model.aux_head[0].out_channels == 256
    x = torch.randn(1, 3, 49, 67)
    with torch.no_grad():
        expected = reference(x)
        outputs = model.forward_train(x)
    assert max_abs_diff(outputs["aux"], expected["aux"]) <= AUX_TOLERANCE
    assert max_abs_diff(outputs["out"], expected["out"]) <= TOLERANCE
    assert from_torchvision(reference).aux_head is None  # dropped unless asked for
    # A folder to fine-tune from keeps the head; a checkpoint without one is a clear error.
    torch.save(reference.state_dict(), tmp_path / "deeplabv3.pth")
    start = load(
        convert(
            str(tmp_path / "deeplabv3.pth"), "torchvision", str(tmp_path / "start"), aux_head=True
        )
    )
    assert start.config.aux_head
    with torch.no_grad():
        assert max_abs_diff(start.forward_train(x)["aux"], expected["aux"]) <= AUX_TOLERANCE
    no_aux = {k: v for k, v in reference.state_dict().items() if not k.startswith("aux_")}
    with pytest.raises(ValueError, match=r"no auxiliary classifier \(aux_classifier"):
        from_torchvision(no_aux, aux_head=True)
    with pytest.raises(ValueError, match="aux_head applies to torchvision sources only"):
        convert("x", "smp", str(tmp_path), aux_head=True)


@pytest.mark.slow
def test_published_torchvision_weights_convert_from_the_hub_cache_offline(tmp_path, monkeypatch):
    """The torchvision weights name goes through torchvision's own cache; VOC names come along."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    weights = DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1
    reference = torchvision_model()
    cached = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    output = convert(str(weights), "torchvision", str(tmp_path / "voc"))
    model = load(output)
    assert model.class_names == VOC_CLASSES and model.palette == VOC_PALETTE
    x = torch.randn(1, 3, 49, 49)
    with torch.no_grad():
        assert max_abs_diff(model(x), reference(x)["out"]) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize(
    ("encoder", "output_stride", "rates"),
    [("resnet50", 16, (12, 24, 36)), ("resnet50", 8, (6, 9, 12))],
)
def test_smp_deeplabv3plus_gives_the_same_logits(encoder, output_stride, rates, smp):
    torch.manual_seed(0)
    reference = smp.DeepLabV3Plus(
        encoder,
        encoder_weights=None,
        encoder_output_stride=output_stride,
        decoder_atrous_rates=rates,
        classes=5,
    )
    randomize_bn(reference)
    reference.eval()
    model = from_smp(reference)
    assert model.config.output_stride == output_stride and model.aspp.rates == rates
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert max_abs_diff(model(x), reference(x)) <= TOLERANCE


@pytest.mark.slow
def test_smp_folder_converts_with_its_config(tmp_path, smp):
    """smp's save_pretrained folder → atrous folder (the CLI path) → the same logits."""
    torch.manual_seed(0)
    reference = smp.DeepLabV3Plus(
        "resnet50", encoder_weights=None, decoder_atrous_rates=(6, 12, 18), classes=3
    )
    randomize_bn(reference)
    reference.eval()
    reference.save_pretrained(tmp_path / "smp")
    output = convert(
        str(tmp_path / "smp"), "smp", str(tmp_path / "atrous"), class_names=["a", "b", "c"]
    )
    model = load(output)
    assert model.class_names == ("a", "b", "c") and model.aspp.rates == (6, 12, 18)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(model(x), reference(x)) <= TOLERANCE


def test_atrous_training_checkpoint_converts(tiny_run, tmp_path):
    state = torch.load(tiny_run / "best.pt", weights_only=True)["model"]
    model = load(convert(str(tiny_run / "best.pt"), "checkpoint", str(tmp_path)))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_unsupported_sources_are_clear_errors(tmp_path, smp):
    dense_aspp = smp.DeepLabV3Plus("resnet50", encoder_weights=None, decoder_aspp_separable=False)
    with pytest.raises(ValueError, match="decoder_aspp_separable=False"):
        from_smp(dense_aspp)
    with pytest.raises(ValueError, match="ResNet-50 or ResNet-101"):
        from_smp(smp.DeepLabV3Plus("resnet18", encoder_weights=None))
    mobile = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None
    )
    other = {k: v for k, v in mobile.state_dict().items() if not k.startswith("backbone.16.")}
    with pytest.raises(ValueError, match="ResNet-50 or ResNet-101"):
        from_torchvision(other)  # neither a ResNet nor MobileNetV3-Large (which converts)
    with pytest.raises(ValueError, match="neither a weights file nor torchvision DeepLabV3"):
        from_torchvision("ResNet50_Weights.IMAGENET1K_V1")
    with pytest.raises(ValueError, match="apply to smp sources only"):
        convert("x", "torchvision", str(tmp_path), output_stride=16)
