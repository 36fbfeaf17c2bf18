import math
from functools import cache

import pytest
import torch

from atrous import (
    BACKBONES,
    DeepLabV3,
    DeepLabV3Plus,
    ModelConfig,
    build_model,
    create_model,
    get_config,
    list_models,
)


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


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_at_every_output_stride(name):
    """Odd input size, train and eval mode, OS 8/16/32: logits at the input size."""
    model = model_for(name)
    params = param_count(model)
    x = torch.randn(2, 3, 65, 97)
    for output_stride in (8, 16, 32):
        model.set_output_stride(output_stride)
        assert model.output_stride == output_stride
        features = model.backbone(x)
        # Declared channels and strides are the real ones.
        for key in ("low", "high"):
            assert features[key].shape[1] == model.backbone.out_channels[key]
            stride = model.backbone.strides[key]
            assert features[key].shape[-2:] == (math.ceil(65 / stride), math.ceil(97 / stride))
        for train in (True, False):
            model.train(train)
            with torch.no_grad():
                assert model(x).shape == (2, 5, 65, 97)
        assert param_count(model) == params
    model.set_output_stride(16)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [(513, 513), (500, 375), (1025, 2049)])
def test_any_input_size_gives_logits_at_that_size(name, size):
    with torch.device("meta"):
        model = create_model(name, num_classes=3).eval()
        assert model(torch.empty(1, 3, *size)).shape == (1, 3, *size)


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
