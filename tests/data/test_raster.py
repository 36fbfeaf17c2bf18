"""GeoTIFFs through rasterio (window reads, nodata, mask profiles) and in folder datasets."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from helpers import UTM_CRS, UTM_TRANSFORM, write_geotiff
from rasterio.windows import Window

from atrous.data import DataConfig
from atrous.data.check_data import check_data
from atrous.data.folder import FolderDataset
from atrous.data.io import DataError, read_image
from atrous.data.raster import (
    MASK_NODATA,
    check_bands,
    is_georeferenced,
    mask_profile,
    open_raster,
    read_window,
)
from atrous.errors import AtrousError

UTM = UTM_CRS
TRANSFORM = Affine(*UTM_TRANSFORM)


def test_window_reads_scale_as_training_and_mark_nodata(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(1, 65535, (5, 40, 48), dtype=np.uint16)
    array[:, :6, :8] = 0  # every band nodata
    array[2, 10, 10] = 0  # one band only: still valid
    write_geotiff(tmp_path / "s.tif", array, nodata=0)
    with open_raster(tmp_path / "s.tif") as dataset:
        values, valid = read_window(dataset, Window(4, 2, 30, 20))
        profile = mask_profile(dataset)
    np.testing.assert_allclose(values, array[:, 2:22, 4:34] / 65535, rtol=1e-6)
    assert values.dtype == np.float32
    assert not valid[:4, :4].any() and valid[4:, :].all() and valid[8, 6]
    assert profile["crs"] == UTM and profile["transform"] == TRANSFORM
    assert (profile["width"], profile["height"], profile["nodata"]) == (48, 40, MASK_NODATA)
    assert profile["compress"] == "deflate" and profile["tiled"]


def test_band_count_and_unreadable_files_are_clear_errors(tmp_path):
    write_geotiff(tmp_path / "rgb.tif", np.zeros((3, 8, 8), np.uint8))
    with open_raster(tmp_path / "rgb.tif") as dataset, pytest.raises(DataError) as error:
        check_bands(dataset, tmp_path / "rgb.tif", 4)
    message = str(error.value)
    assert "rgb.tif has 3 bands but the model reads 4" in message
    assert "--data.in_channels 3" in message
    (tmp_path / "bad.tif").write_bytes(b"not a raster")
    with pytest.raises(DataError, match=r"cannot read raster .*bad\.tif"):
        is_georeferenced(tmp_path / "bad.tif")


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_georeferencing_is_told_from_crs_or_transform(tmp_path):
    write_geotiff(tmp_path / "geo.tif", np.zeros((1, 8, 8), np.uint8))
    write_geotiff(tmp_path / "plain.tif", np.zeros((1, 8, 8), np.uint8), georeferenced=False)
    assert is_georeferenced(tmp_path / "geo.tif")
    assert not is_georeferenced(tmp_path / "plain.tif")


def test_without_rasterio_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "rasterio", None)
    with pytest.raises(AtrousError, match=r"pip install 'atrous\[geo\]'"):
        is_georeferenced(tmp_path / "any.tif")


def write_geotiff_folder(root, count=2, size=(40, 48)) -> list[np.ndarray]:
    """A folder dataset of 4-band uint16 GeoTIFF images and single-band uint8 GeoTIFF masks
    (255 nodata = ignore); returns the images."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.yaml").write_text("names: [background, field, water]\n")
    rng = np.random.default_rng(1)
    images = []
    for index in range(count):
        image = rng.integers(0, 65535, (4, *size), dtype=np.uint16)
        mask = rng.integers(0, 3, size, dtype=np.uint8)
        mask[:3] = MASK_NODATA
        write_geotiff(root / "images" / f"tile_{index}.tif", image)
        write_geotiff(root / "masks" / f"tile_{index}.tif", mask[None], nodata=MASK_NODATA)
        images.append(image)
    return images


def test_folder_dataset_reads_geotiff_pairs_and_check_data_passes(tmp_path):
    images = write_geotiff_folder(tmp_path)
    dataset = FolderDataset(tmp_path, in_channels=4)
    image, mask = dataset.load(1)
    assert image.shape == (40, 48, 4) and image.dtype == np.float32
    np.testing.assert_allclose(image, np.moveaxis(images[1], 0, -1) / 65535, rtol=1e-6)
    assert mask.shape == (40, 48) and set(np.unique(mask)) <= {0, 1, 2, MASK_NODATA}
    assert (mask[:3] == dataset.ignore_index).all()
    config = DataConfig(dataset="folder", root=str(tmp_path), train_split="", in_channels=4)
    result = check_data(config, progress=False)
    assert result.ok and result.samples == 2


def test_check_data_catches_a_geotiff_mask_of_another_size(tmp_path):
    write_geotiff_folder(tmp_path)
    small = np.zeros((1, 20, 48), np.uint8)
    write_geotiff(tmp_path / "masks" / "tile_0.tif", small, nodata=MASK_NODATA)
    config = DataConfig(dataset="folder", root=str(tmp_path), train_split="", in_channels=4)
    result = check_data(config, progress=False)
    assert not result.ok
    assert any("tile_0" in message for message in result.report.errors)


def test_sixteen_bit_rgb_geotiffs_read_as_pictures(tmp_path):
    rng = np.random.default_rng(2)
    array = rng.integers(0, 65535, (3, 24, 32), dtype=np.uint16)
    write_geotiff(tmp_path / "rgb16.tif", array)  # planar uint16: Pillow cannot open it
    image = read_image(tmp_path / "rgb16.tif")
    expected = np.round(np.moveaxis(array, 0, -1) / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    with pytest.raises(DataError, match="more than the limit"):
        read_image(tmp_path / "rgb16.tif", max_pixels=100)
    write_geotiff(tmp_path / "five.tif", array[:1].repeat(5, 0))
    with pytest.raises(DataError, match="expected 3 bands"):
        read_image(tmp_path / "five.tif")
