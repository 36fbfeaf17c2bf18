import pytest
import torch
from torch import nn

from atrous.models.layers import ASPP, ConvBNReLU, ImagePool, SeparableConv2d, conv3x3_bn_relu


def conv_weight_count(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))


def test_separable_conv_worked_example():
    """8×8×3 input, 16 filters of 3×3: dense 432 weights, depthwise separable 27 + 48 = 75."""
    x = torch.randn(1, 3, 8, 8)
    dense = ConvBNReLU(3, 16, kernel_size=3)
    separable = SeparableConv2d(3, 16)
    assert conv_weight_count(dense) == 3 * 3 * 3 * 16 == 432
    assert separable.depthwise.weight.numel() == 27
    assert separable.pointwise.weight.numel() == 48
    assert conv_weight_count(separable) == 75
    assert dense(x).shape == separable(x).shape == (1, 16, 8, 8)


def test_separable_conv_is_official_form():
    """depthwise 3×3 (dilated) → BN → ReLU → pointwise 1×1 → BN → ReLU, no biases before BN."""
    conv = SeparableConv2d(32, 64, dilation=6)
    kinds = [type(m) for m in conv]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert conv.depthwise.groups == 32 and conv.depthwise.dilation == (6, 6)
    assert conv.depthwise.padding == (6, 6) and conv.pointwise.kernel_size == (1, 1)
    assert conv.depthwise.bias is None and conv.pointwise.bias is None
    no_act = SeparableConv2d(32, 64, activation=False)
    assert [type(m) for m in no_act] == [nn.Conv2d, nn.BatchNorm2d, nn.Conv2d, nn.BatchNorm2d]


def test_separable_equals_depthwise_then_pointwise():
    torch.manual_seed(0)
    conv = SeparableConv2d(4, 5, dilation=2).eval()
    x = torch.randn(2, 4, 11, 13)
    dw = nn.functional.conv2d(x, conv.depthwise.weight, padding=2, dilation=2, groups=4)
    mid = torch.relu(conv.depthwise_bn(dw))
    expected = torch.relu(conv.pointwise_bn(nn.functional.conv2d(mid, conv.pointwise.weight)))
    torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize(
    ("output_stride", "rates"), [(8, (12, 24, 36)), (16, (6, 12, 18)), (32, (3, 6, 9))]
)
def test_aspp_rates_follow_output_stride(output_stride, rates):
    aspp = ASPP(64, 32, output_stride=output_stride)
    assert aspp.rates == rates
    aspp.set_output_stride(16)
    assert aspp.rates == (6, 12, 18)
    aspp.set_output_stride(output_stride)
    assert aspp.rates == rates
    for branch, rate in zip(aspp.convs[1:-1], rates, strict=True):
        assert branch.spatial_conv.padding == (rate, rate)


def test_aspp_explicit_rates_are_kept():
    aspp = ASPP(64, 32, rates=(2, 4), output_stride=16)
    assert aspp.rates == (2, 4)
    aspp.set_output_stride(8)
    assert aspp.rates == (2, 4)
    assert len(aspp.convs) == 4  # 1×1, two atrous, image pooling


def test_aspp_structure_dense_and_separable():
    dense = ASPP(64, 32)
    sc = ASPP(64, 32, separable=True)
    assert len(dense.convs) == 5
    assert all(isinstance(b, ConvBNReLU) for b in dense.convs[1:4])
    assert all(isinstance(b, SeparableConv2d) for b in sc.convs[1:4])
    assert dense.project[0].in_channels == 5 * 32
    assert isinstance(dense.project[-1], nn.Dropout) and dense.project[-1].p == pytest.approx(0.1)
    x = torch.randn(2, 64, 9, 11)
    assert dense(x).shape == sc(x).shape == (2, 32, 9, 11)
    assert conv_weight_count(sc) < conv_weight_count(dense)


def test_aspp_dilation_changes_the_result():
    """The rate is real: the same weights give other outputs at another output stride."""
    torch.manual_seed(0)
    aspp = ASPP(8, 8).eval()
    x = torch.randn(1, 8, 33, 33)
    at16 = aspp(x)
    aspp.set_output_stride(8)
    assert not torch.allclose(at16, aspp(x))


def test_image_pool_global_and_crop_kernel():
    x = torch.randn(2, 3, 33, 47)
    torch.testing.assert_close(ImagePool()(x), x.mean(dim=(2, 3), keepdim=True))
    # Kernel of the training crop: global on a crop-sized map, local on a larger one.
    pool = ImagePool((33, 33))
    square = x[..., :33]
    torch.testing.assert_close(pool(square), square.mean(dim=(2, 3), keepdim=True))
    assert pool(x).shape == (2, 3, 1, 15)
    # Smaller than the kernel: global mean.
    torch.testing.assert_close(pool(x[..., :20, :20]), x[..., :20, :20].mean((2, 3), keepdim=True))


def test_aspp_pool_kernel_follows_output_stride():
    aspp = ASPP(16, 8, pool_crop_size=(513, 513), output_stride=16)
    assert aspp.convs[-1][0].kernel_size == (33, 33)
    aspp.set_output_stride(8)
    assert aspp.convs[-1][0].kernel_size == (65, 65)


def test_aspp_batch_of_one_in_training_gives_clear_error():
    aspp = ASPP(16, 8).train()
    with pytest.raises(ValueError, match="batch of at least 2"):
        aspp(torch.randn(1, 16, 5, 5))
    aspp.eval()
    assert aspp(torch.randn(1, 16, 5, 5)).shape == (1, 8, 5, 5)


def test_conv3x3_switch():
    assert isinstance(conv3x3_bn_relu(4, 4, separable=True), SeparableConv2d)
    assert isinstance(conv3x3_bn_relu(4, 4, separable=False), ConvBNReLU)


def test_aspp_rejects_bad_values():
    with pytest.raises(ValueError, match=r"output_stride must be one of \(8, 16, 32\), got 12"):
        ASPP(8, 8, output_stride=12)
    with pytest.raises(ValueError, match="rates must be positive"):
        ASPP(8, 8, rates=(0, 6))
