"""``atrous serve``: a local web page where a person drops an image and sees what the model sees.

    atrous serve                       # the model the last `atrous demo` saved
    atrous serve runs/voc/model --port 8080

The page (Gradio) runs every image through :func:`~atrous.inference.predict.segment_file`,
the function
``atrous predict`` uses, so the page and the command line cannot disagree. Uploads are limited in
bytes and pixels, land in a temporary folder (Gradio's upload folder is pointed there), and a file
that is not a readable image gets a message on the page while the server keeps serving. The
folder holds the files of the last :data:`KEEP_REQUESTS` requests only, and is deleted when the
server stops (Ctrl-C, SIGTERM, or ``Server.close()``).
"""

import contextlib
import copy
import dataclasses
import html
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from atrous.data import DataConfig, DataError, SyntheticScenes, build_dataset
from atrous.data.visualize import overlay, palette_image
from atrous.hub.load import load_segmenter
from atrous.inference.predict import DEMO_MODEL, Segmenter, fast_segmenter, segment_file_maps
from atrous.inference.strategies import PAPER_SCALES, InferenceConfig
from atrous.models.card import model_card_text
from atrous.models.model import DeepLab

#: Uploads larger than this many megabytes are refused by the server.
MAX_UPLOAD_MB = 20
#: Uploads with more pixels than this are refused before decoding (about 5000×5000).
MAX_PIXELS = 25_000_000
#: Built-in scenes offered as samples: the first of the validation split (never trained on).
SAMPLE_COUNT = 4
#: The temporary folder keeps the files of this many latest requests (results, uploads, Gradio's
#: copies); older ones are deleted after each request, so a long-running page stays small.
KEEP_REQUESTS = 16


@dataclass(frozen=True)
class PageOptions:
    """What the page lets the user choose for one image."""

    output_stride: int
    multi_scale_flip: bool = False
    fast: bool = False

    def inference(self) -> InferenceConfig:
        """Scales and flip; the output stride is set on the segmenter's own model copy."""
        if self.multi_scale_flip:
            return InferenceConfig(scales=PAPER_SCALES, flip=True)
        return InferenceConfig()

    def describe(self) -> str:
        scales = "scales 0.5–1.75 + flip" if self.multi_scale_flip else "single scale"
        return f"OS{self.output_stride}, {scales}, {'fast path' if self.fast else 'eager'}"


@dataclass
class PageResult:
    """What the page shows for one image (or, with only ``status``, why it could not)."""

    image: np.ndarray | None = None
    overlay: np.ndarray | None = None
    legend: str = ""
    mask_path: Path | None = None
    status: str = ""
    confidence: np.ndarray | None = None  # (H, W) uint8: white where the model is sure


def class_shares(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of the pixels given to each class."""
    counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    return counts / max(1, labels.size)


def confidence_image(confidence: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-pixel confidence (the chosen class's probability, from 1/C to 1) as an (H, W) uint8
    grey image: black at chance (1/C), white at certainty."""
    chance = 1 / max(2, num_classes)
    scaled = (confidence.astype(np.float32) - chance) / (1 - chance)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


def prune(workdir: Path, keep: int = KEEP_REQUESTS, since: float = 0.0) -> None:
    """Delete what requests before the last ``keep`` left in ``workdir``: their result folders,
    and the uploads and Gradio's copies no newer than the newest result deleted (files older
    than ``since``, the page's start, such as the samples, are the page's own and stay)."""
    results = workdir / "results"
    folders = sorted(results.iterdir(), key=lambda p: p.stat().st_mtime) if results.is_dir() else []
    if len(folders) <= keep:
        return
    cutoff = folders[-keep - 1].stat().st_mtime
    for folder in folders[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)
    for path in sorted((workdir / "gradio").rglob("*"), reverse=True):  # files before folders
        with contextlib.suppress(OSError):  # a file Gradio is still writing, a folder in use
            if path.is_file() and since < path.stat().st_mtime <= cutoff:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def _share(fraction: float) -> str:
    return "<0.1%" if fraction < 0.0005 else f"{100 * fraction:.1f}%"


def legend_html(segmenter: Segmenter, shares: np.ndarray) -> str:
    """A table of the classes present, largest share first: colour, name, share of pixels."""
    rows = []
    for index in np.argsort(-shares):
        if shares[index] == 0:
            continue
        r, g, b = segmenter.palette[index]
        name = html.escape(str(segmenter.class_names[index]))
        rows.append(
            f'<tr><td><span class="swatch" style="background:rgb({r},{g},{b})"></span></td>'
            f'<td class="legend-name">{name}</td><td>{_share(shares[index])}</td></tr>'
        )
    header = "<tr><th></th><th>class</th><th>pixels</th></tr>"
    return f'<table class="legend">{header}{"".join(rows)}</table>'


class PageModel:
    """The saved model behind the page: one segmenter per choice of options, each on its own copy
    of the model set to its output stride once (the fast path fixes it anyway), built on first
    use. Requests run one at a time (one lock for every event of the page)."""

    def __init__(self, source: str | Path, workdir: Path) -> None:
        self.source = Path(source)
        self.workdir = workdir
        self._native = load_segmenter(self.source)
        if not isinstance(self._native.network, DeepLab):
            raise ValueError(
                f"{source}: atrous serve needs a saved model folder or a training checkpoint "
                "(an exported file has a fixed output stride)"
            )
        if self._native.multilabel:
            raise ValueError(
                f"{source} is a multilabel model (classes may overlap); the page shows one class "
                "per pixel: use `atrous predict`, which writes one mask per class"
            )
        #: The output stride the model was saved at (the page's default).
        self.output_stride: int = self._native.network.output_stride
        #: Whether the model segments the built-in scenes (then the page offers some).
        self.knows_scenes = tuple(self._native.class_names) == SyntheticScenes.classes
        self._segmenters: dict[PageOptions, Segmenter] = {}
        self._lock = threading.Lock()
        self.closed = False
        self.started = time.time()  # files older than this are the page's own (the samples)

    @property
    def network(self) -> DeepLab:
        """The model as loaded (the page's card describes it)."""
        return self._native.network

    def segmenter(self, options: PageOptions) -> Segmenter:
        if options not in self._segmenters:
            network = copy.deepcopy(self._native.network)
            network.set_output_stride(options.output_stride)
            segmenter = dataclasses.replace(
                self._native, network=network, inference=options.inference()
            )
            if options.fast:
                segmenter = fast_segmenter(segmenter)
            self._segmenters[options] = segmenter
        return self._segmenters[options]

    def run(self, path: str | Path | None, options: PageOptions) -> PageResult:
        """Segment one uploaded file. A bad file, or any failure, becomes a message on the page,
        never an exception: the server keeps serving."""
        if path is None:
            return PageResult(status="Drop an image above, or pick a sample.")
        name = Path(path).name
        with self._lock:
            if self.closed:
                return PageResult(status="The server is shutting down.")
            try:
                return self._segment(Path(path), options)
            except DataError as error:
                message = str(error).replace(str(path), name)
                return PageResult(status=f"**Could not segment {_plain(name)}**: {_plain(message)}")
            except Exception as error:  # a page request must not take the server down
                return PageResult(
                    status=f"**Segmenting {_plain(name)} failed** ({type(error).__name__}): "
                    f"{_plain(str(error))}"
                )

    def _segment(self, path: Path, options: PageOptions) -> PageResult:
        segmenter = self.segmenter(options)
        start = time.perf_counter()
        image, labels, maps = segment_file_maps(segmenter, path, ["confidence"], MAX_PIXELS)
        seconds = time.perf_counter() - start
        folder = self.workdir / "results" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        mask_path = folder / f"{path.stem}_mask.png"
        palette_image(labels, segmenter.palette).save(mask_path)
        prune(self.workdir, KEEP_REQUESTS, self.started)
        height, width = labels.shape
        return PageResult(
            image,
            overlay(image, labels, segmenter.palette),
            legend_html(segmenter, class_shares(labels, segmenter.num_classes)),
            mask_path,
            f"{_plain(path.name)}: {width}×{height} segmented in {1000 * seconds:.0f} ms "
            f"({options.describe()})",
            confidence_image(maps["confidence"], segmenter.num_classes),
        )

    def close(self) -> None:
        """Wait for the running request, refuse later ones, delete the temporary folder."""
        with self._lock:
            self.closed = True
            shutil.rmtree(self.workdir, ignore_errors=True)


def _plain(text: str) -> str:
    """``text`` shown as it is in Markdown on one line: markup characters (and Gradio's ``$``
    for LaTeX) escaped, line breaks made spaces."""
    return re.sub(r"([\\`*_\[\]<>#|~!&$])", r"\\\1", " ".join(text.splitlines()))


def write_samples(folder: Path) -> list[Path]:
    """The first built-in validation scenes (never trained on) as PNG files."""
    scenes = build_dataset(DataConfig(dataset="synthetic", synthetic_val=SAMPLE_COUNT), "val")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(len(scenes)):
        path = folder / f"scene_{index}.png"
        Image.fromarray(scenes.load(index)[0]).save(path)
        paths.append(path)
    return paths


CSS = """
.legend { border-collapse: collapse; }
.legend td, .legend th { padding: 2px 10px; text-align: left; }
#image img, #overlay img, #confidence img { width: 100%; height: 100%; object-fit: contain;
                           image-rendering: pixelated; }
.swatch { display: inline-block; width: 1.1em; height: 1.1em; border: 1px solid #777;
          vertical-align: middle; }
"""


def _gradio() -> Any:
    """The Gradio module, or an ImportError that says how to install it (an optional extra)."""
    try:
        import gradio
    except ImportError:
        raise ImportError("atrous serve needs Gradio: pip install 'atrous[serve]'") from None
    return gradio


def _result_column(gr: Any) -> tuple:
    """The page's outputs: status line, image, overlay, confidence, legend, mask file."""
    status = gr.Markdown(elem_id="status")
    with gr.Row():
        shown = gr.Image(label="Image", format="png", height=320, elem_id="image")
        coloured = gr.Image(label="Overlay", format="png", height=320, elem_id="overlay")
        sure = gr.Image(
            label="Confidence (black: chance, white: certain)",
            format="png",
            height=320,
            elem_id="confidence",
        )
    with gr.Row():
        legend = gr.HTML(elem_id="legend")
        mask = gr.File(label="Mask (palette PNG of class indices)", elem_id="mask")
    return status, shown, coloured, sure, legend, mask


def build_page(model: PageModel, is_demo_model: bool) -> Any:
    """The Gradio Blocks page for ``model``."""
    gr = _gradio()

    def handle(path: str | None, stride: str, multi: bool, fast: bool) -> tuple:
        result = model.run(path, PageOptions(int(stride), multi, fast))
        mask = str(result.mask_path) if result.mask_path is not None else None
        # The upload box is emptied each time, so the next file can be dropped straight away.
        shown = (result.image, result.overlay, result.confidence, result.legend, mask)
        return *shown, result.status, path, None

    where = (
        f"`{model.source}`, the model the last `atrous demo` saved"
        if is_demo_model
        else f"`{model.source}`"
    )
    samples = write_samples(model.workdir / "samples") if model.knows_scenes else []
    with gr.Blocks(title="atrous: DeepLabV3+ segmentation") as page:
        gr.Markdown(f"# atrous: DeepLabV3+ segmentation\nModel: {where}.")
        current = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Drop an image (any format)", elem_id="upload")
                gallery = gr.Gallery(
                    [str(p) for p in samples],
                    label="…or pick a built-in scene",
                    columns=2,
                    height="auto",
                    allow_preview=False,
                    visible=bool(samples),
                    elem_id="samples",
                )
                stride = gr.Radio(
                    ["8", "16", "32"], value=str(model.output_stride), label="Output stride"
                )
                multi = gr.Checkbox(label="Multi-scale (0.5–1.75) + left-right flip")
                fast = gr.Checkbox(label="Fast path (BN folded, fastest correct backend)")
            with gr.Column(scale=2):
                status, shown, coloured, sure, legend, mask = _result_column(gr)
        with gr.Accordion("Model card", open=False):
            gr.Markdown(model_card_text(model.network))
        outputs = [shown, coloured, sure, legend, mask, status, current, upload]
        options = [stride, multi, fast]
        upload.upload(handle, [upload, *options], outputs)

        def pick(event: gr.SelectData, *chosen: Any) -> tuple:
            return handle(str(samples[event.index]), *chosen)

        gallery.select(pick, options, outputs)
        for control in options:
            control.change(handle, [current, *options], outputs)
    return page


@dataclass
class Server:
    """A running page: its address, the model behind it (with the temporary folder) and the
    Gradio app."""

    url: str
    model: PageModel
    page: Any
    previous_temp_dir: str | None = None  # GRADIO_TEMP_DIR before the page took it over

    @property
    def workdir(self) -> Path:
        return self.model.workdir

    def close(self) -> None:
        """Stop serving, delete the temporary folder (uploads, results) once the running request
        is done, and restore the environment."""
        self.page.close()
        self.model.close()
        _restore_temp_dir(self.previous_temp_dir)


def _restore_temp_dir(previous: str | None) -> None:
    if previous is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = previous


def launch(
    model: str | Path = DEMO_MODEL,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_upload_mb: int = MAX_UPLOAD_MB,
    block: bool = True,
    announce: Callable[[str], None] = print,
) -> Server:
    """Start the page for ``model`` on ``host:port``. With ``block`` it serves until
    interrupted; otherwise the server runs in a background thread until ``close()``."""
    _gradio()  # before anything is created
    is_demo = Path(model) == Path(DEMO_MODEL)
    if is_demo and not Path(model).is_dir():
        raise FileNotFoundError(
            f"no model at {model}: run `atrous demo` first, or name a saved model folder"
        )
    workdir = Path(tempfile.mkdtemp(prefix="atrous-serve-"))
    previous_temp_dir = os.environ.get("GRADIO_TEMP_DIR")
    # Gradio keeps uploads and returned files in its upload folder: make it ours, temporary.
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        page_model = PageModel(model, workdir)  # any source atrous.load takes
        page = build_page(page_model, is_demo)
        page.queue(default_concurrency_limit=1)
        page.launch(
            server_name=host,
            server_port=port,
            max_file_size=f"{max_upload_mb}mb",
            prevent_thread_lock=True,
            ssr_mode=False,
            quiet=True,
            css=CSS,
            footer_links=[],
        )
    except BaseException:  # a model that cannot load, a port in use: leave nothing behind
        shutil.rmtree(workdir, ignore_errors=True)
        _restore_temp_dir(previous_temp_dir)
        raise
    server = Server(f"http://{host}:{page.server_port}", page_model, page, previous_temp_dir)
    announce(f"atrous serve: {model} on {server.url} (uploads in {workdir})")
    if block:
        try:
            with _sigterm_interrupts():
                page.block_thread()
        finally:
            server.close()
    return server


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Inside the block SIGTERM (a service manager, ``kill``) stops the page as Ctrl-C does, so
    the temporary folder is deleted either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
