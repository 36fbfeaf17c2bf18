"""``atrous serve``: the page's inference (shared with ``atrous predict``), its handling of bad
uploads, and the real page driven in a real browser."""

import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atrous.apps.serve import MAX_PIXELS, PageModel, PageOptions, class_shares, launch
from atrous.export.onnx import export_onnx
from atrous.hub.load import load, load_segmenter
from atrous.inference.fast import FastNetwork
from atrous.inference.predict import predict_files
from atrous.inference.strategies import PAPER_SCALES
from atrous.models.zoo import create_model

gradio = pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def page_model(tiny_run, tmp_path_factory):
    return PageModel(tiny_run / "model", tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A real photograph (scikit-image's bundled cat), 451×300."""
    skimage_data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("photos") / "chelsea.jpg"
    Image.fromarray(skimage_data.chelsea()).save(path, quality=92)
    return path


def test_class_shares_count_pixels():
    labels = np.array([[0, 0, 1, 3], [3, 3, 3, 3]], dtype=np.uint8)
    assert np.allclose(class_shares(labels, 5), [2 / 8, 1 / 8, 0, 5 / 8, 0])


@pytest.mark.slow
def test_page_result_is_what_predict_writes(page_model, photo, tmp_path):
    result = page_model.run(photo, PageOptions(16))
    assert result.overlay.shape == (300, 451, 3) and result.image.shape == (300, 451, 3)
    report = predict_files(load_segmenter(page_model.source), [photo], tmp_path, progress=False)
    assert not report.failed
    written = Image.open(tmp_path / "masks" / "chelsea.png")
    shown = Image.open(result.mask_path)
    assert shown.mode == "P" and np.array_equal(np.array(shown), np.array(written))
    assert np.array_equal(result.overlay, np.array(Image.open(tmp_path / "overlays/chelsea.png")))
    assert result.mask_path.is_relative_to(page_model.workdir)
    assert "chelsea.jpg: 451×300 segmented in" in result.status
    assert 'class="legend"' in result.legend


@pytest.mark.slow
def test_page_options_change_the_inference(page_model, photo):
    plain = page_model.run(photo, PageOptions(16))
    multi = page_model.run(photo, PageOptions(8, multi_scale_flip=True))
    assert "OS8, scales 0.5–1.75 + flip, eager" in multi.status
    chosen = page_model.segmenter(PageOptions(8, True))
    assert chosen.network.output_stride == 8 and chosen.inference.flip
    assert chosen.inference.scales == PAPER_SCALES
    assert page_model.segmenter(PageOptions(16)).network.output_stride == 16  # copies, not shared
    image = np.array(Image.open(photo).convert("RGB"))
    assert not torch.allclose(
        chosen.probabilities(image), page_model.segmenter(PageOptions(16)).probabilities(image)
    )
    fast = page_model.run(photo, PageOptions(16, fast=True))
    assert "OS16, single scale, fast path" in fast.status
    assert isinstance(page_model.segmenter(PageOptions(16, fast=True)).network, FastNetwork)
    mask = np.array(Image.open(plain.mask_path))
    assert (np.array(Image.open(fast.mask_path)) == mask).mean() > 0.999


def test_bad_uploads_become_messages(page_model, tmp_path):
    corrupt = tmp_path / "holiday.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    result = page_model.run(corrupt, PageOptions(16))
    assert result.overlay is None and result.mask_path is None
    assert result.status.startswith("**Could not segment holiday.png**: cannot read image")
    assert str(tmp_path) not in result.status
    huge = tmp_path / "huge.png"
    Image.new("L", (MAX_PIXELS // 1000 + 1, 1000)).save(huge)
    assert "more than the limit" in page_model.run(huge, PageOptions(16)).status
    assert "Drop an image" in page_model.run(None, PageOptions(16)).status
    odd = tmp_path / "a_b*<i>.png"
    odd.write_bytes(b"GIF89a broken")
    assert page_model.run(odd, PageOptions(16)).status.startswith(
        r"**Could not segment a\_b\*\<i\>.png**"
    )


@pytest.mark.slow
def test_any_failure_becomes_a_message_and_the_page_keeps_working(page_model, photo, monkeypatch):
    def out_of_memory(options):
        raise RuntimeError("not enough memory")

    monkeypatch.setattr(page_model, "segmenter", out_of_memory)
    failed = page_model.run(photo, PageOptions(8))
    assert failed.status == "**Segmenting chelsea.jpg failed** (RuntimeError): not enough memory"
    monkeypatch.undo()
    assert page_model.run(photo, PageOptions(8)).overlay is not None


@pytest.mark.slow
def test_serve_refuses_a_missing_demo_model_and_exported_files(tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="run `atrous demo` first"):
        launch(block=False)
    exported = export_onnx(load(tiny_run / "model"), tmp_path / "m.onnx", check=False).path
    with pytest.raises(ValueError, match="needs a saved model folder or a training checkpoint"):
        PageModel(exported, tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    with pytest.raises(ValueError, match="needs a saved model folder"):
        launch(exported, block=False)
    assert not list((tmp_path / "tmp").iterdir())  # no temporary folder left behind
    assert "GRADIO_TEMP_DIR" not in os.environ


@pytest.mark.slow
def test_scenes_are_offered_only_to_models_of_the_built_in_classes(page_model, tmp_path):
    assert page_model.knows_scenes
    other = create_model("deeplabv3_mobilenetv2", num_classes=3, width_multiplier=0.25)
    other.save_pretrained(tmp_path / "other", class_names=["sky", "sea", "sand"])
    assert not PageModel(tmp_path / "other", tmp_path).knows_scenes


@pytest.mark.slow
def test_a_closed_page_model_deletes_its_folder_and_refuses_requests(tiny_run, photo, tmp_path):
    model = PageModel(tiny_run / "model", tmp_path / "work")
    (tmp_path / "work").mkdir()
    assert model.run(photo, PageOptions(16)).mask_path.is_file()
    model.close()
    assert not (tmp_path / "work").exists()
    assert model.run(photo, PageOptions(16)).status == "The server is shutting down."


# ---------------------------------------------------------------------------- the real page

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def browser(tmp_path):
    """Chromium driven by selenium. Without one the test skips, unless ATROUS_REQUIRE_BROWSER=1
    (set by .ci/run): then it fails, so CI cannot pass without having run it."""
    missing = "no browser: install Debian's chromium and chromium-driver (.ci/run does)"
    if os.environ.get("ATROUS_REQUIRE_BROWSER") == "1":
        if BROWSER is None or DRIVER is None:
            pytest.fail(f"ATROUS_REQUIRE_BROWSER=1 but {missing}")
        import selenium.webdriver as webdriver
    else:
        webdriver = pytest.importorskip("selenium.webdriver")
        if BROWSER is None or DRIVER is None:
            pytest.skip(f"{missing} to drive the page")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    yield driver
    driver.quit()


@pytest.mark.slow
def test_the_page_in_a_real_browser(tiny_run, photo, browser, tmp_path, monkeypatch):
    """Upload a photograph, a file over the size limit, a corrupt file, then a built-in scene,
    and pick a sample, as a person would.

    ATROUS_SERVE_MODEL picks the model (the README's screenshot uses runs/demo/model);
    ATROUS_SCREENSHOT saves the page after the last upload there.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "unused"))  # restored afterwards
    model = os.environ.get("ATROUS_SERVE_MODEL", str(tiny_run / "model"))
    server = launch(model, port=free_port(), max_upload_mb=1, block=False, announce=lambda _: None)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    scene = server.workdir / "samples" / "scene_1.png"
    try:
        browser.get(server.url)
        wait = WebDriverWait(browser, 90)

        def upload(path: Path) -> None:
            field = wait.until(
                lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]")
            )
            field[0].send_keys(str(path))

        def status() -> str:
            return browser.find_element(By.ID, "status").text

        def overlay_size() -> tuple[int, int] | None:
            images = browser.find_elements(By.CSS_SELECTOR, "#overlay img")
            if not images:
                return None
            size = browser.execute_script(
                "const i = arguments[0]; return i.complete ? [i.naturalWidth, i.naturalHeight]"
                " : null;",
                images[0],
            )
            return tuple(size) if size else None

        upload(photo)
        wait.until(lambda d: "chelsea.jpg: 451×300 segmented" in status())
        wait.until(lambda d: overlay_size() == (451, 300))
        legend = browser.find_element(By.ID, "legend").text
        assert "class" in legend and "%" in legend and "background" in legend
        assert any(p.name == "chelsea.jpg" for p in server.workdir.rglob("*"))

        too_big = tmp_path / "too_big.png"
        too_big.write_bytes(os.urandom(1_500_000))
        upload(too_big)
        toast = '[data-testid="toast-text"]'
        wait.until(
            lambda d: any(
                "exceed the maximum allowed size" in e.text
                for e in d.find_elements(By.CSS_SELECTOR, toast)
            )
        )
        for close in browser.find_elements(By.CSS_SELECTOR, '[data-testid="toast-close"]'):
            close.click()
        assert not any(p.name == "too_big.png" for p in server.workdir.rglob("*"))

        upload(corrupt)
        wait.until(lambda d: "Could not segment corrupt.png" in status())
        assert "cannot read image" in status()

        upload(scene)
        wait.until(lambda d: "scene_1.png: 128×128 segmented" in status())
        wait.until(lambda d: overlay_size() == (128, 128))
        assert browser.find_elements(By.CSS_SELECTOR, "#mask a, #mask [download]")

        browser.find_elements(By.CSS_SELECTOR, "#samples button img, #samples img")[0].click()
        wait.until(lambda d: "scene_0.png: 128×128 segmented" in status())
        if shot := os.environ.get("ATROUS_SCREENSHOT"):
            Path(shot).parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(shot)
    finally:
        server.close()
    assert not server.workdir.exists()  # uploads and results are gone with the server
    assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path / "unused")
