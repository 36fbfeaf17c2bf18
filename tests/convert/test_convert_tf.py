"""Official TensorFlow DeepLab checkpoints convert to the official graph's outputs.

How the fixtures in ``fixtures/tf_deeplab/`` were made (``fixtures/tf_deeplab/README.md`` has
the details and versions): tensorflow/models' research/deeplab, run in a scratch environment
outside this repository (tensorflow-cpu 2.21 in graph mode through ``tensorflow.compat.v1``,
tf-slim 1.1, tf-keras 2.21), built each variant with the official flags, set every variable by
:func:`official_weights` below, and ran one seeded random image through it in inference mode.
Committed are only the variable names and shapes, the settings, the image and the outputs. These
tests regenerate the weights by the same rule, write a TF checkpoint (numpy's bundle writer
in ``helpers``; TensorFlow itself is not needed), convert it with
``atrous convert --kind tf`` and compare with the official outputs (≤ 1e-4 of their scale).
"""

import tarfile

import numpy as np
import pytest
import torch
from helpers import TF_FIXTURES, load_fixture, official_weights, write_checkpoint

from atrous.cli import main
from atrous.convert.tf import from_tf_checkpoint, from_tf_variables
from atrous.hub.load import load
from atrous.models.backbones import build_backbone
from atrous.models.backbones.weights import load_backbone_weights

FIXTURES = TF_FIXTURES
RELATIVE = 1e-4


def image_batch(outputs: dict[str, np.ndarray], mean, std) -> torch.Tensor:
    image = torch.from_numpy(outputs["image"]).permute(0, 3, 1, 2).float() / 255
    return (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def assert_matches(ours: torch.Tensor, official_nhwc: np.ndarray) -> None:
    reference = torch.from_numpy(official_nhwc).permute(0, 3, 1, 2)
    assert ours.shape == reference.shape
    relative = (ours - reference).abs().max() / reference.abs().max()
    assert relative <= RELATIVE, f"{relative:.2e} of the official output's scale"
    assert reference.std(dim=(2, 3)).mean() > 0.1 * reference.std()  # real spatial signal


@pytest.mark.slow
def test_xception65_deeplabv3plus_tarball_gives_the_official_logits_at_os16_and_os8(
    tmp_path, capsys
):
    _, variables, outputs = load_fixture("xception65_deeplabv3plus")
    extra = {"global_step": np.array(1000, dtype=np.int64)}
    for name in ("logits/semantic/weights", "aspp0/weights"):
        extra[f"{name}/Momentum"] = np.zeros_like(variables[name])
    folder = tmp_path / "deeplabv3_test_2018_01_04"
    write_checkpoint(variables | extra, folder / "model.ckpt")
    (folder / "frozen_inference_graph.pb").write_bytes(b"not needed")
    tarball = tmp_path / "deeplabv3_test_2018_01_04.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(folder, arcname=folder.name)
    output = tmp_path / "converted"
    command = ["convert", "--kind", "tf", "--source", str(tarball), "--output", str(output)]
    assert main([*command, "--crop_size", "[65,65]", "--dataset", "voc"]) == 1  # 5 ≠ 21 names
    assert main([*command, "--crop_size", "[65,65]"]) == 0
    printed = capsys.readouterr().out
    assert "732 variables converted" in printed
    assert "2 an optimizer slot" in printed and "1 the training step counter" in printed
    model = load(output)
    assert model.config.image_pool_crop_size == (65, 65) and model.config.mean == (0.5,) * 3
    images = image_batch(outputs, model.config.mean, model.config.std)
    for output_stride in (16, 8):
        model.set_output_stride(output_stride)
        with torch.no_grad():
            assert_matches(model(images), outputs[f"logits_os{output_stride}"])


@pytest.mark.slow
def test_mobilenetv2_deeplabv3_folder_gives_the_official_logits(tmp_path):
    """No atrous branches, no decoder, BN eps 1e-3 in the backbone (folded into variances)."""
    _, variables, outputs = load_fixture("mobilenetv2_deeplabv3")
    write_checkpoint(variables, tmp_path / "ckpt" / "model.ckpt")
    model, report = from_tf_checkpoint(tmp_path / "ckpt", crop_size=(65, 65))
    assert report.converted == len(variables) and not report.dropped
    assert model.config.backbone == "mobilenetv2" and model.config.aspp_rates == ()
    assert not model.config.decoder
    images = image_batch(outputs, model.config.mean, model.config.std)
    for output_stride in (16, 8):
        model.set_output_stride(output_stride)
        with torch.no_grad():
            assert_matches(model(images), outputs[f"logits_os{output_stride}"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant",
    [
        "resnet_v1_101_beta_features",
        "xception41_features",
        "xception65_features",
        "xception71_features",
    ],
)
def test_imagenet_backbones_give_the_official_features(variant, tmp_path, capsys):
    """ImageNet checkpoints convert to backbone weights for ``run.backbone_weights``."""
    _, variables, outputs = load_fixture(variant)
    prefix = write_checkpoint(variables, tmp_path / "ckpt" / "model.ckpt")
    command = ["convert", "--kind", "tf", "--source", str(prefix), "--output", str(tmp_path)]
    assert main(command) == 0
    assert f"{len(variables)} variables converted" in capsys.readouterr().out
    name = {"resnet": "resnet101_beta"}.get(variant.split("_")[0], variant.split("_")[0])
    backbone = build_backbone(name, output_stride=16).eval()
    load_backbone_weights(backbone, name, str(tmp_path / "backbone.safetensors"))
    with torch.no_grad():
        features = backbone(image_batch(outputs, (0.5,) * 3, (0.5,) * 3))
    assert_matches(features["high"], outputs["features"])
    assert_matches(features["low"], outputs["low_level"])


def test_a_checkpoint_that_does_not_fit_names_the_variables():
    _, variables, _ = load_fixture("mobilenetv2_deeplabv3")
    variables.pop("aspp0/weights")
    variables["extra/branch/weights"] = np.zeros((1, 1, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"1 missing: aspp0/weights") as error:
        from_tf_variables(variables)
    assert "1 with no counterpart in atrous: extra/branch/weights" in str(error.value)
    with pytest.raises(ValueError, match=r"backbone \(ImageNet\) checkpoint"):
        from_tf_variables({k: v for k, v in variables.items() if not k.startswith("logits")})


def depth_05_variables() -> dict[str, np.ndarray]:
    """The MobileNetV2 fixture's variables at the official depth 0.5 (``divisible_by=1``): every
    backbone channel count halves (16/8/12/16/32/48/80/160, expansions 6× of those)."""
    spec, _, _ = load_fixture("mobilenetv2_deeplabv3")
    variables = {}
    for name, shape in spec["variables"]:
        if name.startswith("MobilenetV2/"):  # kernel sizes, RGB and multipliers are ≤ 3
            shape = [size // 2 if size > 3 else size for size in shape]
        elif name in ("aspp0/weights", "image_pooling/weights"):
            shape = [1, 1, shape[2] // 2, shape[3]]
        variables[name] = official_weights(name, shape, 1.0)
    return variables


def test_a_depth_05_checkpoint_converts_unpatched_with_the_official_rounding(tmp_path, capsys):
    variables = depth_05_variables()
    assert variables["MobilenetV2/expanded_conv_1/project/weights"].shape == (1, 1, 48, 12)
    prefix = write_checkpoint(variables, tmp_path / "ckpt" / "model.ckpt")
    command = ["convert", "--kind", "tf", "--source", str(prefix), "--output", str(tmp_path / "m")]
    assert main(command) == 0
    assert f"{len(variables)} variables converted" in capsys.readouterr().out
    model = load(tmp_path / "m")
    config = model.config
    assert (config.width_multiplier, config.divisible_by, config.min_depth) == (0.5, 1, 1)
    assert model.backbone.out_channels == {"low": 72, "high": 160, "aux": 48}
    kernel = model.state_dict()["backbone.features.2.conv.0.0.weight"]  # expanded_conv_1/expand
    expected = variables["MobilenetV2/expanded_conv_1/expand/weights"].transpose(3, 2, 0, 1)
    assert torch.equal(kernel, torch.from_numpy(expected))


def test_unsupported_official_variants_are_refused_naming_what_is_missing():
    variables = depth_05_variables()
    cases = {
        "dense_prediction_cell/branch0/weights": "the dense prediction cell",
        "MobilenetV3/Conv/weights": "a MobileNetV3 backbone",
        "MobilenetEdgeTPU/Conv/weights": "a MobileNet-EdgeTPU backbone",
    }
    for name, what in cases.items():
        with pytest.raises(ValueError, match=f"needs {what}.*atrous does not have.*{name}"):
            from_tf_variables(variables | {name: np.zeros(1, dtype=np.float32)})
    odd = dict(variables)
    odd["MobilenetV2/expanded_conv_1/project/weights"] = np.zeros((1, 1, 48, 13), np.float32)
    with pytest.raises(ValueError, match=r"channels 16/8/13/12/.* fit no width multiplier"):
        from_tf_variables(odd)
