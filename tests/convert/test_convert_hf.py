"""transformers' MobileNetV2ForSemanticSegmentation (the Hub's official DeepLabV3 MobileNetV2 VOC
model) converts to equal logits, at odd and even input sizes, with its TF "SAME" padding."""

import json

import pytest
import torch
import torch.nn.functional as F

from atrous.cli import main
from atrous.convert.hf import from_transformers
from atrous.hub.load import load
from atrous.models.model import build_model

transformers = pytest.importorskip("transformers")


def random_hf_model(folder, output_stride: int):
    """A randomly initialised model, BN statistics and scales drawn too, saved as the Hub's."""
    config = transformers.MobileNetV2Config(
        num_labels=5,
        output_stride=output_stride,
        id2label={i: f"class{i}" for i in range(5)},
        label2id={f"class{i}": i for i in range(5)},
    )
    model = transformers.MobileNetV2ForSemanticSegmentation(config).eval()
    generator = torch.Generator().manual_seed(output_stride)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.normal_(0, 0.1, generator=generator)
        elif isinstance(module, torch.nn.Conv2d):
            std = 1.2 / module.weight[0].numel() ** 0.5  # real spatial signal in the logits
            module.weight.data.normal_(0, std, generator=generator)
    model.save_pretrained(folder)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("output_stride", [8, 16])
def test_transformers_mobilenetv2_gives_the_same_logits(tmp_path, output_stride, capsys):
    reference = random_hf_model(tmp_path / "hf", output_stride)
    command = ["convert", "--kind", "transformers", "--source", str(tmp_path / "hf")]
    assert main([*command, "--output", str(tmp_path / "atrous")]) == 0
    model = load(tmp_path / "atrous")
    assert model.config.tf_padding and model.config.output_stride == output_stride
    assert model.class_names == tuple(f"class{i}" for i in range(5))
    generator = torch.Generator().manual_seed(0)
    for size in ((65, 65), (64, 80)):  # odd: symmetric padding; even: TF's extra bottom/right
        images = torch.randn(1, 3, *size, generator=generator)
        with torch.no_grad():
            theirs = reference(pixel_values=images).logits  # at the output stride
            theirs = F.interpolate(theirs, size=size, mode="bilinear", align_corners=True)
            ours = model(images)
        assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max(), size
        assert theirs.std(dim=(2, 3)).mean() > 0.1 * theirs.std()
    plain = build_model(model.config.replace(tf_padding=False)).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():  # without TF padding the even size is off: the option is needed
        assert (plain(images) - theirs).abs().max() > 0.01 * theirs.abs().max()


def test_other_transformers_models_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "segformer"}))
    with pytest.raises(ValueError, match="not a transformers MobileNetV2ForSemanticSegmentation"):
        from_transformers(tmp_path)
