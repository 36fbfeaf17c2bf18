"""The label doctor: read a folder dataset's mask files as stored, name the convention they
follow, and give the one option that reads them right (``atrous check-data`` prints it).

Recognised for multiclass folder datasets:

- 0/255 masks (greys between: anti-aliased or JPEG edges) → ``--data.task binary``;
- palette PNGs: their indices are the labels; without a palette in classes.yaml, the PNGs'
  colours as a ``palette:`` line;
- RGB colour masks without a palette → ``palette: [...]`` listing the colours found;
- 0 in every mask and values 1…N for N class names (ADE20K's "reduce zero label") →
  ``--data.reduce_zero_label true``;
- labels beyond the class names → more names, or ``--fix OUT`` (they become the ignore label).

and, for binary ones, 0/1/255 masks whose 255 likely marks unlabelled pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from atrous.data.base import SegmentationDataset
from atrous.data.checks import DataReport, LabelProblem, suggestion
from atrous.data.folder import FolderDataset
from atrous.data.io import DataError, Palette, grey_if_equal

#: More distinct colours than this in RGB masks: not a palette (JPEG-compressed masks).
MAX_COLOURS = 256


@dataclass
class RawLabels:
    """What the mask files hold before any mapping, over the masks read."""

    rgb_as_values: bool = True  # grey RGB masks hold values (False: colours of the palette)
    masks: int = 0
    grey_masks: int = 0  # one channel (or RGB with equal channels): values
    with_zero: int = 0  # grey masks holding the value 0
    grey: dict[int, int] = field(default_factory=dict)  # value → pixels
    palette_masks: int = 0  # palette ('P') PNGs
    png_palette: Palette | None = None  # the first palette PNG's colours
    colour_masks: int = 0  # RGB masks (not counted as values)
    colours: dict[tuple[int, int, int], int] = field(default_factory=dict)  # colour → pixels
    too_many_colours: bool = False  # more than MAX_COLOURS: counting stopped

    def add(self, raw: np.ndarray, png_palette: Palette | None) -> None:
        """Count one mask file's values or colours."""
        self.masks += 1
        if png_palette is not None:
            self.palette_masks += 1
            self.png_palette = self.png_palette or png_palette
        values = grey_if_equal(raw) if self.rgb_as_values else raw
        if values.ndim == 3:
            self.colour_masks += 1
            if not self.too_many_colours:
                self._add_colours(values)
            return
        self.grey_masks += 1
        found, counts = np.unique(values, return_counts=True)
        self.with_zero += int(found[0] == 0) if found.size else 0
        for value, count in zip(found.tolist(), counts.tolist(), strict=True):
            self.grey[value] = self.grey.get(value, 0) + count

    def _add_colours(self, mask: np.ndarray) -> None:
        codes = (mask[..., 0].astype(np.int64) << 16) | (mask[..., 1].astype(np.int64) << 8)
        found, counts = np.unique(codes | mask[..., 2], return_counts=True)
        for code, count in zip(found.tolist(), counts.tolist(), strict=True):
            colour = (code >> 16, (code >> 8) & 255, code & 255)
            self.colours[colour] = self.colours.get(colour, 0) + count
        self.too_many_colours = len(self.colours) > MAX_COLOURS


@dataclass
class Diagnosis:
    """The label problems of a dataset, and the raw labels they were read from (for --fix)."""

    problems: list[LabelProblem]
    raw: RawLabels | None = None  # None: not a folder dataset with single-class masks


def read_raw_labels(dataset: FolderDataset, progress: bool = True) -> RawLabels:
    """Every mask file of the dataset as stored; unreadable ones are check_dataset's to report."""
    raw = RawLabels(rgb_as_values=not dataset.has_palette)
    for index in tqdm(range(len(dataset)), desc="labels", disable=not progress, leave=False):
        try:
            raw.add(*dataset.raw_mask(index))
        except DataError:
            continue
    return raw


def label_doctor(
    dataset: SegmentationDataset, report: DataReport, progress: bool = True
) -> Diagnosis:
    """``report``'s label problems and, for a folder dataset, the conventions its mask files
    show; where both name one kind with other fixes, the doctor's (it knows classes.yaml).
    Fatal ones first."""
    problems = report.label_problems()
    if not isinstance(dataset, FolderDataset) or dataset.task == "multilabel":
        return Diagnosis(problems)
    raw = read_raw_labels(dataset, progress)
    fixes = {p.kind: p.fix for p in problems}
    found = [p for p in diagnose(dataset, raw) if p.kind not in fixes or fixes[p.kind] != p.fix]
    kinds = {p.kind for p in found}
    problems = found + [p for p in problems if p.kind not in kinds]
    return Diagnosis(sorted(problems, key=lambda p: not p.fatal), raw)


def diagnose(dataset: FolderDataset, raw: RawLabels) -> list[LabelProblem]:
    """The conventions the raw masks follow that ``dataset``'s options do not read right."""
    if dataset.task == "binary":
        return _binary_void(dataset, raw)
    problems = _palette_pngs(dataset, raw) + _colour_masks(dataset, raw)
    return problems + (
        _binary_masks(dataset, raw) or _zero_unlabelled(dataset, raw) or _beyond(dataset, raw)
    )


def _binary_masks(dataset: FolderDataset, raw: RawLabels) -> list[LabelProblem]:
    values, count = set(raw.grey), dataset.num_classes
    valid = set(range(count)) | {dataset.ignore_index}
    if not {0, 255} <= values or dataset.reading.reduce_zero_label:
        return []
    if not (values <= {0, 255} or (count <= 2 and not values <= valid)):
        return []
    greys = values - {0, 255}
    edges = " (and greys between: anti-aliased or JPEG edges, split at 128)" if greys else ""
    text = f"the masks hold 0 and 255{edges}: binary masks whose foreground is 255"
    if count <= 2 and dataset.reading.binary_ignore != 255:
        return [suggestion("binary", f"{text}. Train them as a binary task", "--data.task binary")]
    why = (
        f"classes.yaml names {count} classes"
        if count > 2
        else "classes.yaml's ignore_index 255 would ignore their foreground"
    )
    text += f" ({why}, so --data.task binary alone does not fit). Write a binary copy"
    return [suggestion("binary", text, "--fix OUT")]


def _zero_unlabelled(dataset: FolderDataset, raw: RawLabels) -> list[LabelProblem]:
    count, ignore = dataset.num_classes, dataset.ignore_index
    values = set(raw.grey) - {ignore}
    if dataset.reading.reduce_zero_label or count < 2 or not values:
        return []
    if (
        raw.with_zero < raw.grey_masks
        or max(values) != count
        or not values <= set(range(count + 1))
    ):
        return []
    text = (
        f"every mask holds 0 and the values run up to {count}, one past the {count} class names: "
        "0 marks unlabelled pixels (ADE20K's convention; if 0 is a class instead, name class "
        f"{count} in classes.yaml). Read 0 as ignored and 1…{count} as classes 0…{count - 1}"
    )
    return [suggestion("reduce_zero_label", text, "--data.reduce_zero_label true")]


def _beyond(dataset: FolderDataset, raw: RawLabels) -> list[LabelProblem]:
    count, ignore = dataset.num_classes, dataset.ignore_index
    shift = int(dataset.reading.reduce_zero_label)  # raw values run one higher (0: unlabelled)
    bad = sorted(v for v in raw.grey if v != ignore and not 0 <= v < count + shift)
    if not bad:
        return []
    shown = ", ".join(str(v) for v in bad[:8]) + (" …" if len(bad) > 8 else "")
    pixels = sum(raw.grey[v] for v in bad)
    text = (
        f"label values {shown} ({pixels} pixels) are ≥ the {count} class names and not the "
        f"ignore label {ignore}: if they are classes, name them in classes.yaml (names needs "
        f"{max(bad) + 1 - shift} entries); else write a copy with them as the ignore label"
    )
    return [suggestion("out_of_range", text, "--fix OUT")]


def _palette_pngs(dataset: FolderDataset, raw: RawLabels) -> list[LabelProblem]:
    if not raw.palette_masks:
        return []
    text = (
        f"{raw.palette_masks} of {raw.masks} masks are palette PNGs: their indices are the labels, "
        "their colours are not read"
    )
    if dataset.has_palette or raw.png_palette is None:
        return [LabelProblem(text, fatal=False, kind="palette_png")]
    colours = png_colours(raw.png_palette, dataset.palette)
    text += "; to colour predictions like them, copy their palette into classes.yaml"
    return [suggestion("palette_png", text, f"palette: {colours}", fatal=False)]


def png_colours(png_palette: Palette, fallback: Palette) -> list[list[int]]:
    """A palette PNG's first len(fallback) colours (``fallback``'s where the PNG has fewer)."""
    return [list(png_palette[i] if i < len(png_palette) else c) for i, c in enumerate(fallback)]


def _colour_masks(dataset: FolderDataset, raw: RawLabels) -> list[LabelProblem]:
    if not raw.colour_masks or dataset.has_palette:
        return []
    text = (
        f"{raw.colour_masks} of {raw.masks} masks are RGB colours and classes.yaml has no palette"
    )
    if raw.too_many_colours:
        text += (
            f", with more than {MAX_COLOURS} colours (JPEG-compressed?): a mask needs one exact "
            "colour per class. Save the masks as PNG"
        )
        return [LabelProblem(text, fatal=True, kind="rgb_colours")]
    colours = [list(c) for c in sorted(raw.colours)]
    if len(colours) == dataset.num_classes:
        text += (
            f". Their {len(colours)} colours, in the order of classes.yaml's names (here by "
            "colour value: reorder them to match the names), map them to classes"
        )
        return [suggestion("rgb_colours", text, f"palette: {colours}")]
    text += (
        f"; they hold {len(colours)} colours {colours} for {dataset.num_classes} class names. "
        "Name one class per colour and list the colours as palette: in the names' order, or write "
        "a copy of class indices"
    )
    return [suggestion("rgb_colours", text, "--fix OUT")]


def _binary_void(dataset: FolderDataset, raw: RawLabels) -> list[LabelProblem]:
    values = set(raw.grey)
    if dataset.reading.binary_ignore is not None or not {1, 255} <= values <= {0, 1, 255}:
        return []
    text = (
        "the binary masks hold 0, 1 and 255: in a mask holding 255 the foreground threshold is "
        "128, so its 1s read as background and its 255s as foreground. If 255 marks unlabelled "
        "pixels, say so in classes.yaml"
    )
    return [suggestion("binary_ignore", text, "ignore_index: 255")]
