import numpy as np
import pytest
import torch

from atrous.metrics import ConfusionMatrix


def reference_confusion(pred, target, n, ignore=255):
    valid = target != ignore
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (target[valid], pred[valid]), 1)
    return matrix


def test_confusion_matrix_and_scores_match_numpy():
    rng = np.random.default_rng(0)
    n = 5
    target = rng.integers(0, n, (4, 17, 23))
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(
        rng.random(target.shape) < 0.6,
        np.where(target == 255, 0, target),
        rng.integers(0, n, target.shape),
    )
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


def test_bad_labels_and_shapes_are_errors():
    confusion = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"target labels must be in \[0, 3\)"):
        confusion.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="differs from target"):
        confusion.update(torch.zeros(2, 3), torch.zeros(3, 2))
