"""Video in, video out: ``atrous predict clip.mp4`` writes ``<stem>.mp4``, the label colours
blended over every frame, at the source's frame rate and size (through PyAV).

    thread: decode + normalise ─▶ main: batch frames ─▶ device: forward + argmax
                                                    ─▶ thread: overlay + encode (in order)
                                                    ─▶ threads: per-frame mask PNGs

As in the folder pipeline (:mod:`atrous.inference.pipeline`), every stage is bounded: at most
``max_pending`` decoded frames wait for the network and as many results wait to be written, so
memory does not grow with the clip's length. Audio is not copied.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from atrous.data.visualize import overlay, overlay_multilabel
from atrous.errors import InputError, missing_dependency
from atrous.inference.fast import normalise_images
from atrous.inference.pipeline import BackgroundWriter, PipelineConfig
from atrous.inference.predict import Segmenter, write_prediction

VIDEO_SUFFIXES = frozenset({".avi", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".webm"})
#: H.264 at a quality close to the source's (0 lossless … 51 worst; 18 looks lossless).
CODEC, QUALITY = "libx264", "18"
_END = object()


@dataclass
class VideoReport:
    """What :func:`predict_video` wrote and how fast it ran (decode to encode, all frames)."""

    video: Path
    frames: int
    seconds: float
    size: tuple[int, int]  # (height, width)
    rate: Fraction | None
    masks: Path | None = None  # the folder of per-frame masks, with save_masks

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


def is_video(path: str | Path) -> bool:
    """A file whose ending names a video container atrous reads through PyAV."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def open_video(path: Path) -> Any:
    """The container of ``path`` opened for reading; a clear error for a missing PyAV or a file
    that holds no video."""
    try:
        import av
    except ImportError:
        raise missing_dependency("av", "atrous predict on videos") from None
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as error:
        raise InputError(f"cannot read video {path}: {error}") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path} holds no video stream")
    return container


def first_frames(path: str | Path, count: int) -> list[np.ndarray]:
    """The first ``count`` frames of a video as (H, W, 3) uint8 RGB (``--fast``'s int8
    calibration when only videos are given)."""
    container = open_video(Path(path))
    try:
        frames = []
        for frame in container.decode(video=0):
            if len(frames) == count:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
        return frames
    finally:
        container.close()


def decoded_frames(
    container: Any, segmenter: Segmenter, frames: queue.Queue, stop: threading.Event
) -> None:
    """Decode and normalise every frame into ``frames`` (a bounded queue), then the end mark;
    an error goes into the queue for the main thread to raise."""
    try:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="rgb24")
            tensor = normalise_images([image], segmenter.mean, segmenter.std)[0][0]
            if not handed_over(frames, (frame.pts, image, tensor), stop):
                return
        handed_over(frames, _END, stop)
    except Exception as error:  # raised again in the main thread, with its own message
        handed_over(frames, error, stop)


def handed_over(frames: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` into the bounded queue, waiting for room unless the run stopped."""
    while not stop.is_set():
        try:
            frames.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def frame_batches(frames: queue.Queue, batch_size: int) -> Iterator[list[tuple]]:
    """The decoded frames in order, ``batch_size`` at a time (the last batch may be shorter)."""
    batch: list[tuple] = []
    while True:
        item = frames.get()
        if item is _END:
            break
        if isinstance(item, Exception):
            raise item
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


class Encoder:
    """The output video: H.264 at the source's frame rate and size. Each frame keeps its source
    time, on the grid of that rate (a later frame never shares a slot with an earlier one)."""

    def __init__(self, path: Path, source: Any) -> None:
        import av

        self.container = av.open(str(path), mode="w")
        self.rate = source.average_rate or source.guessed_rate or Fraction(25)
        self.stream = self.container.add_stream(CODEC, rate=self.rate, options={"crf": QUALITY})
        self.stream.width = source.codec_context.width
        self.stream.height = source.codec_context.height
        even = self.stream.width % 2 == 0 and self.stream.height % 2 == 0
        self.stream.pix_fmt = "yuv420p" if even else "yuv444p"  # 4:2:0 needs even sides
        # Fixed here: the muxer replaces the stream's time base once the first packet is out.
        self.time_base = Fraction(1) / self.rate
        self.stream.time_base = self.time_base
        self.source_time_base = source.time_base
        self.frames = 0
        self.last = -1

    def write(self, image: np.ndarray, pts: int | None) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        slot = self.last + 1
        if pts is not None and self.source_time_base is not None:
            slot = max(slot, round(pts * self.source_time_base * self.rate))
        frame.pts, frame.time_base, self.last = slot, self.time_base, slot
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        self.container.mux(self.stream.encode())  # flush the frames the encoder holds
        self.container.close()


def coloured(segmenter: Segmenter, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One frame with its label colours blended over it (as ``overlays/`` of images)."""
    if segmenter.multilabel:
        return overlay_multilabel(image, labels, segmenter.palette)
    return overlay(image, labels, segmenter.palette)


def predict_video(
    segmenter: Segmenter,
    path: str | Path,
    output_dir: str | Path,
    save_masks: bool = False,
    progress: bool = True,
    pipeline: PipelineConfig = PipelineConfig(),  # noqa: B008
) -> VideoReport:
    """Segment every frame of ``path`` and write ``output_dir/<stem>.mp4`` (the overlay); with
    ``save_masks``, each frame's mask as ``output_dir/masks/<stem>/<frame>.png`` (numbered from
    0, written as ``atrous predict`` writes an image's mask)."""
    path, output_dir = Path(path), Path(output_dir)
    if len(segmenter.mean) != 3:
        raise InputError(f"this model reads {len(segmenter.mean)} bands; video frames are RGB")
    target = output_dir / f"{path.stem}.mp4"
    if target.resolve() == path.resolve():
        raise InputError(f"{path} would be overwritten by its overlay; choose another --output_dir")
    container = open_video(path)
    source = container.streams.video[0]
    source.thread_type = "AUTO"  # decode with FFmpeg's own threads
    output_dir.mkdir(parents=True, exist_ok=True)
    masks = output_dir / "masks" / path.stem if save_masks else None
    if masks is not None:
        masks.mkdir(parents=True, exist_ok=True)
    frames: queue.Queue = queue.Queue(maxsize=pipeline.max_pending)
    stop = threading.Event()
    decoder = threading.Thread(
        target=decoded_frames, args=(container, segmenter, frames, stop), daemon=True
    )
    encoder = Encoder(target, source)
    total = source.frames or None
    start = time.perf_counter()
    try:
        decoder.start()
        with (
            tqdm(total=total, desc=path.name, disable=not progress, unit="frame") as bar,
            BackgroundWriter(1, pipeline.max_pending) as encoding,  # one thread: in order
            BackgroundWriter(pipeline.writers, pipeline.max_pending) as writing,
        ):
            index = 0
            for batch in frame_batches(frames, pipeline.batch_size):
                labels = segmenter.labels(torch.stack([tensor for _, _, tensor in batch]))
                for (pts, image, _), label in zip(batch, labels, strict=True):
                    encoding.submit(encode_frame, encoder, segmenter, image, label, pts)
                    if masks is not None:
                        name = f"{path.stem}/{index:06d}"  # masks/<stem>/<frame>.png
                        writing.submit(
                            write_prediction, segmenter, image, label, name, output_dir, False
                        )
                    index += 1
                bar.update(len(batch))
    finally:
        stop.set()
        decoder.join()
        container.close()
        encoder.close()
    seconds = time.perf_counter() - start
    size = (encoder.stream.height, encoder.stream.width)
    return VideoReport(target, encoder.frames, seconds, size, encoder.rate, masks)


def encode_frame(
    encoder: Encoder, segmenter: Segmenter, image: np.ndarray, labels: np.ndarray, pts: int | None
) -> None:
    encoder.write(coloured(segmenter, image, labels), pts)
