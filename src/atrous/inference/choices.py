"""The runtime choices of the fast path, remembered on this machine.

Measuring every installed runtime costs their builds (an export each: seconds on small models,
a minute or more on R-101), so a choice is kept in ``<ATROUS_CACHE>/runtime-choices.json`` under
a key made of everything that decides which runtime is fastest: the model's configuration, the
input size, the precision, the runtimes installed with their versions, PyTorch's version and
thread count, and the CPU (its name and flags). The weights are not part of it: a fine-tuned
model runs as fast as the one it came from. A change to any of these measures again; so does an
unreadable file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
from functools import cache
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atrous.runtime.cache import cache_root
from atrous.runtime.precision import cpu_flags

FILE_NAME = "runtime-choices.json"


def choices_file() -> Path:
    """The file that holds the choices (``ATROUS_CACHE`` moves it with the rest of the cache)."""
    return cache_root() / FILE_NAME


@cache
def module_version(module: str) -> str:
    """The installed version of the distribution that provides ``module`` ("?" if unknown)."""
    for distribution in packages_distributions().get(module.split(".")[0], []):
        try:
            return f"{distribution} {version(distribution)}"
        except PackageNotFoundError:
            continue
    return "?"


def _cpu() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} [{' '.join(sorted(cpu_flags()))}]"


def _model_description(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        return json.loads(json.dumps(dataclasses.asdict(config), default=str))
    shapes = [list(p.shape) for p in model.parameters()]
    return {"class": type(model).__qualname__, "parameters": shapes}


def choice_key(
    model: nn.Module, size: tuple[int, int], precision: str, runtimes: dict[str, str]
) -> str:
    """What decides the choice, hashed: ``runtimes`` maps each candidate to its module."""
    record = {
        "model": _model_description(model),
        "size": list(size),
        "precision": precision,
        "runtimes": {name: module_version(module) for name, module in sorted(runtimes.items())},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu(),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def _read(path: Path) -> dict[str, Any]:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return stored if isinstance(stored, dict) else {}


def recall(key: str) -> dict[str, Any] | None:
    """The choice stored under ``key``, or None (none stored, or the file unreadable)."""
    entry = _read(choices_file()).get(key)
    return entry if isinstance(entry, dict) and isinstance(entry.get("name"), str) else None


def remember(key: str, entry: dict[str, Any]) -> None:
    """Store ``entry`` under ``key``, replacing the file atomically; a cache that cannot be
    written (read-only home, full disk) only means measuring again next time."""
    path = choices_file()
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = {**_read(path), key: entry}
        handle, temporary = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=path.parent)
        with os.fdopen(handle, "w") as file:
            json.dump(stored, file, indent=1)
        os.replace(temporary, path)
    except OSError:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
