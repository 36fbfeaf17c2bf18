import pytest
import torch
from torchvision import tv_tensors

from atrous.data import RandomScale, normalisation, training_transform
from atrous.data.sampler import AugmentedSamples, EpochSampler

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def pair(h=40, w=30):
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.randint(0, 5, (h, w)))
    return image, mask


def test_random_scale_uses_the_step_grid():
    scale = RandomScale(0.5, 2.0, 0.25)
    image, mask = pair(40, 40)
    seen = set()
    for seed in range(200):
        torch.manual_seed(seed)
        out_image, out_mask = scale(image, mask)
        assert out_image.shape[-2:] == out_mask.shape[-2:]
        seen.add(out_image.shape[-1] / 40)
    assert seen == {0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0}
    with pytest.raises(ValueError, match="0 < min_scale <= max_scale"):
        RandomScale(2.0, 1.0)


def test_masks_are_resized_with_nearest_neighbour():
    """Output pixel (i, j) of a 21×17 mask scaled to 37×30 is input pixel
    (floor(i·21/37), floor(j·17/30)); every input value is distinct, so interpolating or
    choosing the neighbour another way (centres: floor((i + ½)·21/37)) gives other values."""
    image, _ = pair(21, 17)
    mask = tv_tensors.Mask(torch.arange(21 * 17).reshape(21, 17))
    _, out = RandomScale(1.75, 1.75, 0)(image, mask)
    rows, cols = (torch.arange(n) * size // n for n, size in ((37, 21), (30, 17)))
    assert torch.equal(out, mask[rows][:, cols])
    centres = [((2 * torch.arange(n) + 1) * size) // (2 * n) for n, size in ((37, 21), (30, 17))]
    assert not torch.equal(out, mask[centres[0]][:, centres[1]])


def test_training_transform_pads_with_mean_pixel_and_ignore_label():
    image, mask = pair(20, 16)
    transform = training_transform(33, MEAN, STD, scale_range=(1.0, 1.0), flip=False)
    torch.manual_seed(0)
    out_image, out_mask = transform(image, mask)
    assert out_image.shape == (3, 33, 33) and out_image.dtype == torch.float32
    assert out_mask.shape == (33, 33) and out_mask.dtype == torch.int64
    padded = out_mask == 255
    assert padded.sum() == 33 * 33 - 20 * 16
    # The mean pixel normalises to (nearly) zero.
    assert out_image.permute(1, 2, 0)[padded].abs().max() < 0.01
    kept = out_mask[~padded]
    assert torch.equal(kept.sort().values, mask.flatten().sort().values)


def test_training_transform_flip_moves_image_and_mask_together():
    image, mask = pair(33, 33)
    transform = training_transform(33, MEAN, STD, scale_range=(1.0, 1.0), flip=True)
    reference = normalisation(MEAN, STD)(image, mask)
    flips = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, mask)
        if torch.equal(out_mask, reference[1].flip(-1)) and not torch.equal(out_mask, reference[1]):
            torch.testing.assert_close(out_image, reference[0].flip(-1))
            flips += 1
        else:
            assert torch.equal(out_mask, reference[1])
    assert 0 < flips < 20


def test_sampler_splits_global_batches_across_processes():
    single = list(EpochSampler(20, batch_size=4, num_replicas=1, seed=3))
    rank0 = list(EpochSampler(20, batch_size=2, num_replicas=2, rank=0, seed=3))
    rank1 = list(EpochSampler(20, batch_size=2, num_replicas=2, rank=1, seed=3))
    # Step s: the single process's batch is rank 0's and rank 1's micro-batches together.
    for step in range(5):
        merged = rank0[2 * step : 2 * step + 2] + rank1[2 * step : 2 * step + 2]
        assert merged == single[4 * step : 4 * step + 4]
    assert sorted(i for _, i in single) == list(range(20))


def test_sampler_resumes_mid_epoch():
    sampler = EpochSampler(10, batch_size=3, seed=1)
    sampler.set_position(2)
    whole = list(sampler)
    assert len(whole) == 9 and all(epoch == 2 for epoch, _ in whole)
    sampler.set_position(2, start_batch=2)
    assert list(sampler) == whole[6:] and len(sampler) == 3
    sampler.set_position(3)
    assert list(sampler) != whole
    with pytest.raises(ValueError, match="fewer than one global batch"):
        EpochSampler(3, batch_size=2, num_replicas=2)


def test_augmented_samples_are_a_function_of_seed_epoch_and_index():
    data = [pair(24, 24) for _ in range(3)]
    transform = training_transform(17, MEAN, STD)
    samples = AugmentedSamples(data, transform, seed=7)
    torch.manual_seed(123)
    first = samples[(0, 1)]
    state = torch.get_rng_state()
    torch.manual_seed(999)
    again = samples[(0, 1)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(samples[(1, 1)][0], first[0])  # another epoch, another augmentation
    torch.manual_seed(123)
    samples[(0, 1)]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left untouched


def test_multilabel_masks_and_float_bands_move_together():
    """(K, H, W) masks with a 4-band float image: padded with the ignore label and the mean
    bands, cropped and flipped as one (band k is a function of mask plane k at every pixel)."""
    mean, std = (0.1, 0.2, 0.3, 0.4), (0.5, 0.25, 0.5, 0.25)
    planes = torch.randint(0, 2, (2, 20, 16))
    bands = torch.cat([planes * 0.5 + 0.25, torch.rand(2, 20, 16)]).float()
    image, mask = tv_tensors.Image(bands), tv_tensors.Mask(planes)
    transform = training_transform(33, mean, std, scale_range=(1.0, 1.0), flip=True)
    for seed in range(6):
        torch.manual_seed(seed)
        out_image, out_mask = transform(image, mask)
        assert out_image.shape == (4, 33, 33) and out_image.dtype == torch.float32
        assert out_mask.shape == (2, 33, 33) and out_mask.dtype == torch.int64
        padded = out_mask[0] == 255
        assert torch.equal(padded, out_mask[1] == 255) and padded.sum() == 33 * 33 - 20 * 16
        assert out_image[:, padded].abs().max() < 1e-6  # the mean bands normalise to zero
        raw = out_image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
        for k in range(2):
            torch.testing.assert_close(raw[k][~padded], out_mask[k][~padded] * 0.5 + 0.25)
    with pytest.raises(ValueError, match="color_jitter works on RGB images"):
        training_transform(33, mean, std, color_jitter=0.4)


def test_random_scale_resizes_multilabel_masks_with_nearest_neighbour():
    image = tv_tensors.Image(torch.rand(4, 6, 5))
    mask = tv_tensors.Mask(torch.randint(0, 2, (3, 6, 5)))
    out_image, out_mask = RandomScale(2.0, 2.0, 0)(image, mask)
    assert out_image.shape == (4, 12, 10)
    assert torch.equal(out_mask, mask.repeat_interleave(2, -1).repeat_interleave(2, -2))
