"""ImageNet backbone weights through torchvision's and timm's own caches, files and state dicts."""

import pytest
import torch
import torchvision
from helpers import no_download, randomize_bn, use_offline_hf_cache
from safetensors.torch import save_file
from torch import nn
from torchvision.models import MobileNet_V2_Weights, ResNet50_Weights, ResNet101_Weights

from atrous import Xception, create_model, load_backbone_weights
from atrous.models.backbones.weights import backbone_state_dict


@pytest.fixture
def timm():
    """timm, for the tests that compare with it: only they skip without it."""
    return pytest.importorskip("timm")


@pytest.fixture
def torch_hub_cache(tmp_path, monkeypatch):
    """torchvision's download folder under a fresh TORCH_HOME; downloading fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def cache_file(folder, weights) -> str:
    return str(folder / weights.url.rsplit("/", 1)[1])


@pytest.mark.slow
def test_resnet101_imagenet_weights_come_from_the_torch_hub_cache(torch_hub_cache):
    torch.manual_seed(0)
    # torchvision's ResNet-101 dilated to OS16; the weights file is the same at any stride.
    reference = torchvision.models.resnet101(replace_stride_with_dilation=[False, False, True])
    randomize_bn(reference)
    state = reference.state_dict()
    torch.save(state, cache_file(torch_hub_cache, ResNet101_Weights.IMAGENET1K_V2))
    model = create_model("deeplabv3plus_resnet101", backbone_weights="IMAGENET1K_V2").eval()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key
    reference.eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        r = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        high = reference.layer4(reference.layer3(reference.layer2(reference.layer1(r))))
        features = model.backbone(x)
    torch.testing.assert_close(features["high"], high, rtol=1e-4, atol=1e-4)


def test_mobilenetv2_weights_by_name_and_from_local_files(torch_hub_cache, tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.mobilenet_v2().state_dict()
    torch.save(state, cache_file(torch_hub_cache, MobileNet_V2_Weights.DEFAULT))
    torch.save(state, tmp_path / "mobilenet.pth")
    ours = {k: v for k, v in state.items() if not k.startswith(("classifier.", "features.18."))}
    save_file(ours, str(tmp_path / "mobilenet.safetensors"))  # already in atrous names
    named = ("DEFAULT", MobileNet_V2_Weights.IMAGENET1K_V2, "MobileNet_V2_Weights.IMAGENET1K_V2")
    files = (tmp_path / "mobilenet.pth", str(tmp_path / "mobilenet.safetensors"))
    for weights in (*named, *files):
        model = create_model("deeplabv3plus_mobilenetv2", backbone_weights=weights)
        for key, value in model.backbone.state_dict().items():
            assert torch.equal(value, state[key]), (weights, key)
    # Refused before any download is attempted (download_url_to_file fails the test).
    with pytest.raises(ValueError, match=r"for width_multiplier 1\.0; .* 160 output channels"):
        create_model(
            "deeplabv3plus_mobilenetv2", width_multiplier=0.5, backbone_weights="IMAGENET1K_V1"
        )


@pytest.mark.slow
def test_timm_xception65_maps_every_tensor(timm):
    reference = timm.create_model("xception65", pretrained=False)
    theirs = {k: v for k, v in reference.state_dict().items() if not k.startswith("head.")}
    mapped = backbone_state_dict("xception65", reference.state_dict())
    ours = Xception("xception65").state_dict()
    assert len(mapped) == len(theirs) == len(ours)
    assert set(mapped) == set(ours)
    for key, value in mapped.items():
        assert value.shape == ours[key].shape, key
    assert torch.equal(
        mapped["blocks.20.convs.2.pointwise_bn.running_var"],
        theirs["blocks.20.stack.conv3.bn_pw.running_var"],
    )


@pytest.mark.slow
def test_xception_imagenet_weights_through_timm_from_the_hf_cache(tmp_path, monkeypatch, timm):
    """timm's pretrained path (Hugging Face cache, offline) for the official TF port."""
    torch.manual_seed(0)
    state = timm.create_model("xception71", pretrained=False).state_dict()
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    use_offline_hf_cache(monkeypatch, tmp_path / "hf", "timm/xception71.tf_in1k", [weights])
    model = create_model("deeplabv3plus_xception71", backbone_weights="tf_in1k")
    weight = model.backbone.blocks[4].convs[1].pointwise.weight
    assert torch.equal(weight, state["blocks.4.stack.conv2.conv_pw.weight"])
    with pytest.raises(ValueError, match=r"timm has no 'xception71\.imagenet'.*tf_in1k"):
        create_model("deeplabv3plus_xception71", backbone_weights="imagenet")


@pytest.mark.slow
def test_weights_that_cannot_apply_are_clear_errors():
    with pytest.raises(ValueError, match=r"no weights for backbone 'resnet101_beta'.*TensorFlow"):
        create_model("deeplabv3plus_resnet101_beta", backbone_weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match=r"not torchvision weights for resnet101; .*IMAGENET1K_V2"):
        create_model("deeplabv3plus_resnet101", backbone_weights=ResNet50_Weights.IMAGENET1K_V1)
    with pytest.raises(ValueError, match="xception65 weights come from timm"):
        create_model("deeplabv3plus_xception65", backbone_weights=ResNet50_Weights.IMAGENET1K_V1)
    resnet50 = torchvision.models.resnet50().state_dict()
    with pytest.raises(ValueError, match=r"missing from the weights: layer3\.6\.conv1\.weight"):
        create_model("deeplabv3plus_resnet101", backbone_weights=resnet50)


def smp_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """segmentation_models_pytorch's ``patch_first_conv`` on a conv holding ``weight``: the
    reference for the rule (smp is a test-only dependency)."""
    utils = pytest.importorskip("segmentation_models_pytorch.encoders._utils")
    conv = nn.Conv2d(3, weight.shape[0], weight.shape[2:], bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    holder = nn.Sequential(conv)
    utils.patch_first_conv(holder, in_channels, pretrained=True)
    return holder[0].weight.detach()


def rgb_rule_by_hand(rgb: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The documented rule written out: 1 band sums R, G, B; n bands take R, G, B, R, ... × 3/n."""
    if in_channels == 1:
        return rgb[:, 0:1] + rgb[:, 1:2] + rgb[:, 2:3]
    return torch.stack([rgb[:, i % 3] for i in range(in_channels)], 1) * (3 / in_channels)


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    """Random torchvision MobileNetV2 ImageNet-layout weights in a .pth file, and their tensors."""
    torch.manual_seed(0)
    state = torchvision.models.mobilenet_v2().state_dict()
    path = tmp_path_factory.mktemp("rgb") / "mobilenet.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("in_channels", [4, 1, 2])
def test_rgb_weights_adapt_to_other_band_counts_by_smps_rule(mobilenet_file, in_channels):
    path, state = mobilenet_file
    model = create_model(
        "deeplabv3plus_mobilenetv2", in_channels=in_channels, backbone_weights=path
    )
    rgb = state["features.0.0.weight"]  # (32, 3, 3, 3)
    first = model.backbone.features[0][0].weight.detach()
    assert first.shape == (32, in_channels, 3, 3)
    torch.testing.assert_close(first, rgb_rule_by_hand(rgb, in_channels), rtol=0, atol=1e-7)
    torch.testing.assert_close(first, smp_first_conv(rgb, in_channels), rtol=0, atol=1e-7)
    for key, value in model.backbone.state_dict().items():
        if key != "features.0.0.weight":
            assert torch.equal(value, state[key]), key
    # Weights that already have the bands load as they are; others are a clear error.
    again = create_model(
        "deeplabv3plus_mobilenetv2",
        in_channels=in_channels,
        backbone_weights=model.backbone.state_dict(),
    )
    assert torch.equal(again.backbone.features[0][0].weight, first)
    with pytest.raises(ValueError, match=r"differ in shape: features\.0\.0\.weight"):
        create_model(
            "deeplabv3plus_mobilenetv2", in_channels=5, backbone_weights=again.backbone.state_dict()
        )


def test_bands_repeating_rgb_give_the_rgb_features(mobilenet_file):
    """The 3/n scale keeps the response: six bands R, G, B, R, G, B act as the RGB image."""
    path, _ = mobilenet_file
    rgb = create_model("deeplabv3plus_mobilenetv2", backbone_weights=path).eval()
    six = create_model("deeplabv3plus_mobilenetv2", in_channels=6, backbone_weights=path).eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        expected, got = rgb.backbone(x), six.backbone(torch.cat([x, x], 1))
    for key in ("low", "high"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_four_band_resnet50_loads_imagenet_weights_by_name(torch_hub_cache):
    torch.manual_seed(0)
    state = torchvision.models.resnet50().state_dict()
    torch.save(state, cache_file(torch_hub_cache, ResNet50_Weights.IMAGENET1K_V2))
    model = create_model("deeplabv3plus_resnet50", in_channels=4, backbone_weights="IMAGENET1K_V2")
    rgb = state["conv1.weight"]
    torch.testing.assert_close(model.backbone.conv1.weight.detach(), rgb_rule_by_hand(rgb, 4))
    torch.testing.assert_close(model.backbone.conv1.weight.detach(), smp_first_conv(rgb, 4))
    assert torch.equal(model.backbone.layer3[5].conv2.weight, state["layer3.5.conv2.weight"])


@pytest.mark.slow
def test_four_band_xception_adapts_timm_weights(timm):
    """timm's stem conv, renamed to ours (``stem.0.0``), is the one adapted."""
    torch.manual_seed(0)
    state = timm.create_model("xception41", pretrained=False).state_dict()
    backbone = Xception("xception41", in_channels=4)
    load_backbone_weights(backbone, "xception41", state)
    rgb = state["stem.0.conv.weight"]
    torch.testing.assert_close(backbone.stem[0][0].weight.detach(), rgb_rule_by_hand(rgb, 4))
    assert torch.equal(backbone.stem[1][0].weight, state["stem.1.conv.weight"])
