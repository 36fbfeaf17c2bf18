"""Segmenting rasters window by window: GeoTIFF (any GDAL format, any band count) in, GeoTIFF
mask out, on the input's grid.

A scene is cut into output blocks (``block`` pixels a side, a multiple of the mask's tiles);
for each block the overlapping ``window``×``window`` crops of one global grid are read, run
through the segmenter's strategy (scales, flip, output stride) and blended with a smooth
weight (sin², highest at a window's centre, near zero at its edges) so window borders leave no
seams. Memory is bounded by one block and its margin, whatever the scene's size: the scene is
never read whole, and each block's labels are written before the next is read. Windows on a
block's right edge are kept for the block to its right; those on its bottom edge run again for
the block below (keeping them would hold a whole row of the scene), about a quarter more
windows at the default block size. Blocks agree exactly at their edges.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from atrous.data.io import DataError
from atrous.data.raster import (
    MASK_NODATA,
    RASTER_SUFFIXES,
    check_bands,
    describe_classes,
    is_georeferenced,
    mask_profile,
    open_raster,
    rasterio_module,
    read_window,
)
from atrous.errors import AtrousError, UsageError
from atrous.inference.predict import PredictReport, Segmenter
from atrous.inference.regions import MapName, decide
from atrous.inference.strategies import segment, window_starts
from atrous.runtime.precision import autocast

#: The window side when the segmenter's inference config sets none.
DEFAULT_WINDOW = 512
#: GDAL's block cache while predicting, in MB (its default, 5% of the machine's memory, would
#: otherwise fill with a large scene's blocks read and written).
GDAL_CACHE_MB = 128
#: TIFF endings that hold ordinary pictures unless georeferenced or read by a non-RGB model.
TIFF_SUFFIXES = {".tif", ".tiff"}


@dataclass(frozen=True)
class Block:
    """One output block: its rows and columns [start, stop) and the (top, left) corners of the
    windows that cover it."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    windows: list[tuple[int, int]]


def default_block(window: int) -> int:
    """Output block side for ``window``: about four windows, a multiple of 256 (the tile)."""
    return math.ceil(4 * window / 256) * 256


def plan_blocks(
    height: int, width: int, window: tuple[int, int], overlap: float, block: int
) -> list[Block]:
    """The blocks of a ``height``×``width`` scene and the windows of one global grid (stride
    ``window·(1 − overlap)``, the last window flush with the border) that touch each."""
    stride = max(1, int(max(window) * (1 - overlap)))
    tops = window_starts(height, window[0], stride)
    lefts = window_starts(width, window[1], stride)
    blocks = []
    for top in range(0, height, block):
        rows = (top, min(top + block, height))
        row_starts = [t for t in tops if t < rows[1] and t + window[0] > rows[0]]
        for left in range(0, width, block):
            cols = (left, min(left + block, width))
            col_starts = [s for s in lefts if s < cols[1] and s + window[1] > cols[0]]
            blocks.append(Block(rows, cols, [(t, s) for t in row_starts for s in col_starts]))
    return blocks


def blend_weights(height: int, width: int) -> torch.Tensor:
    """(height, width) sin² weights: 1 at the window's centre, small but positive at its edges
    (a pixel that only one window covers keeps that window's value)."""

    def profile(n: int) -> torch.Tensor:
        return torch.sin(math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n) ** 2

    return (profile(height)[:, None] * profile(width)[None, :]).float()


def window_probabilities(segmenter: Segmenter, crops: torch.Tensor) -> torch.Tensor:
    """Normalised (N, bands, h, w) crops → (N, C, h, w) float32 probabilities on the CPU, through
    the segmenter's strategy (each crop runs whole: the windows are this module's)."""
    config = dataclasses.replace(segmenter.inference, window=None)
    with autocast(segmenter.device, segmenter.precision):
        probs = segment(segmenter.network, crops.to(segmenter.device), config, segmenter.multilabel)
    return probs.float().cpu()


#: Probabilities of windows computed for one block that the next block (to its right) reuses.
WindowCache = dict[tuple[int, int], torch.Tensor]


class Blend:
    """Sums of weighted window probabilities and of the weights over one block's extent."""

    def __init__(self, classes: int, top: int, left: int, size: tuple[int, int], window) -> None:
        self.top, self.left, self.window = top, left, window
        self.total = torch.zeros(classes, *size)
        self.weight_sum = torch.zeros(size)
        self.weights = blend_weights(*window)

    def add(self, corner: tuple[int, int], probs: torch.Tensor) -> None:
        """Add one window's (C, h, w) probabilities, its top-left corner in scene pixels."""
        top, left = corner[0] - self.top, corner[1] - self.left
        rows, cols = slice(top, top + self.window[0]), slice(left, left + self.window[1])
        self.total[:, rows, cols] += probs * self.weights
        self.weight_sum[rows, cols] += self.weights

    def probabilities(self, block: Block) -> torch.Tensor:
        """The blended (C, h, w) probabilities of ``block``'s own pixels."""
        rows = slice(block.rows[0] - self.top, block.rows[1] - self.top)
        cols = slice(block.cols[0] - self.left, block.cols[1] - self.left)
        return self.total[:, rows, cols] / self.weight_sum[rows, cols]


def blend_block(
    segmenter: Segmenter,
    dataset: object,
    block: Block,
    window: tuple[int, int],
    bar: tqdm,
    cache: WindowCache,
) -> tuple[torch.Tensor, np.ndarray, WindowCache]:
    """One block → its blended (C, h, w) probabilities, its (h, w) valid-pixel mask and the
    windows the next block shares with it.

    Reads the block's windows' extent once, normalises it with the model's mean and std, sets
    nodata pixels (and NaN values) to the mean, 0 after normalisation, and blends the windows'
    probabilities; windows in ``cache`` (the block to the left's) are not run again.
    """
    from rasterio.windows import Window

    height, width = window
    top = min(t for t, _ in block.windows)
    left = min(s for _, s in block.windows)
    size = (
        max(t for t, _ in block.windows) + height - top,
        max(s for _, s in block.windows) + width - left,
    )
    values, valid = read_window(dataset, Window(left, top, size[1], size[0]))
    mean = torch.tensor(segmenter.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(segmenter.std, dtype=torch.float32)[:, None, None]
    pixels = torch.from_numpy(values).sub_(mean).div_(std).nan_to_num_()  # NaN bands: the mean
    pixels[:, torch.from_numpy(~valid)] = 0
    blend = Blend(segmenter.num_classes, top, left, size, window)
    shared: WindowCache = {}

    def add(corner: tuple[int, int], probs: torch.Tensor) -> None:
        blend.add(corner, probs)
        if corner[1] + width > block.cols[1]:  # the next block to the right needs it too
            shared[corner] = probs.clone()  # not a view holding its whole batch

    for corner in block.windows:
        if corner in cache:
            add(corner, cache[corner])
    todo = [corner for corner in block.windows if corner not in cache]
    step = segmenter.inference.window_batch
    for first in range(0, len(todo), step):
        chunk = todo[first : first + step]
        crops = [
            pixels[:, t - top : t - top + height, s - left : s - left + width] for t, s in chunk
        ]
        for corner, probs in zip(
            chunk, window_probabilities(segmenter, torch.stack(crops)), strict=True
        ):
            add(corner, probs)
        bar.update(len(chunk))
    rows = slice(block.rows[0] - top, block.rows[1] - top)
    cols = slice(block.cols[0] - left, block.cols[1] - left)
    return blend.probabilities(block), valid[rows, cols], shared


def block_labels(segmenter: Segmenter, probs: torch.Tensor, valid: np.ndarray) -> np.ndarray:
    """(C, h, w) probabilities → (bands, h, w) uint8: class indices (one band), or 0/1 per class
    for multilabel models; nodata pixels :data:`MASK_NODATA`."""
    if segmenter.multilabel:
        labels = (probs > 0.5).to(torch.uint8).numpy()
    else:
        labels = probs.argmax(0).to(torch.uint8).numpy()[None]
    labels[:, ~valid] = MASK_NODATA
    return labels


def block_maps(
    segmenter: Segmenter, probs: torch.Tensor, valid: np.ndarray, maps: Sequence[MapName]
) -> dict[str, np.ndarray]:
    """(C, h, w) probabilities → each of ``maps`` as (bands, h, w) float32 (see
    :func:`atrous.inference.regions.decide`); nodata pixels NaN."""
    arrays = {}
    for name, values in decide(probs[None], segmenter.multilabel, maps).maps.items():
        array = values[0].float().numpy()
        array = array if segmenter.multilabel else array[None]
        array[:, ~valid] = np.nan
        arrays[name] = array
    return arrays


def map_profile(mask: dict, count: int) -> dict:
    """The profile of a float32 per-pixel map beside a mask of profile ``mask``: same grid and
    tiles, nodata NaN."""
    return {**mask, "count": count, "dtype": "float32", "nodata": float("nan")}


def predict_raster(
    segmenter: Segmenter,
    path: str | Path,
    output_dir: str | Path,
    window: int | None = None,
    block: int | None = None,
    progress: bool = True,
    maps: Sequence[MapName] = (),
) -> Path:
    """Segment the raster ``path`` window by window into ``output_dir/<stem>.tif``: a uint8
    GeoTIFF of class indices on the input's grid (CRS, transform, size), tiled and deflate-
    compressed, nodata 255 where every input band is nodata; one 0/1 band per class for
    multilabel models. Each of ``maps`` (``confidence``, ``entropy``) goes to
    ``output_dir/<name>/<stem>.tif``, float32 on the same grid, NaN where the mask is nodata.
    ``window`` defaults to the inference config's (else 512), ``block`` to about four windows."""
    rasterio = rasterio_module("predicting rasters")
    from rasterio.windows import Window

    path, output_dir = Path(path), Path(output_dir)
    window = window or segmenter.inference.window or DEFAULT_WINDOW
    block = block or default_block(window)
    _check_raster_options(segmenter, block)
    targets = {"mask": output_dir / f"{path.stem}.tif"}
    targets.update({name: output_dir / name / f"{path.stem}.tif" for name in maps})
    partials = {key: t.with_name(f".{t.stem}.partial.tif") for key, t in targets.items()}
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), open_raster(path) as dataset:
        check_bands(dataset, path, len(segmenter.mean))
        size = (min(window, dataset.height), min(window, dataset.width))
        blocks = plan_blocks(
            dataset.height, dataset.width, size, segmenter.inference.overlap, block
        )
        count = segmenter.num_classes if segmenter.multilabel else 1
        profile = mask_profile(dataset, count, math.gcd(block, 256))
        total = len({(b.rows, corner) for b in blocks for corner in b.windows})
        bar = tqdm(total=total, desc=path.name, unit="window", disable=not progress)
        cache: WindowCache = {}
        try:
            with bar, contextlib.ExitStack() as stack:
                outputs = {}
                for key, partial in partials.items():
                    partial.parent.mkdir(parents=True, exist_ok=True)
                    kind = profile if key == "mask" else map_profile(profile, count)
                    outputs[key] = stack.enter_context(rasterio.open(partial, "w", **kind))
                describe_classes(outputs["mask"], segmenter.class_names, segmenter.palette, count)
                for item in blocks:
                    cache = {} if item.cols[0] == 0 else cache
                    probs, valid, cache = blend_block(segmenter, dataset, item, size, bar, cache)
                    (top, bottom), (left, right) = item.rows, item.cols
                    place = Window(left, top, right - left, bottom - top)
                    outputs["mask"].write(block_labels(segmenter, probs, valid), window=place)
                    for name, array in block_maps(segmenter, probs, valid, maps).items():
                        outputs[name].write(array, window=place)
        except BaseException:  # interrupted or failed: no half-written file left behind
            for partial in partials.values():
                partial.unlink(missing_ok=True)
            raise
    for key, partial in partials.items():
        partial.replace(targets[key])
    return targets["mask"]


def _check_raster_options(segmenter: Segmenter, block: int) -> None:
    """Refuse a block side GeoTIFF tiles cannot hold and more classes than a uint8 mask can."""
    if block % 16:
        raise UsageError(f"the raster block side must be a multiple of 16, got {block}")
    if not segmenter.multilabel and segmenter.num_classes > MASK_NODATA:
        raise UsageError(
            f"GeoTIFF masks hold classes 0–{MASK_NODATA - 1} ({MASK_NODATA} is nodata); this "
            f"model has {segmenter.num_classes} classes"
        )


def predict_rasters(
    segmenter: Segmenter,
    paths: Sequence[str | Path],
    output_dir: str | Path,
    progress: bool = True,
    maps: Sequence[MapName] = (),
) -> PredictReport:
    """:func:`predict_raster` on each path (with the per-pixel ``maps``); a file that cannot be
    used (unreadable, another band count) is reported in the result and the others are still
    processed."""
    report = PredictReport([], [])
    for path in paths:
        try:
            mask = predict_raster(segmenter, path, output_dir, progress=progress, maps=maps)
            report.written.append(mask)
        except DataError as error:
            report.failed.append((Path(path), str(error)))
    report.segmented = len(report.written)
    return report


def split_rasters(files: Sequence[Path], bands: int) -> tuple[list[Path], list[Path]]:
    """(rasters, pictures) among ``files`` for a model of ``bands`` bands: GDAL formats, and
    TIFFs that are georeferenced or read by a model of other than three bands, are rasters
    (GeoTIFF masks); the rest are pictures (PNG masks and overlays)."""
    rasters, pictures = [], []
    for path in files:
        suffix = path.suffix.lower()
        if suffix in RASTER_SUFFIXES and (
            suffix not in TIFF_SUFFIXES or bands != 3 or _georeferenced(path)
        ):
            rasters.append(path)
        else:
            pictures.append(path)
    return rasters, pictures


def _georeferenced(path: Path) -> bool:
    """Whether a TIFF is georeferenced; False without rasterio or for a file it cannot read
    (the picture reader then reports it as before)."""
    try:
        return is_georeferenced(path)
    except AtrousError:  # no rasterio, or a file it cannot read
        return False
