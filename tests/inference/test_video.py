"""``atrous predict clip.mp4``: a short generated video round-trips with its frame count, size,
rate and timestamps; the overlay equals the frames' own predictions (within video coding's
loss); per-frame masks equal the segmenter's on the decoded frames."""

import sys
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from atrous.cli import main
from atrous.data.io import read_mask
from atrous.data.visualize import overlay
from atrous.errors import AtrousError
from atrous.inference.pipeline import PipelineConfig
from atrous.inference.predict import Segmenter
from atrous.inference.video import Encoder, predict_video
from atrous.models.zoo import create_model

FRAMES, WIDTH, HEIGHT, RATE = 12, 64, 48, Fraction(15)


def write_clip(path, frames=FRAMES, width=WIDTH, height=HEIGHT, rate=RATE) -> list[np.ndarray]:
    """A clip of a bright square moving over a gradient, through PyAV; its frames as decoded."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[..., 0] = np.linspace(0, 200, width, dtype=np.uint8)
            image[8:24, 4 * index : 4 * index + 16] = (250, 240, 30)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return decoded(path)


def decoded(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def stream_facts(path) -> tuple[int, int, int, Fraction, list[float]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * f.time_base) for f in container.decode(video=0)]
        return len(times), stream.width, stream.height, stream.average_rate, times


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25)
    return Segmenter.from_model(model)


@pytest.mark.slow
def test_video_round_trips_with_its_frames_size_and_rate(segmenter, tmp_path):
    frames = write_clip(tmp_path / "clip.mp4")
    pipeline = PipelineConfig(batch_size=4, max_pending=4)
    report = predict_video(
        segmenter,
        tmp_path / "clip.mp4",
        tmp_path / "out",
        save_masks=True,
        progress=False,
        pipeline=pipeline,
    )
    assert report.video == tmp_path / "out" / "clip.mp4"
    assert report.frames == FRAMES and report.frames_per_second > 0
    count, width, height, rate, times = stream_facts(report.video)
    source_times = stream_facts(tmp_path / "clip.mp4")[4]
    assert (count, width, height, rate) == (FRAMES, WIDTH, HEIGHT, RATE)
    assert times == pytest.approx(source_times)
    masks = sorted((tmp_path / "out" / "masks" / "clip").iterdir())
    assert [p.name for p in masks] == [f"{i:06d}.png" for i in range(FRAMES)]
    overlaid = decoded(report.video)
    for index in (0, 5, FRAMES - 1):
        labels = segmenter(frames[index])
        np.testing.assert_array_equal(read_mask(masks[index]), labels)
        expected = overlay(frames[index], labels, segmenter.palette).astype(float)
        assert np.abs(overlaid[index].astype(float) - expected).mean() < 4  # H.264 at crf 18


@pytest.mark.slow
def test_predict_command_writes_the_video_and_reports_frames_per_second(tmp_path, capsys):
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25)
    model.save_pretrained(tmp_path / "model")
    write_clip(tmp_path / "odd.mkv", frames=5, width=50, height=38, rate=Fraction(24000, 1001))
    status = main(
        [
            "predict",
            str(tmp_path / "odd.mkv"),
            "--model",
            str(tmp_path / "model"),
            "--output_dir",
            str(tmp_path / "out"),
            "--progress",
            "false",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "5 frames of 50×38 at 23.976 frames/s" in out and "segmented at" in out
    count, width, height, rate, _ = stream_facts(tmp_path / "out" / "odd.mp4")
    assert (count, width, height, rate) == (5, 50, 38, Fraction(24000, 1001))


def test_a_clip_longer_than_the_encoders_lookahead_keeps_its_timing(tmp_path):
    """Past ~40 frames H.264 hands out packets while frames still go in, and the muxer changes
    the stream's time base: every frame must still land in its own slot."""
    frames = write_clip(tmp_path / "long.mp4", frames=60)
    with av.open(str(tmp_path / "long.mp4")) as container:
        encoder = Encoder(tmp_path / "copy.mp4", container.streams.video[0])
        for frame in container.decode(video=0):
            encoder.write(frame.to_ndarray(format="rgb24"), frame.pts)
        encoder.close()
    count, width, height, rate, times = stream_facts(tmp_path / "copy.mp4")
    assert (count, width, height, rate) == (60, WIDTH, HEIGHT, RATE)
    assert times == pytest.approx(stream_facts(tmp_path / "long.mp4")[4])
    copied = decoded(tmp_path / "copy.mp4")
    assert np.abs(copied[59].astype(float) - frames[59]).mean() < 4


def test_a_file_that_is_not_a_video_is_one_clear_error(segmenter, tmp_path):
    (tmp_path / "fake.mp4").write_text("not a video")
    with pytest.raises(AtrousError, match=r"cannot read video .*fake\.mp4"):
        predict_video(segmenter, tmp_path / "fake.mp4", tmp_path / "out", progress=False)


def test_without_pyav_the_error_names_the_extra(segmenter, tmp_path, monkeypatch):
    (tmp_path / "clip.mp4").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with pytest.raises(AtrousError, match=r"pip install 'atrous\[video\]'"):
        predict_video(segmenter, tmp_path / "clip.mp4", tmp_path / "out", progress=False)
