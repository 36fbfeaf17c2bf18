"""Reading images and label masks from disk, with one clear error per bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from atrous.errors import InputError

#: TIFF endings (read with tifffile when Pillow cannot: more bands or deeper values).
TIFFS = (".tif", ".tiff")


class DataError(InputError):
    """A problem with one file or sample of a dataset; the message names it."""


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Any image file → (H, W, 3) uint8 RGB.

    Handles grayscale, RGBA (alpha dropped), palette, 16-bit and EXIF-rotated files. With
    ``max_pixels``, a larger image is refused from its header, before it is decoded.
    """
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if max_pixels is not None and width * height > max_pixels:
                raise DataError(
                    f"image {path} is {width}×{height} pixels, more than the limit of "
                    f"{max_pixels:,}; make it smaller"
                )
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (
        OSError,
        UnidentifiedImageError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as error:
        if isinstance(error, DataError):
            raise
        if isinstance(error, UnidentifiedImageError) and Path(path).suffix.lower() in TIFFS:
            return tiff_rgb(path, max_pixels)  # 16-bit or float RGB (GeoTIFF tiles)
        raise DataError(f"cannot read image {path}: {error}") from None
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.round(array * 255.0 / peak).astype(np.uint8))
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(
            np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        )
    return np.array(image.convert("RGB"))


def tiff_rgb(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """A three-band TIFF that Pillow cannot open (16-bit or float bands, planar GeoTIFFs) →
    (H, W, 3) uint8, scaled as :func:`read_bands` scales bands."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            shape = tiff.pages[0].shape
    except (OSError, ValueError, tifffile.TiffFileError) as error:
        raise DataError(f"cannot read image {path}: {error}") from None
    pixels = int(np.prod(sorted(shape)[-2:]))  # the two largest axes are height and width
    if max_pixels is not None and pixels > max_pixels:
        raise DataError(
            f"image {path} has {pixels:,} pixels, more than the limit of {max_pixels:,}; "
            "make it smaller"
        )
    rgb = np.clip(read_bands(path, 3), 0.0, 1.0)
    return np.round(rgb * 255.0).astype(np.uint8)


def read_bands(path: str | Path, bands: int) -> np.ndarray:
    """A multi-band image (RGB + NIR, multispectral) → (H, W, ``bands``) float32.

    TIFFs are read with tifffile; their bands may be the last axis (H, W, C: interleaved, as most
    writers store them) or the first (C, H, W: planar, as GDAL/rasterio write), the last axis
    tried first. Other files are read with Pillow (grey: 1 band, RGBA: 4). Integers are scaled
    by their type's maximum (uint8 /255, uint16 /65535), floats kept as they are. A file with
    another number of bands is a DataError naming it.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in TIFFS:
            import tifffile

            array = tifffile.imread(path)
        else:
            with Image.open(path) as opened:
                array = np.asarray(opened)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read image {path}: {error}") from None
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim == 3 and array.shape[-1] != bands and array.shape[0] == bands:
        array = np.moveaxis(array, 0, -1)
    if array.ndim != 3 or array.shape[-1] != bands:
        raise DataError(
            f"image {path} has shape {array.shape}: expected {bands} bands (data.in_channels) "
            "as the last axis (H, W, C) or the first (C, H, W)"
        )
    return unit_range(array)


def unit_range(array: np.ndarray) -> np.ndarray:
    """Band values → float32 as training reads them: integers divided by their type's maximum
    (uint8 /255, uint16 /65535), floats kept as they are. Shared with the raster reader, so a
    GeoTIFF predicts with the scaling its tiles were trained with."""
    if np.issubdtype(array.dtype, np.integer):  # in float32: no float64 copy of a large window
        return np.divide(array, np.float32(np.iinfo(array.dtype).max), dtype=np.float32)
    return array.astype(np.float32)


Palette = tuple[tuple[int, int, int], ...]


def read_raw_mask(path: str | Path) -> tuple[np.ndarray, Palette | None]:
    """A label file as stored: (H, W) values or (H, W, 3) colours, and a palette PNG's colours
    (None for other files), for the label doctor to tell the file's convention."""
    try:
        with Image.open(path) as opened:
            if opened.format == "JPEG":
                raise DataError(
                    f"mask {path} is a JPEG: JPEG is lossy and smears label values at edges; "
                    "masks must be PNG (export them losslessly)"
                )
            opened.load()
            mode = opened.mode
            if mode in ("RGB", "RGBA"):
                return np.asarray(opened.convert("RGB")), None
            if mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
                raise DataError(f"cannot use mask {path}: unsupported mode {mode!r}")
            flat = opened.getpalette() if mode == "P" else None
            colours = None if flat is None else tuple(zip(*[iter(flat)] * 3, strict=False))
            return np.asarray(opened).astype(np.int64), colours
    except Image.DecompressionBombError:
        raise DataError(
            f"mask {path} has more pixels than Pillow's decompression-bomb limit: a corrupt or "
            "hostile file, or a mask to tile into smaller ones"
        ) from None
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise DataError(f"cannot read mask {path}: {error}") from None


def read_mask(path: str | Path) -> np.ndarray:
    """A label file → (H, W) array of class indices, or (H, W, 3) for RGB-coloured masks.

    Palette ('P') PNGs give their indices, not their colours; 'L' and 16-bit files their values.
    """
    return read_raw_mask(path)[0]


def grey_if_equal(mask: np.ndarray) -> np.ndarray:
    """An (H, W, 3) mask whose three channels are equal (grey saved as RGB) → its (H, W) values;
    any other mask unchanged."""
    if mask.ndim == 3 and (mask == mask[..., :1]).all():
        return mask[..., 0].astype(np.int64)
    return mask


def colours_to_labels(
    mask: np.ndarray, palette: list[tuple[int, int, int]], ignore_index: int, path: str | Path
) -> np.ndarray:
    """Map an (H, W, 3) colour mask to class indices through ``palette``; unknown colours fail."""
    codes = (
        (mask[..., 0].astype(np.int64) << 16) | (mask[..., 1].astype(np.int64) << 8) | mask[..., 2]
    )
    lut = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(palette)}
    labels = np.full(codes.shape, ignore_index, dtype=np.int64)
    found = np.zeros(codes.shape, dtype=bool)
    for code, index in lut.items():
        hit = codes == code
        labels[hit] = index
        found |= hit
    if not found.all():
        bad = np.unique(codes[~found])[:5]
        colours = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in bad)
        raise DataError(f"mask {path} has colours not in the palette: {colours}")
    return labels
