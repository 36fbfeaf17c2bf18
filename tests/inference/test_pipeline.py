"""The prediction/evaluation pipeline: loader workers, batches of one size, background writers.
Its outputs must equal one image at a time through the Segmenter."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.data import build_dataset
from atrous.data.synthetic import render_scene
from atrous.evaluation.evaluate import evaluate_dataset
from atrous.hub.load import load_segmenter
from atrous.inference.pipeline import BackgroundWriter, PipelineConfig, batches_by_size
from atrous.inference.predict import predict_files
from atrous.runtime.distributed import DistributedEnv
from atrous.training.config import TrainConfig


def test_batches_hold_one_size_each_item_once_and_bounded_waiting():
    sizes = [1, 2, 1, 1, 3, 2, 1, 4, 4, 2, 2, 1]
    items = list(enumerate(sizes))
    waiting_most = 0

    def watched(stream):
        nonlocal waiting_most
        for count, item in enumerate(stream, 1):
            yield item
            waiting_most = max(waiting_most, count - sum(len(b) for b in batches))

    batches = []
    for batch in batches_by_size(watched(items), 3, lambda item: item[1], max_pending=4):
        batches.append(batch)
        assert len({size for _, size in batch}) == 1 and 1 <= len(batch) <= 3
    assert sorted(i for batch in batches for i, _ in batch) == list(range(len(sizes)))
    assert waiting_most <= 4
    assert [i for i, _ in batches[0]] == [0, 2, 3]  # the first full group leaves at once


def test_writer_keeps_submission_order_and_reraises():
    finished = []
    lock = threading.Lock()

    def job(value):
        with lock:
            finished.append(value)
        return value * 2

    with BackgroundWriter(threads=3, max_pending=2) as writer:
        for value in range(10):
            writer.submit(job, value)
    assert writer.results == [v * 2 for v in range(10)] and sorted(finished) == list(range(10))

    def fails():
        raise OSError("disk full")

    writer = BackgroundWriter(threads=1, max_pending=4)
    writer.submit(fails)
    with pytest.raises(OSError, match="disk full"):
        writer.close()


def test_pipeline_config_rejects_nonsense():
    with pytest.raises(ValueError, match=r"pipeline\.batch_size"):
        PipelineConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"pipeline\.workers"):
        PipelineConfig(workers=-1)


@pytest.fixture()
def scene_folder(tmp_path):
    """Nine scenes of three sizes (so batches form and break), and one corrupt file."""
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(9):
        size = (48, 64, 80)[index % 3]
        Image.fromarray(render_scene(3, index, size)[0]).save(folder / f"s{index}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    return folder


@pytest.mark.slow
def test_pipelined_predict_writes_what_one_image_at_a_time_writes(tiny_run, scene_folder, tmp_path):
    segmenter = load_segmenter(tiny_run / "best.pt")
    serial = PipelineConfig(batch_size=1, workers=0, writers=1)
    piped = PipelineConfig(batch_size=4, workers=2, writers=2, max_pending=5)
    one = predict_files(
        segmenter, [scene_folder], tmp_path / "one", progress=False, pipeline=serial
    )
    many = predict_files(
        segmenter, [scene_folder], tmp_path / "many", progress=False, pipeline=piped
    )
    assert [p.name for p, _ in many.failed] == ["broken.png"] and many.segmented == 9
    assert sorted(p.relative_to(tmp_path / "many") for p in many.written) == sorted(
        p.relative_to(tmp_path / "one") for p in one.written
    )
    for path in one.written:
        twin = tmp_path / "many" / path.relative_to(tmp_path / "one")
        np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(twin)))
    for path in sorted(scene_folder.glob("s*.png")):  # and equal to the Segmenter's own call
        labels = segmenter(np.asarray(Image.open(path)))
        mask = np.asarray(Image.open(tmp_path / "many" / "masks" / path.name))
        np.testing.assert_array_equal(mask, labels)


@pytest.mark.slow
def test_pipelined_evaluation_scores_what_serial_evaluation_scores(tiny_run):
    segmenter = load_segmenter(tiny_run / "best.pt")
    config = TrainConfig.from_dict(torch.load(tiny_run / "best.pt", weights_only=True)["config"])
    dataset = build_dataset(config.data, "val")
    env = DistributedEnv(0, 1, 0, torch.device("cpu"))

    def confusion(pipeline):
        evaluation = evaluate_dataset(
            segmenter.network,
            dataset,
            segmenter.mean,
            segmenter.std,
            env,
            progress=False,
            trimap_widths=[2],
            trimap_source="edges",
            pipeline=pipeline,
        )
        return evaluation.confusion.matrix, evaluation.trimap.matrices[2].matrix

    serial = confusion(PipelineConfig(batch_size=1, workers=0))
    piped = confusion(PipelineConfig(batch_size=4, workers=2))
    for a, b in zip(serial, piped, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
