"""Rasters predicted window by window: the input's grid and nodata kept, windows blended to the
whole-image prediction, and the band count checked."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from helpers import UTM_CRS, UTM_TRANSFORM, randomize_bn, write_geotiff

from atrous.cli import main
from atrous.data.io import DataError
from atrous.data.raster import MASK_NODATA
from atrous.errors import AtrousError
from atrous.inference import raster
from atrous.inference.predict import Segmenter
from atrous.inference.raster import (
    plan_blocks,
    predict_raster,
    split_rasters,
    window_probabilities,
)
from atrous.inference.strategies import InferenceConfig, segment
from atrous.models.zoo import create_model

SIZE, WINDOW, BLOCK = 256, 96, 128  # 4×4 windows, 2×2 blocks
NODATA_CORNER = (slice(0, 20), slice(0, 30))


def blob_scene(size: int = SIZE, bands: int = 4) -> np.ndarray:
    """(bands, size, size) uint16: bright blobs on a dark ground, each band its own levels, a
    nodata (0) corner."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    blobs = np.sin(xx / 9.0) * np.sin(yy / 13.0) > 0.2
    levels = [np.where(blobs, 50000 - 9000 * b, 6000 + 9000 * b) for b in range(bands)]
    scene = (np.stack(levels) + rng.integers(0, 2000, (bands, size, size))).astype(np.uint16)
    scene[:, NODATA_CORNER[0], NODATA_CORNER[1]] = 0
    return scene


def normalised(scene: np.ndarray, model) -> torch.Tensor:
    """The scene as predict_raster feeds it: /65535, the model's mean and std, nodata → 0."""
    mean = torch.tensor(model.config.mean)[:, None, None]
    std = torch.tensor(model.config.std)[:, None, None]
    pixels = (torch.from_numpy(scene / 65535.0).float() - mean) / std
    pixels[:, (scene == 0).all(0)] = 0
    return pixels


def spread_classes(model, pixels: torch.Tensor) -> None:
    """Centre and scale the classifier on this scene's features, so that a random network's
    classes vary across the scene (its raw logits favour one class everywhere)."""
    features = []
    hook = model.classifier.register_forward_hook(lambda m, args, out: features.append(args[0]))
    with torch.no_grad():
        model(pixels[None])
    hook.remove()
    centre = features[0][0].mean((1, 2))
    weight = model.classifier.weight
    with torch.no_grad():
        logits = torch.einsum(
            "cf,fhw->chw", weight[:, :, 0, 0], features[0][0] - centre[..., None, None]
        )
        weight.mul_(3 / logits.std())
        model.classifier.bias.copy_(-(weight[:, :, 0, 0] @ centre))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The scene file, a 4-band model whose classes vary on it, the whole-image probabilities
    and the scene predicted in 96-px windows and 128-px blocks."""
    folder = tmp_path_factory.mktemp("raster")
    pixels = blob_scene()
    write_geotiff(folder / "scene.tif", pixels, nodata=0)
    torch.manual_seed(0)
    model = create_model(
        "deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25, in_channels=4
    )
    randomize_bn(model)
    model.eval()
    inputs = normalised(pixels, model)
    spread_classes(model, inputs)
    whole = segment(model, inputs[None], InferenceConfig())[0]
    segmenter = Segmenter.from_model(model)
    crops = []
    with pytest.MonkeyPatch.context() as patch:

        def counted(segmenter, batch):
            crops.append(len(batch))
            return window_probabilities(segmenter, batch)

        patch.setattr(raster, "window_probabilities", counted)
        out = predict_raster(segmenter, folder / "scene.tif", folder / "out", WINDOW, BLOCK, False)
    return folder, model, whole, out, sum(crops)


@pytest.mark.slow
def test_the_mask_keeps_the_grid_and_nodata(scene):
    *_, out, _ = scene
    assert out.name == "scene.tif"
    with rasterio.open(out) as mask:
        assert mask.crs == UTM_CRS and mask.transform == Affine(*UTM_TRANSFORM)
        assert (mask.width, mask.height, mask.count) == (SIZE, SIZE, 1)
        assert mask.dtypes == ("uint8",) and mask.nodata == MASK_NODATA
        assert mask.compression.name == "deflate" and mask.block_shapes == [(BLOCK, BLOCK)]
        assert mask.tags()["classes"] == "class 0,class 1,class 2"
        assert mask.colormap(1)[1] == (128, 0, 0, 255)  # the VOC palette's class 1
        labels = mask.read(1)
    valid = np.ones(labels.shape, bool)
    valid[NODATA_CORNER] = False
    assert (labels[~valid] == MASK_NODATA).all()
    assert (labels[valid] < 3).all()


@pytest.mark.slow
def test_windows_blend_to_the_whole_image_prediction(scene):
    _, _, whole, out, windows = scene
    with rasterio.open(out) as mask:
        labels = mask.read(1)
    # A block row runs each of its windows once (those across the middle serve both blocks):
    # tops 0, 64 for the first, 64, 128, 160 for the second (64 straddles both), 4 lefts each.
    assert windows == 2 * 4 + 3 * 4
    expected = whole.argmax(0).numpy()
    valid = np.ones(labels.shape, bool)
    valid[NODATA_CORNER] = False
    assert min(np.bincount(expected[valid], minlength=3)) > 1000  # every class is present
    differ = (labels != expected) & valid
    assert differ.mean() < 0.02
    top_two = whole.sort(0).values[-2:].numpy()
    # Where they differ, the whole-image prediction itself hesitates between two classes.
    assert (top_two[1] - top_two[0])[differ].max(initial=0) < 0.15
    # Away from the scene's borders and the nodata corner (less context in a window there):
    assert differ[32:-32, 40:-32].mean() < 0.005


def test_blocks_see_every_window_that_touches_them():
    blocks = plan_blocks(256, 200, (96, 96), 1 / 3, 128)
    assert [b.rows for b in blocks[::2]] == [(0, 128), (128, 256)]
    assert [b.cols for b in blocks[:2]] == [(0, 128), (128, 200)]
    assert blocks[0].windows == [(t, s) for t in (0, 64) for s in (0, 64, 104)]
    assert blocks[3].windows == [(t, s) for t in (64, 128, 160) for s in (64, 104)]
    small = plan_blocks(40, 50, (40, 50), 1 / 3, 128)
    assert [(b.rows, b.cols, b.windows) for b in small] == [((0, 40), (0, 50), [(0, 0)])]


@pytest.mark.slow
def test_atrous_predict_writes_geotiffs_and_names_a_band_mismatch(scene, capsys):
    folder, model, _, blocked, _ = scene
    model.save_pretrained(folder / "model")
    write_geotiff(folder / "rgb.tif", blob_scene(64, bands=3))
    status = main(
        [
            "predict",
            str(folder / "scene.tif"),
            str(folder / "rgb.tif"),
            "--model",
            str(folder / "model"),
            "--output_dir",
            str(folder / "cli"),
            "--inference.window",
            str(WINDOW),
            "--progress",
            "false",
        ]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert "rgb.tif has 3 bands but the model reads 4" in err
    assert "--data.in_channels 3" in err
    assert not (folder / "cli" / "rgb.tif").exists()
    assert sorted(p.name for p in (folder / "cli").iterdir()) == ["scene.tif"]
    with rasterio.open(folder / "cli" / "scene.tif") as one, rasterio.open(blocked) as many:
        np.testing.assert_array_equal(one.read(), many.read())  # one block equals four


def test_a_band_mismatch_is_one_clear_error(tmp_path):
    write_geotiff(tmp_path / "two.tif", np.ones((2, 32, 32), np.uint8))
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=2, width_multiplier=0.25)
    with pytest.raises(DataError, match=r"two\.tif has 2 bands but the model reads 3"):
        predict_raster(Segmenter.from_model(model), tmp_path / "two.tif", tmp_path, progress=False)


@pytest.mark.slow
def test_multilabel_rasters_get_one_band_per_class(tmp_path):
    write_geotiff(tmp_path / "s.tif", blob_scene(48, bands=3), nodata=0)
    model = create_model(
        "deeplabv3plus_mobilenetv2", num_classes=2, width_multiplier=0.25, task="multilabel"
    )
    segmenter = Segmenter.from_model(model)
    out = predict_raster(segmenter, tmp_path / "s.tif", tmp_path / "out", 32, progress=False)
    with rasterio.open(out) as mask:
        assert mask.count == 2 and mask.descriptions == ("class 0", "class 1")
        bands = mask.read()
    assert set(np.unique(bands[:, 20:, 30:])) <= {0, 1}
    assert (bands[:, :20, :30] == MASK_NODATA).all()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_tiffs_are_rasters_when_georeferenced_or_not_rgb(tmp_path):
    write_geotiff(tmp_path / "geo.tif", np.zeros((3, 8, 8), np.uint8))
    write_geotiff(tmp_path / "photo.tif", np.zeros((3, 8, 8), np.uint8), georeferenced=False)
    files = [tmp_path / "geo.tif", tmp_path / "photo.tif", tmp_path / "a.png", Path("b.jp2")]
    rasters, pictures = split_rasters(files, 3)
    assert rasters == [files[0], files[3]] and pictures == [files[1], files[2]]
    rasters, pictures = split_rasters(files, 4)
    assert rasters == [files[0], files[1], files[3]] and pictures == [files[2]]


def test_without_rasterio_predicting_a_raster_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rasterio", None)
    photo = tmp_path / "photo.tif"
    assert split_rasters([photo], 3) == ([], [photo])  # read as a picture, as before
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=2, width_multiplier=0.25)
    with pytest.raises(AtrousError, match=r"pip install 'atrous\[geo\]'"):
        predict_raster(Segmenter.from_model(model), photo, tmp_path, progress=False)


def test_a_failed_prediction_leaves_no_mask_behind(tmp_path, monkeypatch):
    write_geotiff(tmp_path / "s.tif", blob_scene(48, bands=3))
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=2, width_multiplier=0.25)

    def broken(segmenter, crops):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(raster, "window_probabilities", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        predict_raster(Segmenter.from_model(model), tmp_path / "s.tif", tmp_path / "out", 32)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_confidence_and_entropy_rasters_lie_on_the_mask_grid(scene):
    folder, model, whole, _, _ = scene
    maps = ("confidence", "entropy")
    segmenter = Segmenter.from_model(model)
    out = folder / "maps"
    predict_raster(segmenter, folder / "scene.tif", out, WINDOW, BLOCK, False, maps)
    values = {}
    for name in maps:
        with rasterio.open(out / name / "scene.tif") as written:
            assert written.crs == UTM_CRS and written.transform == Affine(*UTM_TRANSFORM)
            assert (written.width, written.height, written.count) == (SIZE, SIZE, 1)
            assert written.dtypes == ("float32",) and np.isnan(written.nodata)
            values[name] = written.read(1)
    confidence, entropy = values["confidence"], values["entropy"]
    assert np.isnan(confidence[NODATA_CORNER]).all() and np.isnan(entropy[NODATA_CORNER]).all()
    inner = (slice(32, -32), slice(40, -32))
    assert (confidence[inner] >= 1 / 3 - 1e-3).all() and (confidence[inner] <= 1).all()
    assert (entropy[inner] >= 0).all() and (entropy[inner] <= np.log(3) + 1e-3).all()
    expected = whole.amax(0).numpy()[inner]
    assert np.abs(confidence[inner] - expected).mean() < 0.02  # blended windows ≈ whole image
    assert not list(out.rglob(".*partial*"))
