"""One error contract for the library and the ``atrous`` command (docs/errors.md).

Bad input (a file, an option, a config, the environment) raises an :class:`AtrousError` whose
message names the file or option and says what to do; the command prints that one line on
stderr and exits with the error's ``exit_code``: 2 for usage errors (an option the command
refuses), 1 for the rest. Anything else is a bug. This module imports nothing from atrous, so
every wing can raise these errors.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Where bugs are reported (the one-line message for an internal error says so).
REPORT_TO = "the atrous issue tracker"

#: Extras of ``pip install 'atrous[extra]'`` by the module they provide.
EXTRAS = {
    "ai_edge_litert": "tflite",
    "av": "video",
    "coremltools": "coreml",
    "gradio": "serve",
    "litert_torch": "tflite",
    "mlflow": "mlflow",
    "nncf": "openvino",
    "openvino": "openvino",
    "pycocotools": "labels",
    "rasterio": "geo",
    "timm": "timm",
}


class AtrousError(Exception):
    """Bad input: the message names the file or option and the remedy."""

    exit_code = 1


class UsageError(AtrousError, ValueError):
    """An option value the command refuses (out of range, of the wrong kind, not available)."""

    exit_code = 2


class InputError(AtrousError, ValueError):
    """A file or config that cannot be used as given (the message names it)."""


def missing_dependency(module: str, needed_for: str) -> AtrousError:
    """The error for an optional package that is not installed: which extra installs it."""
    top = module.split(".")[0]
    extra = EXTRAS.get(top)
    remedy = f"pip install 'atrous[{extra}]'" if extra else f"pip install {top}"
    return AtrousError(f"{needed_for} needs the package {top!r}, which is not installed: {remedy}")


def require_at_least(section: str, minimum: float, **values: float) -> None:
    """Refuse a config field below ``minimum``, naming it as its option (``data.crop_size``)."""
    for name, value in values.items():
        if value < minimum:
            raise UsageError(f"{section}.{name} must be at least {minimum}, got {value}")


def require_writable(path: str | Path, option: str) -> Path:
    """The file an option names, checked before a long run: not a folder, in a folder that
    exists and can be written."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; name the file to write")
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path}: the folder {folder} is not writable")
    return path
