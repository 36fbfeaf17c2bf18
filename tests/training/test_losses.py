"""The loss terms against reference computations, the official DeepLab hard pixel mining by
hand, the ignore label, the combination of terms, and the class-frequency weights by formula.

References: smp (segmentation_models_pytorch, a dev dependency) where its semantics match ours,
configured as each test says; hand computations from torch primitives elsewhere.
"""

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch.losses as smp_losses
import torch
import torch.nn.functional as F
from torch import nn

from atrous.data.balance import (
    class_weights,
    inverse_log_weights,
    median_frequency_weights,
)
from atrous.training.losses import (
    LossConfig,
    binary_cross_entropy,
    build_loss,
    cross_entropy,
    dice_loss,
    focal_loss,
    lovasz_hinge_loss,
    lovasz_softmax_loss,
    mining_share,
    multilabel_dice_loss,
    sigmoid_focal_loss,
)

IGNORE = 255
K = 4


def multiclass_batch(seed: int = 0, classes: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (2, K, 9, 11) and a target with every class and about 20% ignored pixels."""
    gen = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(2, classes, 9, 11, generator=gen)
    target = torch.randint(0, classes, (2, 9, 11), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.2] = IGNORE
    assert set(target[target != IGNORE].unique().tolist()) == set(range(classes))
    return logits, target


def multilabel_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (2, K, 9, 11) and a 0/1 target (2, K, 9, 11), about 20% of entries ignored."""
    gen = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(2, K, 9, 11, generator=gen)
    target = torch.randint(0, 2, (2, K, 9, 11), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.2] = IGNORE
    return logits, target


def labelled_rows(logits, target):
    """(P, K) logits and (P,) classes of the labelled pixels."""
    rows = logits.movedim(1, -1).reshape(-1, logits.shape[1])
    flat = target.reshape(-1)
    keep = flat != IGNORE
    return rows[keep], flat[keep]


def pixel_ce(logits, target, weights=None):
    """Per-pixel weighted cross-entropy by hand, 0 at ignored pixels, shape (N, H, W)."""
    labelled = target != IGNORE
    safe = torch.where(labelled, target, 0)
    losses = -logits.log_softmax(1).gather(1, safe[:, None])[:, 0]
    if weights is not None:
        losses = losses * weights[safe]
    return losses * labelled


def hand_top_k(losses, share):
    """The official mining by hand: sort, keep int(share·all pixels), divide by nonzero ones."""
    ranked = losses.flatten().sort(descending=True).values
    top = ranked[: int(share * ranked.numel())]
    return top.sum() / (top != 0).sum()


# --- cross-entropy ------------------------------------------------------------------------


def test_default_cross_entropy_is_the_trainers_loss_exactly():
    logits, target = multiclass_batch()
    loss = build_loss(LossConfig(), "multiclass", K, IGNORE, None)
    total, parts = loss({"out": logits}, target, iteration=0)
    labelled = (target != IGNORE).sum()  # the trainer's loss before configurable losses
    plain = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum") / labelled
    assert torch.equal(total, plain)
    assert set(parts) == {"ce", "total"} and parts["ce"] == parts["total"] == total.item()


def test_weighted_cross_entropy_divides_by_labelled_pixels_not_by_weights():
    """Official DeepLab: Σ w_y·(−log p_y) / #labelled (torch's "mean" would divide by Σ w_y)."""
    logits, target = multiclass_batch()
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    expected = pixel_ce(logits, target, weights).sum() / (target != IGNORE).sum()
    got = cross_entropy(logits, target, IGNORE, weights)
    torch.testing.assert_close(got, expected)
    torch_mean = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE)
    assert not torch.allclose(got, torch_mean)


def test_label_smoothing_is_torchs_over_labelled_pixels():
    logits, target = multiclass_batch()
    rows, classes = labelled_rows(logits, target)
    expected = F.cross_entropy(rows, classes, label_smoothing=0.1)
    torch.testing.assert_close(cross_entropy(logits, target, IGNORE, label_smoothing=0.1), expected)


def test_label_smoothing_with_class_weights_by_hand():
    """(1 − ε)·w_y·(−log p_y) + ε/K·Σ_c w_c·(−log p_c), summed over labelled pixels / count."""
    logits, target = multiclass_batch()
    weights, eps = torch.tensor([0.5, 2.0, 1.0, 3.0]), 0.2
    rows, classes = labelled_rows(logits, target)
    log_p = rows.log_softmax(1)
    per_pixel = (1 - eps) * weights[classes] * -log_p.gather(1, classes[:, None])[:, 0]
    per_pixel = per_pixel + eps / K * (weights * -log_p).sum(1)
    got = cross_entropy(logits, target, IGNORE, weights, label_smoothing=eps)
    torch.testing.assert_close(got, per_pixel.mean())


# --- hard pixel mining (OHEM) ----------------------------------------------------------------


def four_pixels() -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Two classes, logits (0, d): pixel losses log(1 + e^±d) written out by hand."""
    d = torch.tensor([2.0, -1.0, 0.0, 3.0])
    logits = torch.stack([torch.zeros(4), d]).view(1, 2, 1, 4)
    target = torch.tensor([[[0, 0, 1, IGNORE]]])
    losses = [math.log(1 + math.e**2), math.log(1 + math.e**-1), math.log(2)]  # the labelled
    return logits, target, losses


@pytest.mark.parametrize(
    ("top_k", "kept"),
    [(0.5, [0, 2]), (0.75, [0, 1, 2]), (1.0, [0, 1, 2])],  # k = int(top_k · 4 pixels)
)
def test_mining_keeps_the_largest_share_of_all_pixels_by_hand(top_k, kept):
    logits, target, losses = four_pixels()
    loss = build_loss(LossConfig(top_k_percent_pixels=top_k), "multiclass", 2, IGNORE, None)
    total, _ = loss({"out": logits}, target, iteration=0)
    assert total.item() == pytest.approx(sum(losses[i] for i in kept) / len(kept), rel=1e-6)


@pytest.mark.parametrize(
    ("iteration", "kept"),
    # share = r·0.5 + 1 − r, r = min(1, it/100): 1 (k 4, the ignored 0 not counted), 0.75, 0.5
    [(0, [0, 1, 2]), (50, [0, 1, 2]), (100, [0, 2]), (250, [0, 2])],
)
def test_mining_ramps_from_all_pixels_to_top_k_by_hand(iteration, kept):
    logits, target, losses = four_pixels()
    config = LossConfig(top_k_percent_pixels=0.5, hard_example_mining_step=100)
    total, _ = build_loss(config, "multiclass", 2, IGNORE, None)({"out": logits}, target, iteration)
    assert total.item() == pytest.approx(sum(losses[i] for i in kept) / len(kept), rel=1e-6)


@pytest.mark.parametrize(
    ("iteration", "share"), [(0, 1.0), (500, (0.3 + 1) / 2), (1000, 0.3), (5000, 0.3)]
)
def test_mining_share_ramp(iteration, share):
    assert mining_share(0.3, 1000, iteration) == pytest.approx(share)
    assert mining_share(0.3, 0, iteration) == 0.3
    assert mining_share(1.0, 0, iteration) is None


@pytest.mark.parametrize("iteration", [0, 500, 1000, 2000])
def test_mined_cross_entropy_matches_a_hand_computation(iteration):
    """Random batch, a class weighted 0 and ignored pixels: more zeros than k − nonzero, so the
    divisor (nonzero kept losses) differs from k; checked against sorting by hand."""
    logits, target = multiclass_batch(seed=3)
    weights = torch.tensor([0.0, 1.0, 2.0, 0.5])
    config = LossConfig(top_k_percent_pixels=0.8, hard_example_mining_step=1000)
    loss = build_loss(config, "multiclass", K, IGNORE, weights)
    total, _ = loss({"out": logits}, target, iteration)
    share = mining_share(0.8, 1000, iteration)
    losses = pixel_ce(logits, target, weights)
    assert (losses != 0).sum() < int(share * losses.numel())
    torch.testing.assert_close(total, hand_top_k(losses, share))


# --- Dice, Lovász, focal ---------------------------------------------------------------------


def test_dice_matches_smp_when_every_class_is_in_the_target():
    """smp DiceLoss(mode="multiclass", from_logits=True, smooth=0, eps=1e-7, ignore_index=255)
    sums over batch and pixels per class and averages over ALL classes, zeroing those absent
    from the target: the same as ours when every class is present."""
    logits, target = multiclass_batch()
    reference = smp_losses.DiceLoss("multiclass", ignore_index=IGNORE, smooth=0.0)
    torch.testing.assert_close(dice_loss(logits, target, IGNORE), reference(logits, target))


def hand_dice(logits, target, classes):
    rows, truth = labelled_rows(logits, target)
    probs = rows.softmax(1)
    per_class = []
    for c in classes:
        p, g = probs[:, c], (truth == c).float()
        per_class.append(1 - 2 * (p * g).sum() / (p.sum() + g.sum()))
    return torch.stack(per_class).mean()


def test_dice_averages_over_classes_in_target_or_prediction():
    logits, target = multiclass_batch()
    target[target == 3] = 0  # class 3 absent from the target
    logits[:, 3] = -20.0  # ... and never predicted: left out of the mean
    torch.testing.assert_close(
        dice_loss(logits, target, IGNORE), hand_dice(logits, target, [0, 1, 2])
    )
    n, y, x = (target != IGNORE).nonzero()[0].tolist()
    logits[n, 3, y, x] = 20.0  # now predicted at one labelled pixel: counted, Dice ≈ 0
    torch.testing.assert_close(
        dice_loss(logits, target, IGNORE), hand_dice(logits, target, [0, 1, 2, 3])
    )


@pytest.mark.parametrize("absent", [False, True])
def test_lovasz_softmax_matches_smp(absent):
    """smp LovaszLoss(mode="multiclass", per_image=False, ignore_index=255): Berman's
    Lovász-softmax over the batch with classes="present", as ours."""
    logits, target = multiclass_batch(seed=1)
    if absent:
        target[target == 2] = 1
    reference = smp_losses.LovaszLoss("multiclass", per_image=False, ignore_index=IGNORE)
    torch.testing.assert_close(
        lovasz_softmax_loss(logits, target, IGNORE), reference(logits, target)
    )


def test_focal_by_hand_and_gamma_zero_is_cross_entropy():
    """smp's multiclass focal sums per-class sigmoid focal losses, not a softmax focal loss,
    so the reference is a hand computation."""
    logits, target = multiclass_batch()
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    rows, classes = labelled_rows(logits, target)
    p_t = rows.softmax(1).gather(1, classes[:, None])[:, 0]
    expected = (-weights[classes] * (1 - p_t) ** 2 * p_t.log()).mean()
    torch.testing.assert_close(focal_loss(logits, target, IGNORE, 2.0, weights), expected)
    torch.testing.assert_close(
        focal_loss(logits, target, IGNORE, 0.0), cross_entropy(logits, target, IGNORE)
    )


def test_binary_is_multiclass_with_two_classes():
    logits, target = multiclass_batch(classes=2)
    config = LossConfig(dice=0.5, lovasz=0.3, focal=0.2)
    binary, _ = build_loss(config, "binary", 2, IGNORE, None)({"out": logits}, target, 0)
    multi, _ = build_loss(config, "multiclass", 2, IGNORE, None)({"out": logits}, target, 0)
    assert torch.equal(binary, multi)


# --- multilabel ------------------------------------------------------------------------------


def test_multilabel_cross_entropy_by_hand():
    """Per-class multipliers (no pos_weight), smoothing t·(1 − ε) + ε/2, labelled entries."""
    logits, target = multilabel_batch()
    weights, eps = torch.tensor([0.5, 2.0, 1.0, 3.0]), 0.1
    keep = target != IGNORE
    smoothed = target.float() * (1 - eps) + eps / 2
    per_entry = F.binary_cross_entropy_with_logits(logits, smoothed, reduction="none")
    per_entry = per_entry * weights.view(1, K, 1, 1)
    got = binary_cross_entropy(logits, target, IGNORE, weights, eps)
    torch.testing.assert_close(got, per_entry[keep].mean())
    mined = binary_cross_entropy(logits, target, IGNORE, weights, eps, share=0.3)
    torch.testing.assert_close(mined, hand_top_k(per_entry * keep, 0.3))


def test_multilabel_dice_matches_smp():
    """smp DiceLoss(mode="multilabel", from_logits=True, smooth=0, ignore_index=255): per class
    over the batch, every class present in the target here."""
    logits, target = multilabel_batch()
    reference = smp_losses.DiceLoss("multilabel", ignore_index=IGNORE, smooth=0.0)
    got = multilabel_dice_loss(logits, target, IGNORE)
    torch.testing.assert_close(got, reference(logits, target))


def test_multilabel_lovasz_is_the_binary_hinge_per_class():
    """Reference: smp LovaszLoss(mode="binary", per_image=False, ignore_index=255) on each
    class alone, averaged over the classes with a labelled entry (class 3 is all ignored;
    class 2 has no positive)."""
    logits, target = multilabel_batch()
    target[:, 2][target[:, 2] == 1] = 0
    target[:, 3] = IGNORE
    reference = smp_losses.LovaszLoss("binary", per_image=False, ignore_index=IGNORE)
    expected = torch.stack([reference(logits[:, c], target[:, c]) for c in range(3)]).mean()
    torch.testing.assert_close(lovasz_hinge_loss(logits, target, IGNORE), expected)


def test_multilabel_focal_by_hand():
    logits, target = multilabel_batch()
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0]).view(1, K, 1, 1)
    keep = target != IGNORE
    p = logits.sigmoid()
    p_t = torch.where(target == 1, p, 1 - p)
    per_entry = -weights * (1 - p_t) ** 2 * p_t.log()
    got = sigmoid_focal_loss(logits, target, IGNORE, 2.0, weights.flatten())
    torch.testing.assert_close(got, per_entry[keep].mean())


def test_multilabel_shapes_are_checked():
    logits, target = multilabel_batch()
    loss = build_loss(LossConfig(dice=1.0), "multilabel", K, IGNORE, None)
    total, parts = loss({"out": logits}, target, 0)
    assert total.shape == () and set(parts) == {"ce", "dice", "total"}
    with pytest.raises(ValueError, match=r"multilabel target must have shape \(2, 4, 9, 11\)"):
        loss({"out": logits}, target[:, 0], 0)
    multiclass = build_loss(LossConfig(), "multiclass", K, IGNORE, None)
    with pytest.raises(ValueError, match=r"multiclass target must have shape \(2, 9, 11\)"):
        multiclass({"out": logits}, target, 0)
    with pytest.raises(ValueError, match=r"logits \(N, 4, H, W\)"):
        multiclass({"out": logits[:, :3]}, target[:, 0], 0)


# --- the ignore label, combination, aux, precision ------------------------------------------


ALL_TERMS = LossConfig(
    cross_entropy=1.0,
    dice=0.5,
    lovasz=0.3,
    focal=0.2,
    label_smoothing=0.1,
    top_k_percent_pixels=0.7,
    hard_example_mining_step=10,
)


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_ignored_pixels_change_neither_loss_nor_gradient(task):
    logits, target = multiclass_batch() if task == "multiclass" else multilabel_batch()
    loss = build_loss(ALL_TERMS, task, K, IGNORE, torch.tensor([0.5, 2.0, 1.0, 3.0]))
    ignored = (target == IGNORE).unsqueeze(1) if task == "multiclass" else target == IGNORE
    ignored = ignored.expand_as(logits)
    other = torch.where(ignored, 30 * torch.randn_like(logits), logits)
    results = []
    for values in (logits, other):
        values = values.clone().requires_grad_()
        total, _ = loss({"out": values}, target, iteration=5)
        total.backward()
        results.append((total, values.grad))
    (first, grad), (second, other_grad) = results
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(grad, other_grad)
    assert torch.all(grad[ignored] == 0) and grad[~ignored].abs().sum() > 0


def test_terms_combine_with_their_weights():
    logits, target = multiclass_batch()
    total, parts = build_loss(
        LossConfig(cross_entropy=1.0, dice=0.5), "multiclass", K, IGNORE, None
    )({"out": logits}, target, 0)
    ce, dice = cross_entropy(logits, target, IGNORE), dice_loss(logits, target, IGNORE)
    torch.testing.assert_close(total, 1.0 * ce + 0.5 * dice)
    assert parts["ce"] == pytest.approx(ce.item()) and parts["dice"] == pytest.approx(dice.item())
    assert set(parts) == {"ce", "dice", "total"}


def test_aux_logits_get_the_same_loss_times_aux_weight():
    logits, target = multiclass_batch()
    aux = multiclass_batch(seed=7)[0]
    config = LossConfig(dice=0.5, lovasz=0.25)
    loss = build_loss(config, "multiclass", K, IGNORE, None)
    main, _ = loss({"out": logits}, target, 0)
    alone, _ = loss({"out": aux}, target, 0)
    total, parts = loss({"out": logits, "aux": aux}, target, 0)
    torch.testing.assert_close(total, main + 0.4 * alone)
    assert parts["aux"] == pytest.approx(alone.item())
    assert parts["total"] == pytest.approx(
        parts["ce"] + 0.5 * parts["dice"] + 0.25 * parts["lovasz"] + 0.4 * parts["aux"]
    )
    no_aux = build_loss(
        LossConfig(dice=0.5, lovasz=0.25, aux_weight=0.0), "multiclass", K, IGNORE, None
    )
    total, parts = no_aux({"out": logits, "aux": aux}, target, 0)
    assert "aux" not in parts and torch.equal(total, main)


def test_losses_are_float32_under_autocast():
    logits, target = multiclass_batch()
    low = logits.bfloat16()
    loss = build_loss(ALL_TERMS, "multiclass", K, IGNORE, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = loss({"out": low}, target, 3)
    assert total.dtype == torch.float32
    torch.testing.assert_close(total, loss({"out": low.float()}, target, 3)[0])


def test_a_batch_with_no_labelled_pixel_costs_zero():
    logits = torch.randn(1, K, 5, 5, requires_grad=True)
    target = torch.full((1, 5, 5), IGNORE)
    total, _ = build_loss(ALL_TERMS, "multiclass", K, IGNORE, None)({"out": logits}, target, 20)
    total.backward()
    assert total.item() == 0 and torch.all(logits.grad == 0)


# --- configuration errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dice": -1.0}, "loss.dice must be a finite number >= 0"),
        ({"aux_weight": float("nan")}, "loss.aux_weight must be a finite number"),
        ({"focal_gamma": -2.0}, "loss.focal_gamma must be"),
        ({"cross_entropy": 0.0}, "all 0; give one a positive weight"),
        ({"label_smoothing": 1.0}, r"loss.label_smoothing must be in \[0, 1\)"),
        ({"top_k_percent_pixels": 0.0}, r"loss.top_k_percent_pixels must be in \(0, 1\]"),
        ({"top_k_percent_pixels": 1.5}, r"loss.top_k_percent_pixels must be in \(0, 1\]"),
        ({"cross_entropy": 0.0, "dice": 1.0, "top_k_percent_pixels": 0.5}, "mines the cross"),
        ({"hard_example_mining_step": -1, "top_k_percent_pixels": 0.5}, "must be >= 0"),
        ({"hard_example_mining_step": 100}, "top_k_percent_pixels, which is 1"),
        ({"class_weighting": "inverse"}, "loss.class_weighting must be one of none, median"),
        ({"class_weights": [1.0, -1.0]}, "loss.class_weights must be finite and >= 0"),
        ({"class_weights": [0.0, 0.0]}, "loss.class_weights are all 0"),
        ({"class_weights": [1.0], "class_weighting": "inverse_log"}, "not both"),
    ],
)
def test_bad_loss_config_is_a_clear_error(changes, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**changes)


@pytest.mark.parametrize(
    ("config", "task", "classes", "weights", "message"),
    [
        (LossConfig(), "instance", K, None, "unknown task 'instance'; available: multiclass"),
        (LossConfig(), "binary", 3, None, "a binary task has 2 classes"),
        (LossConfig(), "multiclass", 1, None, "needs at least 2 classes"),
        (LossConfig(class_weighting="median_frequency"), "multiclass", K, None, "needs the"),
        (LossConfig(class_weights=[1.0, 2.0]), "multiclass", K, None, "needs 4 weights"),
        (LossConfig(class_weights=[1.0] * K), "multiclass", K, torch.ones(K), "given twice"),
        (LossConfig(), "multiclass", K, torch.tensor([1.0, -1, 1, 1]), "finite and >= 0"),
    ],
)
def test_bad_build_arguments_are_clear_errors(config, task, classes, weights, message):
    with pytest.raises(ValueError, match=message):
        build_loss(config, task, classes, IGNORE, weights)


def test_outputs_without_logits_are_an_error():
    loss = build_loss(LossConfig(), "multiclass", K, IGNORE, None)
    with pytest.raises(ValueError, match=r"needs outputs\['out'\]"):
        loss({"logits": torch.zeros(1, K, 2, 2)}, torch.zeros(1, 2, 2, dtype=torch.long), 0)


def test_src_does_not_import_smp():
    """smp is a dev dependency: no module of the library imports it, not even lazily."""
    src = Path(__file__).resolve().parents[2] / "src" / "atrous"
    users = []
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(name.split(".")[0] == "segmentation_models_pytorch" for name in names):
                users.append(path.name)
    assert not users


# --- class-frequency weights -----------------------------------------------------------------


def test_median_frequency_weights_by_formula():
    """freq = pixels / present_pixels = (0.3, 0.1, 0.5, 0.05, unseen); the median of the four
    seen ones is (0.1 + 0.3) / 2 = 0.2, so w = 0.2 / freq, and 0 for the unseen class."""
    pixels = np.array([30, 10, 20, 5, 0])
    present = np.array([100, 100, 40, 100, 0])
    expected = [0.2 / 0.3, 0.2 / 0.1, 0.2 / 0.5, 0.2 / 0.05, 0.0]
    np.testing.assert_allclose(median_frequency_weights(pixels, present), expected)
    np.testing.assert_allclose(class_weights("median_frequency", pixels, present), expected)


def test_inverse_log_weights_by_formula():
    """p = pixels / 100 = (0.5, 0.3, 0.2, 0): w = 1 / ln(1.02 + p), 0 for the unseen class."""
    pixels = np.array([50, 30, 20, 0])
    expected = [1 / math.log(1.52), 1 / math.log(1.32), 1 / math.log(1.22), 0.0]
    np.testing.assert_allclose(inverse_log_weights(pixels), expected)
    np.testing.assert_allclose(class_weights("inverse_log", pixels, pixels), expected)
    np.testing.assert_allclose(inverse_log_weights(pixels, c=1.5)[0], 1 / math.log(2.0))
    np.testing.assert_array_equal(class_weights("none", pixels, pixels), np.ones(4))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: median_frequency_weights([1, 2], [3]), "pixels has 2 classes but"),
        (lambda: median_frequency_weights([5, 2], [3, 3]), "exceed the pixels of the images"),
        (lambda: median_frequency_weights([0, 0], [0, 0]), "no class has a labelled pixel"),
        (lambda: median_frequency_weights([[1]], [[1]]), "one count per class"),
        (lambda: inverse_log_weights([1, -1]), "finite non-negative pixel counts"),
        (lambda: inverse_log_weights([0, 0]), "no class has a labelled pixel"),
        (lambda: inverse_log_weights([1, 1], c=1.0), "needs c > 1"),
        (lambda: class_weights("enet", [1], [1]), "unknown class weighting 'enet'"),
    ],
)
def test_bad_counts_are_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- learning ------------------------------------------------------------------------------


def test_dice_plus_cross_entropy_trains_a_tiny_net():
    """30 Adam steps of CE + 0.5·Dice on "the class is the brightest channel" (10% ignored)."""
    torch.manual_seed(0)
    images = torch.randn(8, 3, 16, 16)
    target = images.argmax(1)
    target[torch.rand(target.shape) < 0.1] = IGNORE
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    loss = build_loss(LossConfig(cross_entropy=1.0, dice=0.5), "multiclass", 3, IGNORE, None)
    history = []
    for step in range(30):
        total, parts = loss({"out": net(images)}, target, step)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(parts)
    assert history[-1]["total"] < 0.5 * history[0]["total"]
    assert history[-1]["dice"] < history[0]["dice"]


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_focal_gradient_stays_finite_at_confident_ignored_pixels(task):
    """With γ < 1, (1 − p_t)^γ has an infinite slope at p_t = 1; an ignored pixel whose logits
    saturate p_t must not turn the gradient into NaN (0 · ∞)."""
    logits, target = multiclass_batch() if task == "multiclass" else multilabel_batch()
    where = (target == IGNORE).nonzero()[0].tolist()
    target_index = tuple(where)
    logits_index = (where[0], 0, *where[1:]) if task == "multiclass" else target_index
    logits[logits_index] = 200.0 if task == "multiclass" else -200.0  # p_t = 1 for truth 0
    logits.requires_grad_()
    loss = build_loss(LossConfig(focal=1.0, focal_gamma=0.5), task, K, IGNORE, None)
    loss({"out": logits}, target, 0)[0].backward()
    assert torch.isfinite(logits.grad).all()
