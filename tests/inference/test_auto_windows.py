"""Region-by-region inference above ``InferenceConfig.max_pixels``: equal to whole-image
inference away from region edges, with no network input larger than the window."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import decisive_model

from atrous.evaluation.protocols import ATROUS, protocol_probabilities
from atrous.inference.predict import Segmenter
from atrous.inference.regions import (
    needs_regions,
    regions,
    scale_period,
    segment_labels,
    segment_regions,
    spans,
)
from atrous.inference.strategies import InferenceConfig, segment
from atrous.models.zoo import create_model


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(1, 3, H, W) normalised pixels that vary smoothly, as photographs do."""
    coarse = torch.randn(
        1, 3, height // 8, width // 8, generator=torch.Generator().manual_seed(seed)
    )
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)


def away_from_seams(network, height: int, width: int, config: InferenceConfig, seam: int = 8):
    """(H, W) True at least ``seam`` pixels from every region's inner core boundary."""
    keep = torch.ones(height, width, dtype=torch.bool)
    for region in regions(network, height, width, config):
        for cut in (region.core_rows.start, region.core_rows.stop):
            if 0 < cut < height:
                keep[max(0, cut - seam) : cut + seam] = False
        for cut in (region.core_cols.start, region.core_cols.stop):
            if 0 < cut < width:
                keep[:, max(0, cut - seam) : cut + seam] = False
    return keep


class Recording:
    """A network that records the size of every input it is given."""

    def __init__(self, network) -> None:
        self.network, self.inputs = network, []
        self.output_stride, self.align_corners = network.output_stride, network.align_corners

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.inputs.append(tuple(images.shape))
        return self.network(images)


@pytest.mark.parametrize("length, side, margin, grid", [(161, 97, 16, 16), (1000, 257, 43, 64)])
def test_cores_split_the_image_and_sit_inside_their_crops(length, side, margin, grid):
    found = spans(length, side, margin, grid)
    assert found[0][1].start == 0 and found[-1][1].stop == length
    for (crop, core), (_, following) in zip(
        found, [*found[1:], (0, slice(length, 0))], strict=True
    ):
        assert core.stop == following.start  # each pixel in exactly one core
        assert crop.start % grid == 0 and crop.stop - crop.start <= side
        assert crop.start <= max(0, core.start - margin)  # context before the core
        assert crop.stop >= min(length, core.stop + margin)  # and after it
    assert spans(90, 97, 16, 16) == [(slice(0, 90), slice(0, 90))]


def test_offsets_follow_every_scale_grid():
    assert scale_period((1.0,)) == 1 and scale_period((0.5, 1.0, 1.5)) == 2
    assert scale_period((0.5, 0.75, 1.0, 1.25, 1.5, 1.75)) == 4 and scale_period((1.1,)) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [InferenceConfig(max_pixels=97 * 97), InferenceConfig(max_pixels=113**2, scales=(0.5, 1.0))],
    ids=["plain", "scales"],
)
def test_regions_equal_the_whole_image_away_from_seams(config):
    image = smooth_image(129, 161)
    model = decisive_model(image)
    network = Recording(model)
    whole = segment(model, image, dataclasses.replace(config, max_pixels=None))
    windowed = segment_regions(network, image, config)
    found = regions(model, 129, 161, config)
    assert len(found) >= 4 and needs_regions(image, config)
    assert len(network.inputs) == len(found) * config.passes  # one region at a time
    assert max(h * w for *_, h, w in network.inputs) <= config.max_pixels
    keep = away_from_seams(model, 129, 161, config)
    difference = (whole - windowed).abs().amax(1)[0][keep]
    assert whole.amax(1).min() < 0.6 and whole.amax(1).max() > 0.95  # real decisions to compare
    # Context beyond a region's margin is cut off: a little at these ~100-pixel windows, less
    # at real ones (1025 pixels; docs/performance.md, benchmarks/predict_memory.py)
    assert difference.max() < 0.06 and difference.mean() < 0.01
    agree = (whole.argmax(1) == windowed.argmax(1))[0][keep].float().mean()
    assert agree > 0.995
    assert torch.equal(segment_labels(model, image, config).labels, windowed.argmax(1).byte())


@pytest.mark.slow
def test_image_pooling_pools_a_region_and_still_agrees_mostly():
    image = smooth_image(129, 161)
    model = decisive_model(image, pooling=True)
    config = InferenceConfig(max_pixels=97 * 97)
    whole = segment(model, image, dataclasses.replace(config, max_pixels=None))
    keep = away_from_seams(model, 129, 161, config)
    agree = (whole.argmax(1) == segment_regions(model, image, config).argmax(1))[0][keep]
    assert agree.float().mean() > 0.95


@pytest.mark.slow
def test_every_path_stays_within_the_window():
    image = smooth_image(129, 161)
    model = decisive_model(image)
    config = InferenceConfig(max_pixels=97 * 97)
    for run in (
        lambda net: segment_labels(net, image, config, maps=["confidence"]),
        lambda net: protocol_probabilities(net, image, ATROUS, config),
        lambda net: Segmenter(net, (0, 0, 0), (1, 1, 1), 3, inference=config).labels(image),
    ):
        network = Recording(model)
        run(network)
        assert max(h * w for *_, h, w in network.inputs) <= config.max_pixels
        assert len(network.inputs) == len(regions(model, 129, 161, config))


def test_a_window_names_the_region_side_divided_by_the_largest_scale():
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25)
    config = InferenceConfig(window=65, scales=(0.5, 1.0, 1.25), max_pixels=4096)
    found = regions(model, 129, 161, config)
    assert max(c.stop - c.start for r in found for c in (r.rows, r.cols)) == 49  # 65/1.25 → OS·3+1
    assert len(found) > 1


def test_small_images_and_no_limit_run_whole():
    image = smooth_image(65, 81)
    network = Recording(decisive_model(image))
    segment_labels(network, image, InferenceConfig(max_pixels=65 * 81))
    segment_labels(network, smooth_image(129, 161), InferenceConfig(max_pixels=None))
    assert network.inputs == [(1, 3, 65, 81), (1, 3, 129, 161)]


def test_a_tiny_max_pixels_is_refused():
    with pytest.raises(ValueError, match="max_pixels"):
        InferenceConfig(max_pixels=100)
