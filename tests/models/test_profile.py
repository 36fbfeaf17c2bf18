from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from atrous import create_model, profile_model
from atrous.models.paper import decoder_cost, profile_named, render_markdown, reproduce
from atrous.models.profile import conv_mult_adds

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def reproduced():
    return reproduce()


def test_native_count_equals_pytorch_flop_counter():
    """On a real forward pass, our native count is FlopCounterMode's FLOPs / 2."""
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=7, aspp_rates=(2, 3)).eval()
    x = torch.randn(1, 3, 67, 91)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    ours = profile_model(model, (67, 91))
    assert ours.total.mult_adds * 2 == counter.get_total_flops()
    assert ours.total.params == sum(p.numel() for p in model.parameters())
    assert set(ours.groups) == {"backbone", "aspp", "decoder", "classifier"}


def test_tf1_count_pads_dilated_convs_to_a_multiple_of_the_rate():
    conv = nn.Conv2d(8, 4, 3, padding=6, dilation=6)
    native, tf1 = conv_mult_adds(conv, (1, 4, 33, 33))
    assert native == 33 * 33 * 4 * 8 * 9
    assert tf1 == 36 * 36 * 4 * 8 * 9
    conv16 = nn.Conv2d(8, 4, 3, padding=16, dilation=16)
    assert conv_mult_adds(conv16, (1, 4, 65, 65))[1] == 80 * 80 * 4 * 8 * 9
    depthwise = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
    assert conv_mult_adds(depthwise, (1, 8, 33, 33)) == (33 * 33 * 8 * 9, 34 * 34 * 8 * 9)
    plain = nn.Conv2d(8, 4, 1)
    assert conv_mult_adds(plain, (2, 4, 5, 5)) == (2 * 25 * 32, 2 * 25 * 32)


@pytest.mark.slow
def test_paper_tables_within_tolerance(reproduced):
    """Official layouts: TF1 count within 1% of Tables 3/5 (1.5% on the inconsistent row),
    PyTorch count within 10%."""
    assert len(reproduced) == 12
    for result in reproduced:
        row = result.paper
        limit = (
            1.5 if (row.model, row.output_stride) == ("deeplabv3plus_resnet101_beta", 16) else 1.0
        )
        assert abs(result.tf1_deviation) <= limit, row
        assert abs(result.native_deviation) <= 10.0, row


def test_dense_decoder_cost_matches_the_paper():
    assert decoder_cost(16) == pytest.approx(21.76, rel=0.02)
    assert decoder_cost(8) == pytest.approx(21.74, rel=0.02)


@pytest.mark.slow
@pytest.mark.parametrize(("output_stride", "native_cut"), [(16, 37.7), (8, 28.9)])
def test_separable_convs_cut_xception65_mult_adds_by_33_to_41_percent(output_stride, native_cut):
    """The paper's claim, on its own way of counting (TF1): 39.7% at OS16, 32.6% at OS8 (the
    paper's own OS8 rows, 262.59 → 177.10, also give 32.6%, which it rounds to 33%)."""
    dense = profile_named("deeplabv3plus_xception65", output_stride, separable=False).total
    sc = profile_named("deeplabv3plus_xception65", output_stride, separable=True).total
    cut_tf1 = 100 * (1 - sc.mult_adds_tf1 / dense.mult_adds_tf1)
    assert 33 <= round(cut_tf1) <= 41
    # Native dilation makes the dense model cheaper, so the cut measured natively is smaller.
    assert 100 * (1 - sc.mult_adds / dense.mult_adds) == pytest.approx(native_cut, abs=0.1)


@pytest.mark.slow
def test_docs_paper_tables_are_up_to_date(reproduced):
    assert (DOCS / "paper_tables.md").read_text() == render_markdown(reproduced)


def test_profile_groups_and_output_stride():
    with torch.device("meta"):
        model = create_model("deeplabv3_resnet50", output_stride=8)
    profile = profile_model(model, (129, 129))
    assert profile.output_stride == 8
    assert set(profile.groups) == {"backbone", "aspp", "classifier"}
    table = profile.to_markdown()
    assert "| backbone |" in table and "| total |" in table
