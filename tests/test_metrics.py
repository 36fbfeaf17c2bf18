import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

from atrous.metrics import ConfusionMatrix, TrimapMeter, boundary_band


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
    if rank == 0:
        torch.save(confusion.matrix, result_file)
    dist.destroy_process_group()


def test_reduce_over_two_gloo_processes_equals_one_process(tmp_path):
    n = 5
    result_file = tmp_path / "matrix.pt"
    mp.spawn(_reduce_worker, args=(2, str(tmp_path / "init"), n, str(result_file)), nprocs=2)
    pred, target = random_labels(1, n)
    single = ConfusionMatrix(n)
    for p, t in zip(pred, target, strict=True):
        single.update(torch.from_numpy(p), torch.from_numpy(t))
    reduced = torch.load(result_file, weights_only=True)
    torch.testing.assert_close(reduced, single.matrix, rtol=0, atol=0)


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
