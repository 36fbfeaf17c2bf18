"""timm encoders as DeepLab backbones (``timm:<name>``): feature strides at OS 8/16/32, the output
size, runtime output-stride switches, refusals, ImageNet weights through timm, profile and the
fast path."""

import sys

import pytest
import torch
from helpers import randomize_bn
from torch import nn

from atrous.inference.fast import fold_batchnorm, optimize_for_inference
from atrous.models.backbones import build_backbone
from atrous.models.backbones.weights import load_backbone_weights
from atrous.models.config import ModelConfig
from atrous.models.model import build_model
from atrous.models.profile import profile_model

timm = pytest.importorskip("timm", reason="timm backbones need atrous[timm]")

#: Light encoders: built afresh at each output stride.
LIGHT = ["resnet18", "efficientnet_b0", "mobilenetv3_large_100", "regnety_002"]
#: Heavier ones: built once, then switched to the other strides.
HEAVY = [
    "resnet34",
    pytest.param("efficientnet_b1", marks=pytest.mark.slow),
    pytest.param("efficientnet_b2", marks=pytest.mark.slow),
    pytest.param("resnet50", marks=pytest.mark.slow),
    pytest.param("efficientnet_b3", marks=pytest.mark.slow),
    pytest.param("efficientnet_b4", marks=pytest.mark.slow),
    pytest.param("convnext_tiny", marks=pytest.mark.slow),
    pytest.param("regnety_008", marks=pytest.mark.slow),
]
#: Divisible by 32, so every family's features are exactly SIZE / stride.
SIZE = 96


def check_strides(backbone, output_stride: int) -> None:
    """Declared strides are 4 / OS / min(16, OS), and the features have those sizes."""
    assert backbone.strides == {"low": 4, "high": output_stride, "aux": min(16, output_stride)}
    with torch.no_grad():
        features = backbone.eval()(torch.randn(1, 3, SIZE, SIZE), aux=True)
    for key, stride in backbone.strides.items():
        assert features[key].shape[1:] == (
            backbone.out_channels[key],
            SIZE // stride,
            SIZE // stride,
        )


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("name", LIGHT)
def test_light_encoder_at_each_output_stride(name, output_stride):
    model = build_model(
        ModelConfig(backbone=f"timm:{name}", num_classes=3, output_stride=output_stride)
    ).eval()
    check_strides(model.backbone, output_stride)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 65)).shape == (1, 3, 65, 65)


@pytest.mark.parametrize("name", HEAVY)
def test_heavy_encoder_switches_output_stride(name):
    backbone = build_backbone(f"timm:{name}", output_stride=16)
    for output_stride in (8, 32, 16):
        backbone.set_output_stride(output_stride)
        check_strides(backbone, output_stride)


def test_switch_keeps_the_parameters_and_logits():
    """Rebuilt at OS8 and back, the backbone holds the same Parameter objects and gives the same
    logits; OS8 computes more (Mult-Adds) from the same weights."""
    model = build_model(ModelConfig(backbone="timm:resnet18", num_classes=3)).eval()
    randomize_bn(model)
    parameters = [id(p) for p in model.parameters()]
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        before = model(x)
        os16 = profile_model(model, (65, 65)).total.mult_adds
        model.set_output_stride(8)
        assert profile_model(model, (65, 65)).total.mult_adds > 1.5 * os16
        model.set_output_stride(16)
        assert torch.equal(model(x), before)
    assert [id(p) for p in model.parameters()] == parameters


def test_low_level_feature_is_the_stride_4_one_of_feature_info():
    resnet = build_backbone("timm:resnet18", output_stride=8)
    assert (resnet.low_index, resnet.aux_index, resnet.out_channels["low"]) == (1, 3, 64)
    assert resnet.body.feature_info.reduction()[resnet.low_index] == 4


def test_encoders_that_cannot_dilate_are_refused():
    with pytest.raises(ValueError, match="'vit_tiny_patch16_224' cannot run at output stride 16"):
        build_backbone("timm:vit_tiny_patch16_224", output_stride=16)
    with pytest.raises(ValueError, match="'ghostnet_100' cannot run at output stride 8"):
        build_backbone("timm:ghostnet_100", output_stride=8)
    with pytest.raises(ValueError, match="unknown timm model 'no_such_net'"):
        ModelConfig(backbone="timm:no_such_net", num_classes=3)
    with pytest.raises(ValueError, match="dilate_removed_stride_units does not apply"):
        build_backbone("timm:resnet18", dilate_removed_stride_units=True)


def test_an_encoder_ignoring_output_stride_is_refused(monkeypatch):
    """A timm model that accepted output_stride but stayed at stride 32 is detected by the
    reductions its features reach."""
    create = timm.create_model

    def ignoring(name, **kwargs):
        kwargs.pop("output_stride", None)
        return create(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", ignoring)
    with pytest.raises(ValueError, match="does not dilate: asked for output stride 16, its last"):
        build_backbone("timm:resnet18", output_stride=16)


def test_without_timm_the_message_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"pip install 'atrous\[timm\]'"):
        ModelConfig(backbone="timm:resnet18", num_classes=3)


def test_imagenet_weights_load_through_timm(monkeypatch):
    """``DEFAULT`` and tags go to timm's create_model(pretrained=True); here it is replaced by a
    seeded random model standing in for the download, whose tensors must all arrive."""
    create = timm.create_model
    calls = []

    def pretrained(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs.get("features_only")))
        torch.manual_seed(1)
        return create(name, **kwargs)

    backbone = build_backbone("timm:resnet18", output_stride=8, in_channels=4)
    monkeypatch.setattr(timm, "create_model", pretrained)
    load_backbone_weights(backbone, "timm:resnet18", "a1_in1k")
    expected = pretrained("resnet18.a1_in1k", features_only=True).state_dict()
    assert calls[0] == ("resnet18.a1_in1k", True, True)
    assert torch.equal(backbone.body.layer4[1].conv2.weight, expected["layer4.1.conv2.weight"])
    rgb = expected["conv1.weight"]
    assert torch.allclose(backbone.body.conv1.weight[:, :3].sum(1), rgb.sum(1) * 3 / 4)


def test_offline_weights_message_names_the_model_and_the_remedy(monkeypatch):
    def offline(name, pretrained=False, **kwargs):
        raise OSError("cannot find the requested files in the local cache")

    backbone = build_backbone("timm:resnet18")
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(OSError, match=r"'resnet18'.*HF_HUB_OFFLINE=1"):
        load_backbone_weights(backbone, "timm:resnet18", "DEFAULT")


def efficientnet_b0():
    model = build_model(ModelConfig(backbone="timm:efficientnet_b0", num_classes=3)).eval()
    randomize_bn(model)
    return model


def test_profile_and_batchnorm_folding():
    """EfficientNet's BatchNormAct2d folds into its convs (its activation stays)."""
    model = efficientnet_b0()
    profile = profile_model(model, (65, 65))
    assert profile.total.params == sum(p.numel() for p in model.parameters())
    assert profile.groups["backbone"].mult_adds > 0
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.backbone.modules())
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max() <= 1e-4 * model(x).abs().max()


@pytest.mark.slow
def test_fast_path():
    """The ONNX Runtime network passes the fast path's fp32 agreement check (it raises if not)."""
    network = optimize_for_inference(efficientnet_b0(), (65, 65), backend="onnxruntime")
    assert network.report.agreement.argmax_agreement == 1.0


def test_profile_counts_linear_layers():
    """timm's ConvNeXt runs its 1×1 convs as nn.Linear: each output value costs in_features."""
    model = nn.Sequential(nn.Linear(65, 10))  # on the last axis of a (1, 3, 65, 65) image
    assert profile_model(model, (65, 65)).total.mult_adds == 3 * 65 * 10 * 65
