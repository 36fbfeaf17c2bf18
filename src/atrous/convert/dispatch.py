"""``atrous convert`` as one library call: a source of any supported kind → a saved atrous model
folder, with each option checked against the kinds it applies to."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from atrous.convert.hf import convert_transformers
from atrous.convert.mmseg import convert_mmseg
from atrous.convert.tf import convert_tf
from atrous.convert.torch_models import convert
from atrous.errors import InputError, UsageError

Kind = Literal["torchvision", "smp", "transformers", "mmseg", "checkpoint", "tf"]

#: Endings of weights files: a source ending so is a file, never a Hub repo id or weights name.
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".gz", ".tar")
#: A Hugging Face Hub repo id ("owner/name").
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class Conversion:
    """The folder written, and for a TF source the report of what was read."""

    path: Path
    report: str | None = None


def convert_source(
    source: str,
    kind: Kind,
    output: str | Path,
    class_names: list[str] | None = None,
    palette: list[list[int]] | None = None,
    output_stride: int | None = None,
    aspp_rates: list[int] | None = None,
    crop_size: tuple[int, int] | None = None,
    dataset: Literal["voc", "cityscapes", "ade20k"] | None = None,
    aux_head: bool = False,
) -> Conversion:
    """Convert ``source`` (of library ``kind``) into an atrous model folder at ``output``; the
    options are ``atrous convert``'s (its help says which kind each applies to)."""
    if aux_head and kind != "torchvision":
        raise UsageError("--aux_head applies to --kind torchvision only")
    if kind == "tf" and (class_names is not None or palette is not None):
        raise UsageError("a tf source takes its class names from --dataset, not --class_names")
    if kind != "tf" and (crop_size is not None or dataset is not None):
        raise UsageError("--crop_size and --dataset apply to --kind tf only")
    check_source(source, kind)
    if kind == "tf":
        path, report = convert_tf(source, output, crop_size, dataset)
        return Conversion(path, report.describe())
    if kind == "transformers":
        return Conversion(convert_transformers(source, output, palette))
    if kind == "mmseg":
        return Conversion(convert_mmseg(source, output, output_stride, aspp_rates))
    options = (class_names, palette, output_stride, aspp_rates, aux_head)
    return Conversion(convert(source, kind, output, *options))


def check_source(source: str, kind: Kind) -> None:
    """A source that names a file must exist: "file not found" rather than a Hub or weights-name
    error about what was meant as a path."""
    path = Path(source).expanduser()
    if path.exists() or (kind == "tf" and path.with_name(f"{path.name}.index").is_file()):
        return  # (a TF checkpoint prefix names files beside it)
    as_file = source.lower().endswith(FILE_SUFFIXES) or source.startswith(("/", ".", "~"))
    hub_id = kind in ("smp", "transformers") and REPO_ID.fullmatch(source) is not None
    if kind in ("checkpoint", "mmseg", "tf") or as_file or (kind != "torchvision" and not hub_id):
        raise InputError(f"--source {source}: file not found")
