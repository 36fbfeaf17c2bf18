import pytest
import torch
import torchvision
from helpers import randomize_bn
from torch import nn

from atrous.models.backbones import (
    MobileNetV2,
    ResNet,
    StridedUnit,
    Xception,
    apply_output_stride,
    build_backbone,
)
from atrous.models.backbones.weights import load_backbone_weights


@pytest.fixture
def timm():
    """timm, for the tests that compare with it: only they skip without it."""
    return pytest.importorskip("timm")


# (replace_stride_with_dilation for torchvision's ResNet) at each output stride
TORCHVISION_DILATION = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}


def conv_dilations(stage: nn.Sequential) -> list[int]:
    return [unit.conv2.dilation[0] for unit in stage]


# ---------------------------------------------------------------- the output-stride walk


def make_units(strides):
    units = []
    for stride in strides:
        conv = nn.Conv2d(2, 2, 3, stride=stride, padding=1)
        units.append(StridedUnit(stride, [conv], [(conv, 1)]))
    return units


def test_apply_output_stride_follows_stack_blocks_dense():
    units = make_units([2, 1, 2, 1, 2, 1])  # stem stride 4 → 8 → 16 → 32
    apply_output_stride(units, 8, input_stride=4)
    strides = [u.strided[0].stride[0] for u in units]
    rates = [u.dilated[0][0].dilation[0] for u in units]
    # The unit reached at the target stride runs at stride 1 with the current rate,
    # the rate then grows by the stride it skipped.
    assert strides == [2, 1, 1, 1, 1, 1]
    assert rates == [1, 1, 1, 2, 2, 4]
    assert [u.dilated[0][0].padding[0] for u in units] == rates
    apply_output_stride(units, 32, input_stride=4)
    assert [u.strided[0].stride[0] for u in units] == [2, 1, 2, 1, 2, 1]
    assert [u.dilated[0][0].dilation[0] for u in units] == [1] * 6


def test_apply_output_stride_errors():
    with pytest.raises(ValueError, match=r"output_stride must be one of \(8, 16, 32\), got 4"):
        apply_output_stride(make_units([2]), 4, input_stride=4)
    with pytest.raises(ValueError, match="reaches stride 8 at most"):
        apply_output_stride(make_units([2]), 16, input_stride=4)


# ---------------------------------------------------------------- ResNet, torchvision layout


@pytest.mark.slow
def test_torchvision_resnet101_state_dict_loads_strictly():
    reference = torchvision.models.resnet101()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    ours = ResNet(101, "torchvision")
    ours.load_state_dict(state, strict=True)
    for key, value in state.items():
        assert torch.equal(ours.state_dict()[key], value)


@pytest.mark.slow
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_torchvision_layout_matches_torchvision_dilated_resnet(output_stride):
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(
        replace_stride_with_dilation=TORCHVISION_DILATION[output_stride]
    )
    randomize_bn(reference)
    reference.eval()
    ours = ResNet(50, "torchvision", output_stride=16)
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if "fc." not in k})
    ours.set_output_stride(output_stride)
    ours.eval()
    x = torch.randn(1, 3, 67, 83)
    with torch.no_grad():
        r = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        low = reference.layer1(r)
        high = reference.layer4(reference.layer3(reference.layer2(low)))
        features = ours(x)
    torch.testing.assert_close(features["low"], low)
    torch.testing.assert_close(features["high"], high, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- ResNet, official beta layout


def test_beta_layout_structure():
    net = ResNet(101, "beta", output_stride=32)
    # Three 3×3 root convs (64/2, 64, 128); the last one's BN is bn1.
    root = [m for m in net.conv1 if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in root] == [
        (64, (3, 3), (2, 2)),
        (64, (3, 3), (1, 1)),
        (128, (3, 3), (1, 1)),
    ]
    assert net.bn1.num_features == 128 and net.layer1[0].conv1.in_channels == 128
    # The stride of blocks 1–3 sits in their last unit, with a subsampling shortcut.
    for stage in (net.layer1, net.layer2, net.layer3):
        assert [u.conv2.stride[0] for u in stage] == [1] * (len(stage) - 1) + [2]
        assert isinstance(stage[-1].downsample, nn.MaxPool2d)
        assert stage[0].downsample[0].stride == (1, 1)
    assert [u.conv2.stride[0] for u in net.layer4] == [1, 1, 1]
    # Multi-grid (1, 2, 4) applies even at OS32.
    assert conv_dilations(net.layer4) == [1, 2, 4]


@pytest.mark.parametrize(
    ("output_stride", "layer3", "layer4", "high_size"),
    [(32, [1] * 23, [1, 2, 4], 3), (16, [1] * 23, [2, 4, 8], 5), (8, [2] * 23, [4, 8, 16], 9)],
)
def test_beta_layout_dilations(output_stride, layer3, layer4, high_size):
    net = ResNet(101, "beta", output_stride=output_stride)
    assert conv_dilations(net.layer3) == layer3
    assert conv_dilations(net.layer4) == layer4
    if output_stride == 8:
        assert net.layer2[-1].conv2.stride == (1, 1) and net.layer2[-1].downsample.stride == 1
    features = net.eval()(torch.randn(1, 3, 65, 65))
    assert features["high"].shape == (1, 2048, high_size, high_size)
    assert features["low"].shape == (1, 256, 17, 17)


def test_beta_low_level_feature_is_before_the_residual_add():
    torch.manual_seed(0)
    net = ResNet(50, "beta").eval()
    randomize_bn(net)
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        stem = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        after_unit1 = net.layer1[0](stem)
        expected = net.layer1[1].bn3(
            net.layer1[1].conv3(
                torch.relu(
                    net.layer1[1].bn2(
                        net.layer1[1].conv2(
                            torch.relu(net.layer1[1].bn1(net.layer1[1].conv1(after_unit1)))
                        )
                    )
                )
            )
        )
        low = net(x)["low"]
    torch.testing.assert_close(low, expected)
    assert low.min() < 0  # not rectified: the official endpoint is conv3 + BN, pre-add


def test_resnet_rejects_bad_options():
    with pytest.raises(ValueError, match="depth must be one of"):
        ResNet(34)
    with pytest.raises(ValueError, match="layout must be"):
        ResNet(50, "caffe")
    with pytest.raises(ValueError, match="multi_grid needs 3 positive factors"):
        ResNet(50, multi_grid=(1, 2))


# ---------------------------------------------------------------- Xception


def ordered_shapes(state):
    return [tuple(v.shape) for k, v in state.items() if "num_batches_tracked" not in k]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["xception41", "xception65", "xception71"])
def test_xception_parameters_correspond_one_to_one_with_timm(variant, timm):
    reference = timm.create_model(variant, pretrained=False)
    theirs = {k: v for k, v in reference.state_dict().items() if not k.startswith("head.")}
    ours = Xception(variant).state_dict()
    assert len(ours) == len(theirs)
    assert ordered_shapes(ours) == ordered_shapes(theirs)


@pytest.mark.slow
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_xception65_matches_timm_features(output_stride, timm):
    """timm's port of the official model, with its weights mapped in by name, gives our features."""
    torch.manual_seed(0)
    reference = timm.create_model("xception65", pretrained=False, output_stride=output_stride)
    randomize_bn(reference)
    reference.eval()
    ours = Xception("xception65", output_stride=output_stride).eval()
    load_backbone_weights(ours, "xception65", reference.state_dict())
    tap = {}
    reference.blocks[1].stack.act3.register_forward_hook(
        lambda module, inputs, output: tap.setdefault("low", output.clone())
    )
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        expected = reference.forward_features(x)
        features = ours(x)
    torch.testing.assert_close(features["high"], expected, rtol=1e-4, atol=1e-4)
    # timm taps the stride-4 feature after the ReLU; the official endpoint is before it.
    torch.testing.assert_close(torch.relu(features["low"]), tap["low"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_xception_structure():
    net = Xception("xception65", output_stride=16)
    assert len(net.blocks) == 21  # 3 entry + 16 middle + 2 exit
    entry, exit1, exit2 = net.blocks[0], net.blocks[19], net.blocks[20]
    assert not entry.spec.relu_inside and exit2.spec.relu_inside
    assert entry.shortcut is not None and net.blocks[5].shortcut is None and exit2.shortcut is None
    assert [c.depthwise.stride[0] for c in entry.convs] == [1, 1, 2]
    assert all(m.eps == 1e-3 for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    # OS16: exit block 1 loses its stride, exit block 2 runs at rate 2.
    assert exit1.convs[2].depthwise.stride == (1, 1) and exit1.shortcut[0].stride == (1, 1)
    assert [c.depthwise.dilation[0] for c in exit2.convs] == [2, 2, 2]
    net.set_output_stride(8)
    assert net.blocks[2].convs[2].depthwise.stride == (1, 1)
    assert net.blocks[10].convs[0].depthwise.dilation == (2, 2)
    assert [c.depthwise.dilation[0] for c in exit2.convs] == [4, 4, 4]
    assert Xception("xception71").out_channels == {"low": 256, "high": 2048, "aux": 728}
    assert Xception("xception71").tap_index == 2


# ---------------------------------------------------------------- MobileNetV2


def test_mobilenetv2_matches_torchvision_and_taps_the_depthwise_output():
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2()
    randomize_bn(reference)
    reference.eval()
    ours = MobileNetV2(output_stride=32)
    ours.load_state_dict(
        {
            k: v
            for k, v in reference.state_dict().items()
            if k.startswith("features.") and not k.startswith("features.18.")
        }
    )
    ours.eval()
    tap = {}
    reference.features[3].conv[1].register_forward_hook(
        lambda module, inputs, output: tap.setdefault("low", output.clone())
    )
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = reference.features[:18](x)
        features = ours(x)
    torch.testing.assert_close(features["high"], expected)
    torch.testing.assert_close(features["low"], tap["low"])
    assert features["low"].shape == (1, 144, 16, 20)


def test_mobilenetv2_dilation_pattern_at_os8():
    net = MobileNetV2(output_stride=8)
    strides = [u.strided[0].stride[0] for u in net.strided_units()]
    rates = [u.dilated[0][0].dilation[0] for u in net.strided_units()]
    # features[1..17]: strides at 2, 4, 7, 14 in torchvision numbering.
    assert strides == [1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert rates == [1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 4, 4, 4]
    assert net(torch.randn(2, 3, 64, 64))["high"].shape == (2, 320, 8, 8)


def test_mobilenetv2_width_multiplier():
    net = MobileNetV2(width_multiplier=0.5)
    features = net(torch.randn(2, 3, 32, 32), aux=True)
    assert net.out_channels == {key: value.shape[1] for key, value in features.items()}
    assert set(features) == {"low", "high", "aux"} and features["aux"].shape[1] == 48
    assert features["high"].shape[1] < 320


def test_build_backbone_errors():
    with pytest.raises(ValueError, match="unknown backbone 'resnet18'; available: mobilenetv2"):
        build_backbone("resnet18")
    with pytest.raises(ValueError, match="no multi-grid option"):
        build_backbone("mobilenetv2", multi_grid=(1, 2, 4))
    with pytest.raises(ValueError, match="no width_multiplier option"):
        build_backbone("xception65", width_multiplier=0.5)
