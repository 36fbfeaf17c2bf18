import math
from functools import cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous import (
    BACKBONES,
    DeepLabV3,
    DeepLabV3Plus,
    MobileNetV2,
    ModelConfig,
    ResNet,
    build_model,
    create_model,
    get_config,
    list_models,
)
from atrous.models.model import TrainingForward


@cache
def model_for(name: str):
    torch.manual_seed(0)
    return create_model(name, num_classes=5)


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models_covers_every_backbone_with_and_without_decoder():
    names = list_models()
    assert names == sorted(names)
    for backbone in BACKBONES:
        assert f"deeplabv3plus_{backbone}" in names
        assert f"deeplabv3_{backbone}" in names
    for required in (
        "deeplabv3plus_resnet101",
        "deeplabv3plus_xception65",
        "deeplabv3plus_mobilenetv2",
        "deeplabv3_resnet101",
    ):
        assert required in names


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_at_every_output_stride(name):
    """Odd input size, train and eval mode, OS 8/16/32: logits at the input size."""
    model = model_for(name)
    params = param_count(model)
    x = torch.randn(2, 3, 65, 97)
    for output_stride in (8, 16, 32):
        model.set_output_stride(output_stride)
        assert model.output_stride == output_stride
        features = model.backbone(x, aux=True)
        # Declared channels and strides are the real ones.
        assert set(features) == {"low", "high", "aux"}
        for key in ("low", "high", "aux"):
            assert features[key].shape[1] == model.backbone.out_channels[key]
            stride = model.backbone.strides[key]
            assert features[key].shape[-2:] == (math.ceil(65 / stride), math.ceil(97 / stride))
        for train in (True, False):
            model.train(train)
            with torch.no_grad():
                assert model(x).shape == (2, 5, 65, 97)
        assert param_count(model) == params
    model.set_output_stride(16)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [(513, 513), (500, 375), (1025, 2049)])
def test_any_input_size_gives_logits_at_that_size(name, size):
    with torch.device("meta"):
        model = create_model(name, num_classes=3).eval()
        assert model(torch.empty(1, 3, *size)).shape == (1, 3, *size)


@pytest.mark.slow
def test_output_stride_is_a_runtime_property_with_the_same_weights():
    """Paper Table 3: train at OS16, evaluate the same weights at OS8."""
    model = model_for("deeplabv3plus_xception65").eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        at16 = model(x)
        model.set_output_stride(8)
        high = model.backbone(x)["high"]
        at8 = model(x)
        model.set_output_stride(16)
        again = model(x)
    assert high.shape[-2:] == (9, 9)
    assert model.aspp.rates == (6, 12, 18)
    assert not torch.allclose(at16, at8)
    torch.testing.assert_close(again, at16)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_model_classes_and_submodule_names():
    plus = model_for("deeplabv3plus_resnet50")
    plain = model_for("deeplabv3_resnet50")
    assert isinstance(plus, DeepLabV3Plus) and isinstance(plain, DeepLabV3)
    assert plain.decoder is None
    assert [name for name, _ in plus.named_children()] == [
        "backbone",
        "aspp",
        "decoder",
        "classifier",
    ]
    assert plus.decoder.low_proj[0].out_channels == 48
    assert plus.decoder.fuse[0].spatial_conv.in_channels == 256 + 48
    assert plus.classifier.bias is not None and plus.classifier.kernel_size == (1, 1)


def test_named_defaults_follow_the_official_implementation():
    assert get_config("deeplabv3plus_xception65").separable
    assert not get_config("deeplabv3plus_resnet101").separable
    mobilenet = model_for("deeplabv3plus_mobilenetv2")
    assert mobilenet.aspp.rates == () and len(mobilenet.aspp.convs) == 2
    assert model_for("deeplabv3plus_resnet101_beta").backbone.multi_grid == (1, 2, 4)
    assert get_config("deeplabv3plus_xception65").mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(("convs", "channels", "low"), [(1, 128, 32), (3, 256, 64)])
def test_decoder_options(convs, channels, low):
    model = create_model(
        "deeplabv3plus_mobilenetv2",
        num_classes=4,
        decoder_convs=convs,
        decoder_channels=channels,
        low_level_channels=low,
        width_multiplier=0.5,
    )
    assert len(model.decoder.fuse) == convs
    assert model.decoder.low_proj[0].out_channels == low
    assert model.classifier.in_channels == channels
    assert model(torch.randn(2, 3, 33, 45)).shape == (2, 4, 33, 45)


def test_separable_switch_reaches_aspp_and_decoder():
    dense = create_model("deeplabv3plus_resnet50", separable=False)
    sc = create_model("deeplabv3plus_resnet50", separable=True)
    assert type(dense.aspp.convs[1]).__name__ == "ConvBNReLU"
    assert type(sc.aspp.convs[1]).__name__ == "SeparableConv2d"
    assert type(sc.decoder.fuse[0]).__name__ == "SeparableConv2d"
    assert param_count(sc) < param_count(dense)


def test_config_round_trip_and_unknown_keys():
    config = get_config("deeplabv3plus_resnet101_beta").replace(
        num_classes=19, image_pool_crop_size=(769, 769)
    )
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["image_pool_crop_size"] == [769, 769]
    with pytest.raises(ValueError, match="unknown model config keys: colour"):
        ModelConfig.from_dict({**config.to_dict(), "colour": "red"})
    assert build_model(config).config == config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "deeplabv4"},
            r"unknown model name 'deeplabv4'; available: deeplabv3_mobilenetv2",
        ),
        ({"output_stride": 12}, r"output_stride must be one of \(8, 16, 32\), got 12"),
        ({"num_classes": 0}, "num_classes must be an integer of at least 1, got 0"),
        ({"aspp_dropout": 1.5}, r"aspp_dropout must be in \[0, 1\), got 1.5"),
        ({"decoder_convs": 0}, "at least one 3×3 conv"),
        ({"multi_grid": (1, 2)}, "multi_grid needs 3 positive factors"),
        ({"in_channels": 0}, "in_channels must be at least 1, got 0"),
    ],
)
def test_bad_configuration_names_the_value(kwargs, message):
    name = kwargs.pop("name", "deeplabv3plus_resnet50")
    with pytest.raises(ValueError, match=message):
        create_model(name, **kwargs)


def test_set_output_stride_rejects_bad_values():
    with pytest.raises(ValueError, match=r"output_stride must be one of \(8, 16, 32\), got 4"):
        model_for("deeplabv3_mobilenetv2").set_output_stride(4)


@pytest.mark.parametrize("shape", [(3, 65, 65), (2, 1, 65, 65), (2, 4, 65, 65), (1, 2, 3, 65, 65)])
def test_bad_input_shape_is_a_clear_error(shape):
    model = model_for("deeplabv3plus_mobilenetv2").eval()
    with pytest.raises(ValueError, match=r"expected an image batch of shape \(N, 3, H, W\)"):
        model(torch.randn(*shape))
    with pytest.raises(ValueError, match=r"expected an image batch of shape \(N, 3, H, W\)"):
        model.forward_train(torch.randn(*shape))


@pytest.mark.slow
def test_model_learns_a_batch():
    """A few SGD steps on one batch lower the loss: gradients reach every group."""
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.5)
    x = torch.randn(4, 3, 49, 49)
    target = (x[:, 0] > 0).long()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        for group in (model.backbone, model.aspp, model.decoder, model.classifier):
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in group.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


#: Small models of each backbone family for the auxiliary head (Xception-65 at 65×81 is cheap).
AUX_CASES = {
    "resnet50": {"decoder": False},  # torchvision's DeepLabV3 with an auxiliary head
    "mobilenetv2": {"width_multiplier": 0.25, "separable": True, "aspp_rates": ()},
    "xception65": {"separable": True},
}


def aux_model(backbone: str = "mobilenetv2", aux_head: bool = True, **changes):
    torch.manual_seed(0)
    options = {**AUX_CASES[backbone], **changes}
    return build_model(ModelConfig(backbone, num_classes=5, aux_head=aux_head, **options))


def stride16_stage_by_hand(backbone, x: torch.Tensor) -> torch.Tensor:
    """The output of the stage torchvision/mmsegmentation tap, run module by module."""
    if isinstance(backbone, ResNet):
        x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
        return backbone.layer3(backbone.layer2(backbone.layer1(x)))  # (N, 1024, H/16, W/16)
    if isinstance(backbone, MobileNetV2):
        return backbone.features[:14](x)  # through the last 96-channel unit
    return backbone.blocks[:-2](backbone.stem(x))  # Xception: through the middle flow


def fcn_by_hand(head: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """torchvision's FCNHead in eval mode from the head's tensors: conv3×3, BN, ReLU, conv1×1."""
    conv, bn, _, _, classifier = head
    x = F.conv2d(x, conv.weight, padding=1)
    x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)
    return F.conv2d(F.relu(x), classifier.weight, classifier.bias)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(AUX_CASES))
def test_aux_head_runs_on_the_stride16_stage_at_os16_and_os8(backbone):
    model = aux_model(backbone).eval()
    head = model.aux_head
    channels = {"resnet50": 1024, "mobilenetv2": 24, "xception65": 728}[backbone]
    assert model.backbone.out_channels["aux"] == channels == head[0].in_channels
    assert head[0].out_channels == channels // 4 and head[3].p == 0.1
    x = torch.randn(2, 3, 65, 81)
    for output_stride in (16, 8):
        model.set_output_stride(output_stride)
        with torch.no_grad():
            outputs = model.forward_train(x)
            stage = stride16_stage_by_hand(model.backbone, x)
            aux = fcn_by_hand(head, stage)
            aux = F.interpolate(aux, (65, 81), mode="bilinear", align_corners=True)
            logits = model(x)
        assert model.backbone.strides["aux"] == output_stride  # dilated, not strided, at OS8
        assert stage.shape[-2:] == (math.ceil(65 / output_stride), math.ceil(81 / output_stride))
        assert set(outputs) == {"out", "aux"}
        assert outputs["out"].shape == outputs["aux"].shape == (2, 5, 65, 81)
        torch.testing.assert_close(outputs["out"], logits)
        torch.testing.assert_close(outputs["aux"], aux, rtol=1e-5, atol=1e-5)


def test_forward_never_runs_the_aux_head():
    model = aux_model().train()
    calls = []
    model.aux_head.register_forward_hook(lambda *args: calls.append(args))
    x = torch.randn(2, 3, 49, 49)
    model(x).sum().backward()
    assert calls == [] and all(p.grad is None for p in model.aux_head.parameters())
    outputs = model.forward_train(x)
    assert len(calls) == 1
    outputs["aux"].sum().backward()
    assert all(p.grad is not None for p in model.aux_head.parameters())
    # The module DistributedDataParallel wraps: forward_train, and only the model's parameters.
    wrapper = TrainingForward(model.eval())
    assert list(wrapper.parameters()) == list(model.parameters())
    with torch.no_grad():
        outputs, again = model.forward_train(x), wrapper(x)
    assert set(again) == {"out", "aux"}
    for key in outputs:
        assert torch.equal(again[key], outputs[key])
    plain = aux_model(aux_head=False).eval()
    assert plain.aux_head is None
    with torch.no_grad():
        outputs = plain.forward_train(x)
        assert set(outputs) == {"out"}
        torch.testing.assert_close(outputs["out"], plain(x))


@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet50"])
def test_aux_head_parameters_are_counted(backbone):
    plain, model = aux_model(backbone, aux_head=False), aux_model(backbone)
    c, k = model.backbone.out_channels["aux"], 5
    m = c // 4  # conv3×3 (no bias) + BN scale and shift + conv1×1 with bias
    assert param_count(model) - param_count(plain) == c * m * 9 + 2 * m + m * k + k
    assert param_count(model.without_aux_head()) == param_count(plain)


def test_without_aux_head_shares_the_rest_and_leaves_the_model_as_it_was():
    model = aux_model().eval()
    stripped = model.without_aux_head()
    assert stripped.aux_head is None and "aux_head" not in dict(stripped.named_children())
    assert not stripped.config.aux_head and stripped.config == model.config.replace(aux_head=False)
    assert stripped.backbone is model.backbone and stripped.classifier is model.classifier
    assert not any(k.startswith("aux_head.") for k in stripped.state_dict())
    # The model itself, whose state_dict a training checkpoint stores, keeps its head.
    assert model.aux_head is not None and model.config.aux_head
    assert any(k.startswith("aux_head.") for k in model.state_dict())
    x = torch.randn(1, 3, 49, 49)
    with torch.no_grad():
        assert torch.equal(stripped(x), model(x))
    plain = aux_model(aux_head=False)
    assert plain.without_aux_head() is plain


def test_in_channels_and_their_normalisation():
    config = ModelConfig(backbone="resnet50", num_classes=2, in_channels=4)
    assert config.mean == (0.485, 0.456, 0.406, 0.485)  # band i: RGB statistic i % 3
    assert config.std == (0.229, 0.224, 0.225, 0.229)
    assert ModelConfig(backbone="xception65", in_channels=1).mean == (0.5,)
    given = config.replace(input_mean=(0.1, 0.2, 0.3, 0.4), input_std=[1, 2, 3, 4])
    assert given.mean == (0.1, 0.2, 0.3, 0.4) and given.std == (1.0, 2.0, 3.0, 4.0)
    assert ModelConfig.from_dict(given.to_dict()) == given
    assert given.to_dict()["in_channels"] == 4 and given.to_dict()["aux_head"] is False
    with pytest.raises(ValueError, match=r"input_mean needs one value per input channel \(4\)"):
        config.replace(input_mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"input_std needs one value per input channel \(3\)"):
        ModelConfig(input_std=(0.5, 0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"in_channels must be an integer, got 4\.0"):
        ModelConfig(in_channels=4.0)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("in_channels", [1, 4])
def test_every_backbone_reads_other_band_counts(backbone, in_channels):
    with torch.device("meta"):
        model = create_model(f"deeplabv3plus_{backbone}", num_classes=3, in_channels=in_channels)
        first = next(m for m in model.backbone.modules() if isinstance(m, nn.Conv2d))
        assert model.backbone.get_submodule(model.backbone.input_conv) is first
        assert first.in_channels == model.backbone.in_channels == in_channels
        assert model.eval()(torch.empty(1, in_channels, 65, 97)).shape == (1, 3, 65, 97)
        with pytest.raises(ValueError, match=rf"shape \(N, {in_channels}, H, W\), got \(1, 3,"):
            model(torch.empty(1, 3, 65, 97))
