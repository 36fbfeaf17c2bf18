"""Georeferenced rasters (GeoTIFF and any format GDAL reads) through ``rasterio``, window by window.

Reading goes through windows so that a scene larger than memory is never read whole; values are
scaled as training reads multi-band TIFFs (:func:`~atrous.data.io.unit_range`). Written masks
keep the input's grid: CRS, transform, size, and nodata where every input band is nodata (GDAL's
dataset mask). ``rasterio`` is the optional extra ``atrous[geo]``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atrous.data.io import DataError, unit_range
from atrous.errors import missing_dependency

#: Endings read as rasters when named: TIFF, JPEG 2000, GDAL virtual rasters, ERDAS Imagine.
RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".vrt", ".img"}
#: The value of masks' nodata pixels (class indices are 0…254).
MASK_NODATA = 255


def rasterio_module(needed_for: str = "reading GeoTIFF rasters") -> Any:
    """``rasterio``, or the error naming the extra that installs it."""
    try:
        import rasterio
    except ImportError:
        raise missing_dependency("rasterio", needed_for) from None
    return rasterio


@contextlib.contextmanager
def open_raster(path: str | Path) -> Iterator[Any]:
    """An open rasterio dataset of ``path``; an unreadable file is a DataError naming it."""
    rasterio = rasterio_module()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            dataset = rasterio.open(path)
    except rasterio.errors.RasterioIOError as error:
        raise DataError(f"cannot read raster {path}: {error}") from None
    with dataset:
        yield dataset


def is_georeferenced(path: str | Path) -> bool:
    """Whether ``path`` is a raster placed on the Earth (a CRS, a transform or control points)."""
    with open_raster(path) as dataset:
        return bool(dataset.crs or not dataset.transform.is_identity or dataset.gcps[0])


def check_bands(dataset: Any, path: str | Path, bands: int) -> None:
    """Refuse a raster whose band count is not the model's, saying both and the remedy."""
    if dataset.count != bands:
        raise DataError(
            f"{path} has {dataset.count} bands but the model reads {bands} "
            f"(model.in_channels {bands}): give it a raster of {bands} bands in the order the "
            f"model was trained on (e.g. gdal_translate -b 1 … -b {bands}), or a model trained "
            f"with --data.in_channels {dataset.count}"
        )


def read_window(dataset: Any, window: Any) -> tuple[np.ndarray, np.ndarray]:
    """One window → ((bands, h, w) float32 scaled as in training, (h, w) bool of valid pixels);
    a pixel is invalid when every band is nodata (or the dataset's mask says so)."""
    values = unit_range(dataset.read(window=window))
    valid = dataset.dataset_mask(window=window) > 0
    return values, valid


def mask_profile(dataset: Any, count: int = 1, tile: int = 256) -> dict[str, Any]:
    """The profile of a uint8 mask on ``dataset``'s grid: its CRS, transform and size, tiled,
    deflate-compressed, nodata :data:`MASK_NODATA`."""
    return {
        "driver": "GTiff",
        "width": dataset.width,
        "height": dataset.height,
        "count": count,
        "dtype": "uint8",
        "crs": dataset.crs,
        "transform": dataset.transform,
        "nodata": MASK_NODATA,
        "tiled": True,
        "blockxsize": tile,
        "blockysize": tile,
        "compress": "deflate",
    }


def describe_classes(
    output: Any, names: Sequence[str], palette: Sequence[Sequence[int]] | None, bands: int
) -> None:
    """Class names as tags (and one band description each for per-class bands) and, for a
    single-band mask, the palette as its colour table, so GIS tools show the classes."""
    output.update_tags(classes=",".join(names))
    if bands > 1:
        output.descriptions = tuple(names)
    elif palette is not None:
        output.write_colormap(1, {i: (*map(int, c), 255) for i, c in enumerate(palette)})
