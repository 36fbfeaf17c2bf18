"""What every label importer shares: regions painted into one index mask by the overlap rule,
class ids from the categories' order, images copied beside their masks, and the list of what
could not be imported.

The rules (README "Importing labels"):

- class 0 is the background (pixels no region covers); the categories follow in the order the
  export lists them; a category named ``background``/``_background_`` is class 0, one named
  ``__ignore__`` paints the ignore label (255);
- regions are painted in order, bottom first: a later region wins where two overlap (each
  format says what "later" means: file order, CVAT's ``z_order``);
- an image whose every region was skipped, or that has none, is skipped too (``keep_empty``
  writes it as all background), and listed.
"""

from __future__ import annotations

import io
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageOps, UnidentifiedImageError

from atrous.data.base import IGNORE_INDEX
from atrous.data.folder import IMAGE_SUFFIXES, read_classes_file
from atrous.data.palettes import voc_palette
from atrous.data.visualize import palette_image
from atrous.errors import InputError, UsageError, missing_dependency

BACKGROUND_NAMES = frozenset({"background", "_background_", "__background__"})
IGNORE_NAMES = frozenset({"__ignore__"})
#: EXIF orientations that swap width and height (90° and 270° turns).
TURNED = frozenset({5, 6, 7, 8})


@dataclass
class Region:
    """One annotation as pixels: its label name, an (H, W) bool mask, and where it came from."""

    label: str
    mask: np.ndarray
    what: str  # "annotation 12", "shape 3 (polygon)": named in the report
    ignore: bool = False  # paint the ignore label whatever the class (COCO crowd regions)


@dataclass
class Sample:
    """One annotated image: the file (or LabelMe's embedded bytes), its annotated size and
    its regions, bottom first."""

    stem: str
    image: Path | bytes
    size: tuple[int, int]  # (height, width) the annotations were drawn on
    regions: list[Region]
    source: str  # the image's name in the export, for the report


@dataclass
class ImportReport:
    """What an import wrote and what it skipped (one line each: what, why)."""

    output: Path
    split: str
    classes: tuple[str, ...] = ()
    written: int = 0
    regions: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    report_file: Path | None = None

    def skip(self, what: str, why: str) -> None:
        self.skipped.append((what, why))

    def reasons(self) -> list[tuple[str, int]]:
        """Each reason for skipping with how often it occurred, the most frequent first."""
        return Counter(why for _, why in self.skipped).most_common()

    def write(self) -> Path:
        """``import_<split>.txt`` in the output folder: the counts, then one line per skip."""
        path = self.output / f"import_{self.split or 'all'}.txt"
        lines = [
            f"images written: {self.written}",
            f"regions painted: {self.regions}",
            f"skipped: {len(self.skipped)}",
            *(f"{what}: {why}" for what, why in self.skipped),
        ]
        path.write_text("\n".join(lines) + "\n")
        self.report_file = path
        return path


def class_names(categories: Iterable[str], chosen: Sequence[str] | None = None) -> tuple[str, ...]:
    """background first, then ``chosen`` or else ``categories`` in their order (duplicates,
    background and ignore names left out); at most 255 classes (255 is the ignore label)."""
    names = ["background"]
    for name in chosen if chosen is not None else categories:
        if name.lower() not in BACKGROUND_NAMES and name not in IGNORE_NAMES and name not in names:
            names.append(name)
    if len(names) > IGNORE_INDEX:
        raise InputError(
            f"{len(names)} classes with the background; index masks hold at most {IGNORE_INDEX} "
            "(255 is the ignore label): choose fewer with --classes"
        )
    return tuple(names)


def label_value(label: str, ids: dict[str, int]) -> int | None:
    """The mask value of ``label``: its class id, 0 for background names, 255 for ignore
    names, None for a label that is not a class."""
    if label.lower() in BACKGROUND_NAMES:
        return 0
    if label in IGNORE_NAMES:
        return IGNORE_INDEX
    return ids.get(label)


def paint(sample: Sample, ids: dict[str, int], report: ImportReport) -> np.ndarray | None:
    """The sample's index mask (later regions on top), or None when no region was painted."""
    mask = np.zeros(sample.size, dtype=np.uint8)
    painted = 0
    for region in sample.regions:
        value = IGNORE_INDEX if region.ignore else label_value(region.label, ids)
        if value is None:
            report.skip(f"{sample.source}: {region.what}", f"label {region.label!r} is not a class")
            continue
        if region.mask.shape != sample.size:
            report.skip(f"{sample.source}: {region.what}", "mask size differs from the image's")
            continue
        if not region.mask.any():
            report.skip(f"{sample.source}: {region.what}", "covers no pixel")
            continue
        mask[region.mask] = value
        painted += 1
    report.regions += painted
    return mask if painted else None


def image_geometry(image: Path | bytes) -> tuple[tuple[int, int], int] | None:
    """(height, width) of the stored pixels and the EXIF orientation (1: none); None if the
    file cannot be read."""
    try:
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as opened:
            width, height = opened.size
            orientation = opened.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None
    return (height, width), orientation if orientation in range(1, 9) else 1


def exif_turned(mask: np.ndarray, orientation: int) -> np.ndarray:
    """``mask`` turned as EXIF ``orientation`` turns its image (as atrous reads images)."""
    image = Image.fromarray(mask)
    image.getexif()[0x0112] = orientation
    return np.asarray(ImageOps.exif_transpose(image))


def image_suffix(image: Path | bytes) -> str:
    """The file ending to write the image with: its own, or for bytes the format's."""
    if isinstance(image, Path):
        return image.suffix.lower()
    with Image.open(io.BytesIO(image)) as opened:
        return "." + (opened.format or "png").lower().replace("jpeg", "jpg")


def check_image(sample: Sample, report: ImportReport) -> int | None:
    """The EXIF orientation to turn the sample's mask by (1: none), or None when the image is
    missing, unreadable or of another size (reported). A tool that drew on the stored pixels
    of an EXIF-turned photo (its size is theirs) gets its mask turned as atrous turns the photo."""
    if isinstance(sample.image, Path) and not sample.image.is_file():
        report.skip(sample.source, f"image file not found: {sample.image}")
        return None
    geometry = image_geometry(sample.image)
    if geometry is None or image_suffix(sample.image) not in IMAGE_SUFFIXES:
        report.skip(sample.source, "not an image file atrous reads")
        return None
    stored, orientation = geometry
    read = stored[::-1] if orientation in TURNED else stored
    if sample.size == read:
        return 1
    if sample.size == stored:
        return orientation
    report.skip(
        sample.source,
        f"image is {read[1]}×{read[0]} as read (EXIF rotation applied) but annotated "
        f"{sample.size[1]}×{sample.size[0]}",
    )
    return None


def prepare_output(output: Path, split: str, names: tuple[str, ...]) -> tuple[Path, Path]:
    """The images and masks folders of ``split`` (new or empty), and classes.yaml written, or
    checked against ``names`` when an earlier import wrote it."""
    images, masks = output / "images" / split, output / "masks" / split
    for folder in (images, masks):
        if folder.is_dir() and any(folder.iterdir()):
            raise UsageError(
                f"--output {output}: {folder} already has files; import into a new folder or "
                "another --split"
            )
        folder.mkdir(parents=True, exist_ok=True)
    classes = output / "classes.yaml"
    if classes.is_file():
        existing = read_classes_file(classes)[0]
        if existing != names:
            raise InputError(
                f"{classes} names the classes {list(existing)}, this export {list(names)}; "
                "import into a new folder, or pass --classes in the existing order"
            )
    else:
        palette = [list(colour) for colour in voc_palette(len(names))]
        spec = {"names": list(names), "palette": palette, "ignore_index": IGNORE_INDEX}
        classes.write_text(yaml.safe_dump(spec, sort_keys=False, default_flow_style=None))
    return images, masks


def write_dataset(
    samples: Iterable[Sample],
    names: tuple[str, ...],
    output: Path,
    split: str,
    report: ImportReport,
    keep_empty: bool = False,
) -> ImportReport:
    """Write every sample's image and index mask into atrous's folder layout, and the report."""
    images, masks = prepare_output(output, split, names)
    report.classes = names
    ids = {name: index for index, name in enumerate(names)}
    stems: set[str] = set()
    for sample in samples:
        if sample.stem in stems:
            report.skip(sample.source, f"another image already has the name {sample.stem!r}")
            continue
        orientation = check_image(sample, report)
        if orientation is None:
            continue
        mask = paint(sample, ids, report)
        if mask is None and not keep_empty:
            report.skip(sample.source, "no region to import (empty; --keep_empty writes it)")
            continue
        stems.add(sample.stem)
        target = images / f"{sample.stem}{image_suffix(sample.image)}"
        if isinstance(sample.image, Path):
            shutil.copyfile(sample.image, target)
        else:
            target.write_bytes(sample.image)
        mask = np.zeros(sample.size, np.uint8) if mask is None else mask
        mask = exif_turned(mask, orientation) if orientation != 1 else mask
        palette_image(mask, voc_palette(256)).save(masks / f"{sample.stem}.png")
        report.written += 1
    report.write()
    return report


def polygons_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Polygons ([x0, y0, x1, y1, …] each) as one (H, W) bool mask, rasterised by pycocotools
    as COCO's own masks are (a pixel is inside when its area is, not its outline)."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        raise missing_dependency("pycocotools", "importing COCO and CVAT polygons") from None
    rles = coco_mask.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return coco_mask.decode(coco_mask.merge(rles)).astype(bool)
