import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
from sklearn.metrics import jaccard_score, precision_recall_fscore_support

from atrous.evaluation.metrics import (
    ConfusionMatrix,
    MultilabelConfusion,
    TrimapMeter,
    boundary_band,
)
from atrous.evaluation.plots import plot_confusion, row_normalised


def reference_confusion(pred, target, n, ignore=255):
    valid = target != ignore
    return sklearn_confusion_matrix(target[valid], pred[valid], labels=np.arange(n))


def random_labels(seed, n=5, shape=(4, 17, 23)):
    """Random true/predicted label maps, 60% agreeing, with 10% ignore pixels."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, n, shape)
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(
        rng.random(target.shape) < 0.6,
        np.where(target == 255, 0, target),
        rng.integers(0, n, target.shape),
    )
    return pred, target


def test_confusion_matrix_and_scores_match_sklearn():
    n = 5
    pred, target = random_labels(0, n)
    confusion = ConfusionMatrix(n)
    for p, t in zip(pred, target, strict=True):
        confusion.update(torch.from_numpy(p), torch.from_numpy(t))
    expected = reference_confusion(pred, target, n)
    np.testing.assert_array_equal(confusion.matrix.numpy(), expected)
    scores = confusion.scores()
    tp = np.diag(expected)
    iou = tp / (expected.sum(0) + expected.sum(1) - tp)
    np.testing.assert_allclose(scores.iou, iou)
    assert scores.mean_iou == pytest.approx(iou.mean())
    assert scores.pixel_accuracy == pytest.approx(tp.sum() / expected.sum())
    assert scores.mean_class_accuracy == pytest.approx((tp / expected.sum(1)).mean())
    freq = expected.sum(1) / expected.sum()
    assert scores.frequency_weighted_iou == pytest.approx((freq * iou).sum())


def test_absent_classes_are_excluded_from_the_mean():
    confusion = ConfusionMatrix(4)
    confusion.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))
    scores = confusion.scores()
    assert scores.absent_classes == [2, 3]
    assert np.isnan(scores.iou[2]) and np.isnan(scores.iou[3])
    assert scores.mean_iou == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_dice_precision_recall_of_a_hand_made_matrix():
    confusion = ConfusionMatrix(5)
    confusion.matrix = torch.tensor(
        [
            [5, 1, 0, 0, 0],
            [2, 3, 1, 0, 0],
            [0, 0, 0, 0, 0],  # class 2: never true, predicted once
            [1, 0, 0, 0, 0],  # class 3: true once, never predicted
            [0, 0, 0, 0, 0],  # class 4: absent
        ]
    )
    scores = confusion.scores()
    nan = float("nan")
    # class 0: TP 5, FP 2 + 1, FN 1; class 1: TP 3, FP 1, FN 2 + 1
    np.testing.assert_allclose(scores.iou, [5 / 9, 3 / 7, 0, 0, nan])
    np.testing.assert_allclose(scores.dice, [10 / 14, 6 / 10, 0, 0, nan])
    np.testing.assert_allclose(scores.precision, [5 / 8, 3 / 4, 0, nan, nan])
    np.testing.assert_allclose(scores.recall, [5 / 6, 3 / 6, nan, 0, nan])
    assert scores.mean_dice == pytest.approx((10 / 14 + 6 / 10) / 4)
    assert scores.mean_precision == pytest.approx((5 / 8 + 3 / 4) / 3)
    assert scores.mean_recall == pytest.approx((5 / 6 + 3 / 6) / 3)
    assert scores.absent_classes == [4]
    with pytest.raises(ValueError, match="binary task"):
        scores.foreground()


def test_foreground_scores_of_a_binary_task():
    confusion = ConfusionMatrix(2)
    confusion.matrix = torch.tensor([[90, 2], [6, 2]])  # foreground: TP 2, FP 2, FN 6
    foreground = confusion.scores().foreground()
    assert foreground.iou == pytest.approx(2 / 10)
    assert foreground.dice == foreground.f1 == pytest.approx(4 / 12)
    assert (foreground.precision, foreground.recall) == pytest.approx((2 / 4, 2 / 8))


def test_dice_precision_recall_match_sklearn_on_random_labels():
    n = 7
    pred, target = random_labels(2, 5)
    target[0, :3] = 5  # class 5: in the truth, never predicted (precision NaN)
    pred[1, :2] = np.where(target[1, :2] == 6, 0, 6)  # class 6: predicted, never true (recall NaN)
    confusion = ConfusionMatrix(n)
    confusion.update(torch.from_numpy(pred), torch.from_numpy(target))
    scores = confusion.scores()
    valid = target != 255
    t, p, labels = target[valid], pred[valid], np.arange(n)
    precision, recall, f1, _ = precision_recall_fscore_support(
        t, p, labels=labels, average=None, zero_division=np.nan
    )
    iou = jaccard_score(t, p, labels=labels, average=None)  # every class in truth or prediction
    assert np.isnan(precision[5]) and np.isnan(recall[6])
    np.testing.assert_allclose(scores.precision, precision)
    np.testing.assert_allclose(scores.recall, recall)
    np.testing.assert_allclose(scores.dice, f1)
    np.testing.assert_allclose(scores.iou, iou)
    assert scores.mean_precision == pytest.approx(np.nanmean(precision))
    assert scores.mean_recall == pytest.approx(np.nanmean(recall))
    assert scores.mean_dice == pytest.approx(np.nanmean(f1))


def random_multilabel(seed, k=4, shape=(3, 11, 13)):
    """(N, K, H, W) sigmoid probabilities and 0/1 targets with 10% ignored (pixel, class) entries;
    class k-2 is never predicted, class k-1 is absent from truth and prediction."""
    rng = np.random.default_rng(seed)
    n, h, w = shape
    target = (rng.random((n, k, h, w)) < 0.4).astype(np.int64)
    probabilities = np.clip(0.6 * target + 0.7 * rng.random(target.shape) - 0.2, 0, 1)
    target[rng.random(target.shape) < 0.1] = 255
    probabilities[:, k - 2 :] = 0.0
    target[:, k - 1][target[:, k - 1] == 1] = 0
    return probabilities, target


def test_multilabel_confusion_matches_per_class_sklearn():
    k = 4
    probabilities, target = random_multilabel(3, k)
    confusion = MultilabelConfusion(k)
    confusion.update(torch.from_numpy(probabilities[:2]), torch.from_numpy(target[:2]))
    confusion.update(torch.from_numpy(probabilities[2:] > 0.5), torch.from_numpy(target[2:]))
    scores = confusion.scores()
    correct = decisions = 0
    for c in range(k):
        valid = target[:, c] != 255
        t, p = target[:, c][valid], (probabilities[:, c] > 0.5)[valid].astype(np.int64)
        np.testing.assert_array_equal(
            confusion.matrix[c].numpy(), sklearn_confusion_matrix(t, p, labels=[0, 1])
        )
        precision, recall, f1, _ = precision_recall_fscore_support(
            t, p, labels=[1], average=None, zero_division=np.nan
        )
        iou = jaccard_score(t, p) if (t | p).any() else np.nan  # sklearn's 0/0 is 0 or 1
        expected = (iou, f1[0], precision[0], recall[0])
        got = (scores.iou[c], scores.dice[c], scores.precision[c], scores.recall[c])
        np.testing.assert_allclose(got, expected, err_msg=f"class {c}")
        correct, decisions = correct + (t == p).sum(), decisions + t.size
    assert np.isnan(scores.precision[k - 2]) and scores.absent_classes == [k - 1]
    assert scores.pixel_accuracy == pytest.approx(correct / decisions)
    assert scores.mean_iou == pytest.approx(np.nanmean(scores.iou))


def test_multilabel_confusion_rejects_bad_input():
    confusion = MultilabelConfusion(3)
    with pytest.raises(ValueError, match=r"must be \(N, 3, ...\)"):
        confusion.update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="sigmoid"):
        confusion.update(torch.full((1, 3, 4, 4), -2.0), torch.zeros(1, 3, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="0, 1 or the ignore label"):
        confusion.update(torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 2))


def test_bad_labels_and_shapes_are_errors():
    confusion = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"target labels must be in \[0, 3\)"):
        confusion.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="differs from target"):
        confusion.update(torch.zeros(2, 3), torch.zeros(3, 2))


def _reduce_worker(rank, world_size, init_file, n, result_file):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    pred, target = random_labels(1, n)
    confusion = ConfusionMatrix(n)
    for p, t in list(zip(pred, target, strict=True))[rank::world_size]:
        confusion.update(torch.from_numpy(p), torch.from_numpy(t))
    confusion.reduce()
    probabilities, labels = random_multilabel(4)
    multilabel = MultilabelConfusion(4)
    for p, t in list(zip(probabilities, labels, strict=True))[rank::world_size]:
        multilabel.update(torch.from_numpy(p[None]), torch.from_numpy(t[None]))
    multilabel.reduce()
    if rank == 0:
        torch.save({"multiclass": confusion.matrix, "multilabel": multilabel.matrix}, result_file)
    dist.destroy_process_group()


@pytest.mark.slow
def test_reduce_over_two_gloo_processes_equals_one_process(tmp_path):
    n = 5
    result_file = tmp_path / "matrix.pt"
    mp.spawn(_reduce_worker, args=(2, str(tmp_path / "init"), n, str(result_file)), nprocs=2)
    pred, target = random_labels(1, n)
    single = ConfusionMatrix(n)
    for p, t in zip(pred, target, strict=True):
        single.update(torch.from_numpy(p), torch.from_numpy(t))
    reduced = torch.load(result_file, weights_only=True)
    torch.testing.assert_close(reduced["multiclass"], single.matrix, rtol=0, atol=0)
    probabilities, labels = random_multilabel(4)
    multilabel = MultilabelConfusion(4)
    multilabel.update(torch.from_numpy(probabilities), torch.from_numpy(labels))
    torch.testing.assert_close(reduced["multilabel"], multilabel.matrix, rtol=0, atol=0)


def void_line_case():
    """10×10: class 0 left of a void column 5, class 1 right of it; prediction all 0."""
    target = torch.zeros(10, 10, dtype=torch.int64)
    target[:, 5] = 255
    target[:, 6:] = 1
    return torch.zeros(10, 10, dtype=torch.int64), target


def test_boundary_band_dilates_void_pixels():
    _, target = void_line_case()
    band = boundary_band(target, 2)
    assert band[:, 3:8].all() and not band[:, :3].any() and not band[:, 8:].any()
    assert torch.equal(boundary_band(target, 0), target == 255)
    edges = boundary_band(torch.tensor([[0, 0, 1, 1, 1, 1]]), 1, source="edges")
    assert edges.tolist() == [[True, True, True, True, False, False]]


def test_trimap_miou_on_a_hand_made_case():
    prediction, target = void_line_case()
    meter = TrimapMeter([1, 2, 20], num_classes=2)
    meter.update(prediction, target)
    scores = meter.scores()
    # width 1: columns 4 (truth 0) and 6 (truth 1), all predicted 0 → IoU 10/20 and 0.
    assert scores[1].iou == pytest.approx([0.5, 0.0])
    assert scores[1].mean_iou == pytest.approx(0.25)
    assert meter.matrices[2].matrix.sum() == 40  # columns 3, 4, 6, 7
    # a band wider than the image: every labelled pixel, as plain mIoU
    whole = ConfusionMatrix(2)
    whole.update(prediction, target)
    assert torch.equal(meter.matrices[20].matrix, whole.matrix)


def test_trimap_band_rejects_bad_settings():
    with pytest.raises(ValueError, match="width"):
        boundary_band(torch.zeros(3, 3), -1)
    with pytest.raises(ValueError, match="source"):
        boundary_band(torch.zeros(3, 3), 1, source="holes")


def test_confusion_rows_are_normalised_and_empty_rows_undefined():
    shares = row_normalised(torch.tensor([[3, 1], [0, 0]]))
    np.testing.assert_allclose(shares, [[0.75, 0.25], [np.nan, np.nan]])


@pytest.mark.slow
@pytest.mark.parametrize(("classes", "smallest", "largest"), [(3, 300, 1000), (150, 1500, 3000)])
def test_confusion_heatmap_is_a_png_sized_for_its_classes(tmp_path, classes, smallest, largest):
    from PIL import Image

    rng = np.random.default_rng(classes)
    matrix = rng.integers(0, 20, (classes, classes)) + np.diag(rng.integers(50, 500, classes))
    matrix[1] = 0  # a class without truth pixels: a grey row
    names = [f"class {i}" for i in range(classes)]
    path = plot_confusion(torch.from_numpy(matrix), names, tmp_path / "confusion.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert all(smallest <= side <= largest for side in image.size), image.size
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = np.unique(pixels, axis=0)
    assert len(colours) > 50  # cells of several shades, text, not a blank canvas
    assert (pixels == (211, 211, 211)).all(1).sum() > 100  # matplotlib's "lightgrey" row
    with pytest.raises(ValueError, match="for 2 class names"):
        plot_confusion(matrix, names[:2], tmp_path / "bad.png")
