"""One config: every ``ModelConfig`` field keeps its name in ``create_model`` and on the command
line, and the output stride a model runs at is the one its config, saves and exports report."""

import dataclasses
import json

import pytest
import torch
from jsonargparse import auto_parser

from atrous import ModelConfig, create_model
from atrous.cli import COMMANDS
from atrous.export.onnx import model_metadata

#: A value other than the default for every field (a new field fails the first test until it
#: is listed here, and so until it is checked below).
VALUES = {
    "backbone": "resnet50",
    "decoder": False,
    "num_classes": 5,
    "task": "multilabel",
    "output_stride": 8,
    "separable": True,
    "aspp_channels": 64,
    "aspp_rates": (1, 2, 3),
    "aspp_dropout": 0.2,
    "image_pool_crop_size": (65, 65),
    "low_level_channels": 24,
    "decoder_channels": 64,
    "decoder_convs": 1,
    "multi_grid": (1, 2, 4),
    "width_multiplier": 0.5,
    "divisible_by": 1,
    "min_depth": 1,
    "post_aspp_convs": 1,
    "separable_depthwise_bn": False,
    "align_corners": False,
    "dilate_removed_stride_units": True,
    "aspp_projection_kernel": 3,
    "tf_padding": True,
    "input_mean": (0.1, 0.2, 0.3),
    "input_std": (0.5, 0.5, 0.25),
    "in_channels": 4,
    "aux_head": True,
}


def test_every_field_has_a_value_here_that_is_not_its_default():
    defaults = ModelConfig()
    assert set(VALUES) == {field.name for field in dataclasses.fields(ModelConfig)}
    assert [name for name, value in VALUES.items() if getattr(defaults, name) == value] == []


@pytest.mark.parametrize("name", list(VALUES))
def test_create_model_sets_every_field_by_its_name(name):
    mobilenet = name in ("width_multiplier", "divisible_by", "min_depth")
    base = "deeplabv3plus_mobilenetv2" if mobilenet else "deeplabv3plus_resnet50"
    with torch.device("meta"):
        model = create_model(base, **{name: VALUES[name]})
    assert getattr(model.config, name) == VALUES[name]


def test_create_model_names_an_unknown_field():
    with pytest.raises(ValueError, match=r"create_model got atrous_rates, which ModelConfig"):
        create_model("deeplabv3plus_resnet50", atrous_rates=(6, 12, 18))


def test_every_field_is_a_train_option_of_the_same_name():
    parser = auto_parser(COMMANDS)  # the parser `atrous` runs
    for name, value in VALUES.items():
        text = value if isinstance(value, str) else json.dumps(value)
        parsed = parser.parse_args(["train", f"--model.{name}", text]).train.model
        assert parsed[name] == value, name


def test_convert_calls_the_aspp_rates_by_the_config_name():
    parser = auto_parser(COMMANDS)
    options = ["--source", "x.pth", "--kind", "smp", "--output", "out"]
    parsed = parser.parse_args(["convert", *options, "--aspp_rates", "[6, 12, 18]"]).convert
    assert parsed.aspp_rates == [6, 12, 18]


def test_set_output_stride_shows_in_the_config_and_derived_rates_follow():
    model = create_model("deeplabv3plus_resnet50", num_classes=3)
    assert model.config.output_stride == 16 and model.aspp.rates == (6, 12, 18)
    model.set_output_stride(8)
    assert model.config.output_stride == 8 and model.output_stride == 8
    assert model.config.aspp_rates is None and model.aspp.rates == (12, 24, 36)  # derived
    fixed = create_model("deeplabv3plus_resnet50", num_classes=3, aspp_rates=(3, 5, 7))
    fixed.set_output_stride(8)
    assert fixed.config.aspp_rates == (3, 5, 7) == fixed.aspp.rates  # given: kept as given


def test_set_output_stride_shows_in_the_saved_config_and_the_onnx_metadata(tmp_path):
    """What export writes into the ONNX file (a whole export at OS8 runs in test_export.py)."""
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25)
    model.set_output_stride(8)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["output_stride"] == 8
    assert model_metadata(model)["config"]["output_stride"] == 8
