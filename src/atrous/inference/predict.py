"""Running a trained model on the user's images: label maps, palette PNGs and colour overlays.

:class:`Segmenter` is the one path from a raw RGB image to a label map. It applies the same
normalisation as evaluation and the same
:func:`~atrous.inference.strategies.segment` strategies, so a
prediction equals what validation scored (a common complaint about DeepLab code: standalone
results differ from validation). ``atrous predict``, the demo and the demo page all use it.
It takes a model (:meth:`Segmenter.from_model`), an exported ``.onnx`` file or an OpenVINO IR
(``.xml``); finding a model by name is ``atrous.load``'s job
(:func:`atrous.hub.load.load_segmenter` does both).
"""

from __future__ import annotations

import dataclasses
import glob
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from atrous.data.base import Task
from atrous.data.folder import IMAGE_SUFFIXES
from atrous.data.io import DataError, read_image
from atrous.data.palettes import voc_palette
from atrous.data.visualize import colorize, overlay, overlay_multilabel, palette_image
from atrous.errors import InputError
from atrous.export.onnx import OnnxNetwork
from atrous.export.openvino import OpenvinoNetwork
from atrous.inference.fast import (
    CALIBRATION_IMAGES,
    Backend,
    Precision,
    normalise_images,
    optimize_for_inference,
)
from atrous.inference.pipeline import (
    BackgroundWriter,
    Decoded,
    ImageFiles,
    PipelineConfig,
    batches_by_size,
    decoded_items,
)
from atrous.inference.regions import (
    MapName,
    needs_regions,
    region_side,
    segment_labels,
    segment_regions,
)
from atrous.inference.strategies import (
    InferenceConfig,
    Network,
    align_input,
    output_stride,
)
from atrous.models.model import DeepLab
from atrous.runtime.precision import autocast

#: Where ``atrous demo`` saves its model; the default of ``atrous predict``/``eval``/``export``.
DEMO_MODEL = "runs/demo/model"


@dataclass
class Segmenter:
    """A trained network with what it needs to run on raw images.

    ``network`` is a DeepLab module or any callable from normalised (N, 3, H, W) images to
    logits (e.g. an ONNX Runtime session wrapper). ``task`` says how logits become labels: the
    most probable class (multiclass, binary) or every class whose sigmoid exceeds 0.5
    (multilabel).
    """

    network: Network
    mean: Sequence[float]
    std: Sequence[float]
    num_classes: int
    class_names: Sequence[str] | None = None
    palette: Sequence[Sequence[int]] | None = None
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    precision: str = "fp32"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    task: Task = "multiclass"

    def __post_init__(self) -> None:
        if self.palette is None:
            self.palette = voc_palette(self.num_classes)
        if self.class_names is None:
            self.class_names = tuple(f"class {i}" for i in range(self.num_classes))

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def probabilities(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB → (C, H, W) class probabilities at the image's size (region by
        region above ``inference.max_pixels``: :mod:`atrous.inference.regions`)."""
        batch = normalise_images([image], self.mean, self.std)[0].to(self.device)
        with autocast(self.device, self.precision):
            return segment_regions(self.network, batch, self.inference, self.multilabel)[0]

    def decide(
        self, batch: torch.Tensor, maps: Sequence[MapName] = ()
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Normalised (N, 3, H, W) images → (N, H, W) uint8 label maps (multilabel: (N, C, H, W)
        of 0/1) and the per-pixel ``maps`` asked for (float16 ``confidence``, ``entropy``),
        decided on the device, region by region above ``inference.max_pixels``."""
        with autocast(self.device, self.precision):
            decision = segment_labels(
                self.network, batch.to(self.device), self.inference, self.multilabel, maps
            )
        arrays = {name: value.cpu().numpy() for name, value in decision.maps.items()}
        return decision.labels.cpu().numpy(), arrays

    def labels(self, batch: torch.Tensor) -> np.ndarray:
        """Normalised (N, 3, H, W) images → (N, H, W) uint8 label maps, decided on the device;
        multilabel: (N, C, H, W) uint8 of 0/1."""
        return self.decide(batch)[0]

    def decide_image(
        self, image: np.ndarray, maps: Sequence[MapName] = ()
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(H, W, 3) uint8 RGB → its label map and per-pixel ``maps`` (see :meth:`decide`)."""
        labels, arrays = self.decide(normalise_images([image], self.mean, self.std)[0], maps)
        return labels[0], {name: value[0] for name, value in arrays.items()}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB → (H, W) uint8 label map; multilabel: (C, H, W) uint8 of 0/1."""
        return self.decide_image(image)[0]

    @classmethod
    def from_model(
        cls,
        model: DeepLab,
        inference: InferenceConfig | None = None,
        precision: str = "fp32",
        device: str | torch.device = "cpu",
    ) -> Segmenter:
        """A segmenter of ``model`` (moved to ``device``, in eval mode), with its normalisation,
        classes and task. An ``inference`` output stride is set on the model once (the model
        becomes this segmenter's: its ``config`` then reports that stride)."""
        if model.config is None:
            raise ValueError("the model has no .config; build it with atrous.create_model")
        model = model.to(device).eval()
        inference = inference or InferenceConfig()
        if inference.output_stride is not None:
            model.set_output_stride(inference.output_stride)
            inference = dataclasses.replace(inference, output_stride=None)
        config = model.config
        return cls(
            model,
            config.mean,
            config.std,
            config.num_classes,
            model.class_names,
            model.palette,
            inference,
            precision,
            torch.device(device),
            config.task,
        )

    @classmethod
    def from_onnx(
        cls, path: str | Path, inference: InferenceConfig | None = None, precision: str = "fp32"
    ) -> Segmenter:
        """A segmenter of an ``.onnx`` file written by ``atrous export`` (ONNX Runtime, CPU),
        its classes and normalisation read from the file's metadata."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"no ONNX file at {path}")
        return cls.from_exported(OnnxNetwork(path), path, inference, precision)

    @classmethod
    def from_openvino(
        cls, path: str | Path, inference: InferenceConfig | None = None, precision: str = "fp32"
    ) -> Segmenter:
        """A segmenter of an OpenVINO IR (``.xml``) written by ``atrous export --format
        openvino`` (CPU, f32 as it was checked), its classes and normalisation read from the IR."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"no OpenVINO IR at {path}")
        return cls.from_exported(OpenvinoNetwork(path), path, inference, precision)

    @classmethod
    def from_exported(
        cls,
        network: OnnxNetwork | OpenvinoNetwork,
        path: str | Path,
        inference: InferenceConfig | None = None,
        precision: str = "fp32",
    ) -> Segmenter:
        """A segmenter of an exported ``network`` (from the file ``path``), with the classes and
        normalisation its ``metadata`` holds."""
        meta = network.metadata
        if not meta:
            raise ValueError(f"{path} has no atrous metadata; export it with `atrous export`")
        return cls(
            network,
            meta["mean"],
            meta["std"],
            meta["num_classes"],
            meta["class_names"],
            meta["palette"],
            inference or InferenceConfig(),
            precision,
            torch.device("cpu"),
            meta.get("config", {}).get("task", "multiclass"),
        )


@dataclass
class PredictReport:
    """What :func:`predict_files` wrote, and which inputs failed with which message."""

    written: list[Path]
    failed: list[tuple[Path, str]]
    segmented: int = 0  # images segmented (their files are in ``written``)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (their image files) and glob patterns → a de-duplicated list.

    Files named one by one are kept whatever their ending, so a wrong file gets an error
    naming it rather than being skipped silently.
    """
    found: dict[Path, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = [p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
            if not matches:
                raise InputError(
                    f"no image files in the folder {path} (looked for "
                    f"{', '.join(sorted(IMAGE_SUFFIXES))})"
                )
        elif path.is_file():
            matches = [path]
        else:
            matches = [
                Path(p)
                for p in sorted(glob.glob(str(item), recursive=True))
                if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES
            ]
            if not matches:
                raise InputError(f"no image files match {str(item)!r} (not a file or folder)")
        found.update(dict.fromkeys(matches))
    files = list(found)
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise ValueError(
                f"{stems[path.stem]} and {path} share the name {path.stem!r}; their outputs "
                "would overwrite each other (predict them into separate folders)"
            )
        stems[path.stem] = path
    return files


def side_by_side(
    image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]]
) -> np.ndarray:
    """Image | overlay | label colours, as one (H, 3W, 3) uint8 picture."""
    return np.concatenate(
        [image, overlay(image, labels, palette), colorize(labels, palette)], axis=1
    )


def segment_file(
    segmenter: Segmenter, path: str | Path, max_pixels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read one image file (any mode) and segment it: (H, W, 3) uint8 RGB, (H, W) uint8 labels.

    The one path from a file to a label map, shared by ``atrous predict`` and ``atrous serve``;
    an unreadable file (or one above ``max_pixels``) is a :class:`DataError` naming it.
    """
    image = read_image(path, max_pixels)
    return image, segmenter(image)


def segment_file_maps(
    segmenter: Segmenter,
    path: str | Path,
    maps: Sequence[MapName],
    max_pixels: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """:func:`segment_file` with per-pixel ``maps`` (``confidence``, ``entropy``: float16,
    from the probabilities the labels come from) beside the label map."""
    image = read_image(path, max_pixels)
    return image, *segmenter.decide_image(image, maps)


def write_prediction(
    segmenter: Segmenter,
    image: np.ndarray,
    labels: np.ndarray,
    stem: str,
    output_dir: Path,
    overlays: bool = True,
    figures: bool = False,
    maps: dict[str, np.ndarray] | None = None,
) -> list[Path]:
    """Write one image's outputs under ``output_dir``; return the files written.

    ``masks/<stem>.png``: a palette PNG of class indices, or for binary models a greyscale PNG
    of 0 (background) and 255 (foreground), or for multilabel models one 0/255 PNG per class in
    ``masks/<stem>/<class>.png``. ``overlays/<stem>.png``: the colours blended over the image;
    with ``figures``, ``figures/<stem>.png``: image | overlay | labels (not for multilabel).
    Each of ``maps`` (name → float16 array of the labels' shape) goes to ``<name>/<stem>.npy``.
    """
    palette = segmenter.palette
    written = []
    if segmenter.multilabel:
        folder = output_dir / "masks" / stem
        folder.mkdir(parents=True, exist_ok=True)
        for name, mask in zip(segmenter.class_names, labels, strict=True):
            written.append(folder / f"{_file_name(name)}.png")
            Image.fromarray(mask * np.uint8(255)).save(written[-1])
        coloured = overlay_multilabel(image, labels, palette)
    else:
        written.append(output_dir / "masks" / f"{stem}.png")
        if segmenter.task == "binary":
            Image.fromarray((labels > 0).astype(np.uint8) * np.uint8(255)).save(written[-1])
        else:
            palette_image(labels, palette).save(written[-1])
        coloured = overlay(image, labels, palette)
    if overlays:
        written.append(output_dir / "overlays" / f"{stem}.png")
        Image.fromarray(coloured).save(written[-1])
    if figures and not segmenter.multilabel:
        written.append(output_dir / "figures" / f"{stem}.png")
        Image.fromarray(side_by_side(image, labels, palette)).save(written[-1])
    for name, values in (maps or {}).items():  # confidence/<stem>.npy, entropy/<stem>.npy
        written.append(output_dir / name / f"{stem}.npy")
        np.save(written[-1], values)
    return written


def _file_name(class_name: str) -> str:
    """A class name as a file name (path separators and spaces replaced)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in class_name) or "class"


def predict_files(
    segmenter: Segmenter,
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    overlays: bool = True,
    figures: bool = False,
    progress: bool = True,
    pipeline: PipelineConfig = PipelineConfig(),  # noqa: B008
    maps: Sequence[MapName] = (),
) -> PredictReport:
    """Segment every input image and write its outputs under ``output_dir`` (see
    :func:`write_prediction`: masks at the input's size, overlays, optional figures).

    Loader workers decode and normalise, images of one size run in batches, and results are
    written by background threads (:mod:`atrous.inference.pipeline`); the outputs equal those of one
    image at a time. A file that cannot be read is reported in the result and the others are
    still processed. ``maps`` (``confidence``, ``entropy``) are written as float16 ``.npy``
    arrays in ``confidence/`` and ``entropy/``, computed region by region like the labels.
    """
    if len(segmenter.mean) != 3:
        raise ValueError(
            f"this model reads {len(segmenter.mean)} image bands, not RGB pictures: give it "
            "GeoTIFFs of that many bands (atrous predict, atrous.inference.raster.predict_rasters)"
        )
    files = expand_inputs(inputs)
    output_dir = Path(output_dir)
    wanted = ["masks", *(["overlays"] if overlays else []), *(["figures"] if figures else [])]
    for name in [*wanted, *maps]:
        (output_dir / name).mkdir(parents=True, exist_ok=True)
    report = PredictReport([], [])
    dataset = ImageFiles(files, segmenter.mean, segmenter.std)
    bar = tqdm(total=len(files), desc="predict", disable=not progress, unit="image")

    def readable(items: Iterable[Decoded]) -> Iterator[Decoded]:
        for item in items:
            if item.error is None:
                yield item
            else:
                report.failed.append((files[item.index], item.error))
                bar.update(1)

    items = readable(decoded_items(dataset, pipeline.workers))
    pending = pipeline.max_pending
    with bar, BackgroundWriter(pipeline.writers, pending) as writer:
        for batch in batches_by_size(items, pipeline.batch_size, attrgetter("size"), pending):
            tensors = [item.tensor[None] for item in batch]  # one image: no copy (25 MP: 300 MB)
            labels, arrays = segmenter.decide(
                tensors[0] if len(batch) == 1 else torch.cat(tensors), maps
            )
            for index, (item, label) in enumerate(zip(batch, labels, strict=True)):
                stem, chosen = files[item.index].stem, {k: v[index] for k, v in arrays.items()}
                writer.submit(
                    write_prediction, segmenter, item.image, label, stem, output_dir, overlays,
                    figures, chosen,
                )  # fmt: skip
            bar.update(len(batch))
    report.written = [path for paths in writer.results for path in paths]
    report.segmented = len(writer.results)
    return report


def calibration_images(inputs: Sequence[str | Path], count: int = CALIBRATION_IMAGES) -> list:
    """The first ``count`` readable images among ``inputs`` (files, folders, globs)."""
    images = []
    for path in expand_inputs(inputs):
        if len(images) == count:
            break
        try:
            images.append(read_image(path))
        except DataError:
            continue
    return images


def fast_segmenter(
    segmenter: Segmenter,
    precision: Precision = "fp32",
    calibration: Sequence[np.ndarray | torch.Tensor] = (),
    backend: Backend = "auto",
    workdir: str | Path | None = None,
) -> Segmenter:
    """``segmenter`` running on :func:`optimize_for_inference`'s network (``--fast``, the page,
    the benchmark).

    The inference strategy's output stride is applied to the model while the fast network is
    built (a fast network's is fixed), then restored; the first calibration image, when there is
    one, is the agreement check's example, padded as ``segment()`` will pad inputs. ``workdir``
    keeps the ONNX files (see :func:`optimize_for_inference`).
    """
    model = segmenter.network
    if not isinstance(model, DeepLab):
        raise ValueError(
            "--fast needs a saved model folder or a training checkpoint, not an exported file"
        )
    inference = segmenter.inference
    with output_stride(model, inference.output_stride):  # the caller's model is left as it was
        example = None
        if calibration:  # as segment() will run it: padded to the aligned size
            example = normalise_images(calibration[:1], segmenter.mean, segmenter.std)[0]
            if needs_regions(example, inference):  # check on one region, as it will run
                side = region_side(model, inference)
                example = example[..., :side, :side]
            example = align_input(model, example) if inference.align else example
        network = optimize_for_inference(
            model,
            example,
            precision=precision,
            backend=backend,
            calibration=calibration,
            workdir=workdir,
        )
    inference = dataclasses.replace(inference, output_stride=None)
    return dataclasses.replace(segmenter, network=network, inference=inference, precision="fp32")
