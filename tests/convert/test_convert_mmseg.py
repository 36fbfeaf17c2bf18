"""mmsegmentation's DeepLabV3+ (ResNetV1c-50-D8) converts to mmsegmentation's own logits.

``fixtures/mmseg/README.md`` says how the fixture was made: mmsegmentation run outside this
repository on weights set by :func:`mmseg_weights`; the test rebuilds the same state dict with
torch alone, saves it as an mmsegmentation checkpoint, converts it with ``atrous convert --kind
mmseg`` and compares logits at an odd and an even size.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from atrous.cli import main
from atrous.convert.mmseg import from_mmseg
from atrous.data.palettes import VOC_CLASSES
from atrous.hub.load import load

FIXTURES = Path(__file__).parents[1] / "fixtures" / "mmseg"


def mmseg_weights(keys_and_shapes: list) -> dict[str, torch.Tensor]:
    """The fixture's state dict: one seeded generator, in state-dict order."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in keys_and_shapes:
        shape = tuple(shape)
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) * 0.5 + 0.75
        elif key.endswith("running_mean"):
            state[key] = torch.randn(shape, generator=generator) * 0.1
        elif re.search(r"(bn3|downsample\.1)\.weight$", key):
            state[key] = torch.rand(shape, generator=generator) * 0.2 + 0.1
        elif len(shape) == 1 and re.search(
            r"\.bn\d*\.weight$|\.bn\.weight$|stem\.\d+\.weight$", key
        ):
            state[key] = torch.rand(shape, generator=generator) * 0.5 + 0.75
        elif len(shape) == 1:
            state[key] = torch.randn(shape, generator=generator) * 0.1
        else:
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
    return state


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An mmsegmentation-format checkpoint: meta with the dataset's classes, and the weights."""
    keys = json.loads((FIXTURES / "deeplabv3plus_r50_d8.json").read_text())
    path = tmp_path_factory.mktemp("mmseg") / "deeplabv3plus_r50-d8.pth"
    meta = {"dataset_meta": {"classes": list(VOC_CLASSES)}, "mmseg_version": "1.2.2"}
    torch.save({"meta": meta, "state_dict": mmseg_weights(keys)}, path)
    return path


@pytest.mark.slow
def test_mmseg_deeplabv3plus_gives_mmsegs_logits_at_odd_and_even_sizes(checkpoint, tmp_path):
    output = tmp_path / "atrous"
    command = ["convert", "--kind", "mmseg", "--source", str(checkpoint), "--output", str(output)]
    assert main(command) == 0
    model = load(output)
    assert model.config.backbone == "resnet50_v1c" and model.config.output_stride == 8
    assert model.config.aspp_projection_kernel == 3 and not model.config.align_corners
    assert model.class_names == VOC_CLASSES
    with np.load(FIXTURES / "deeplabv3plus_r50_d8.npz") as arrays:
        expected = dict(arrays)
    for height, width in ((65, 65), (64, 80)):
        generator = torch.Generator().manual_seed(height * 1000 + width)
        images = torch.randn(1, 3, height, width, generator=generator)
        reference = torch.from_numpy(expected[f"logits_{height}x{width}"])
        with torch.no_grad():
            logits = model(images)
        assert (logits - reference).abs().max() <= 1e-4 * reference.abs().max()
        assert reference.std(dim=(2, 3)).mean() > 0.1 * reference.std()


def test_other_checkpoints_are_refused():
    with pytest.raises(ValueError, match="not an mmsegmentation DeepLabV3\\+"):
        from_mmseg({"backbone.stem.0.weight": torch.zeros(32, 3, 3, 3)})
