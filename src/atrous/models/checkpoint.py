"""Checkpoints and weights, read without executing pickle.

Training checkpoints are written atomically; weights load with a report of every tensor that does
not fit (:func:`load_weights`).
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atrous.errors import AtrousError


class CheckpointError(AtrousError, ValueError):
    """A checkpoint that cannot be used: corrupt, unsafe, or of another model."""


class CheckpointWriteError(AtrousError, OSError):
    """A checkpoint could not be written (a full disk, no permission); the previous file is kept."""


def _partial_prefix(path: Path) -> str:
    """Name prefix of the temporary files :func:`save_checkpoint` writes beside ``path``."""
    return f".{path.name}."


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the previous file intact, and a
    failed write (a full disk) removes its temporary file and raises CheckpointWriteError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_partial_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        Path(tmp).unlink(missing_ok=True)
        kept = f"the previous {path.name} is kept" if path.is_file() else "nothing was written"
        raise CheckpointWriteError(
            f"cannot write checkpoint {path}: {error}; {kept}. Is the disk full? Free space in "
            f"{path.parent} (or choose another --run.output_dir) and run the same command again"
        ) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sweep_partial_checkpoints(path: str | Path) -> list[Path]:
    """Remove the temporary files a killed :func:`save_checkpoint` of ``path`` left beside it
    (``.last.pt.XXXXXXXX``); return them. Call before a run writes ``path`` again."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    orphans = sorted(path.parent.glob(f"{_partial_prefix(path)}*"))
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    return orphans


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: tensors and plain data only, never code.

    A file that holds more than tensors and plain data is refused as unsafe; one that cannot be
    read at all (truncated, overwritten) is reported as corrupt: both are CheckpointError.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise _corrupt(path, error) from None
        raise CheckpointError(
            f"cannot load checkpoint {path}: it holds objects besides tensors and plain data, "
            "and loading them would run code from the file; this is refused (tensors-only)"
        ) from None
    except Exception as error:
        raise _corrupt(path, error) from None


def _corrupt(path: str | Path, error: BaseException) -> CheckpointError:
    """The file is not a readable PyTorch checkpoint; the reason is torch's first sentence,
    without its advice to load unsafely."""
    reason = str(error).split(". ")[0].strip() or type(error).__name__
    if "weights_only" in reason:
        reason = "not a PyTorch zip checkpoint"
    return CheckpointError(f"checkpoint {path} is corrupt or truncated ({reason})")


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; anything else is a ValueError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise ValueError(f"{path} is not a valid safetensors file ({error})") from None


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat state dict from ``.safetensors``, or from ``.pt``/``.pth``/``.bin`` read tensors-only.

    Pickle-based files are read with ``weights_only=True`` (never code); a checkpoint that nests
    the weights under ``"model"`` or ``"state_dict"`` (atrous training runs, timm) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    state = load_checkpoint(path)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict (a flat mapping of names to tensors)")
    return state


Shape = tuple[int, ...]


@dataclass(frozen=True)
class LoadReport:
    """How a state dict met a model: what loaded and what did not fit."""

    loaded: tuple[str, ...]
    missing: tuple[tuple[str, Shape], ...]  # in the model, absent from the weights (model shape)
    unexpected: tuple[tuple[str, Shape], ...]  # in the weights, absent from the model
    mismatched: tuple[tuple[str, Shape, Shape], ...]  # (name, weights shape, model shape)

    @property
    def complete(self) -> bool:
        """Every model tensor loaded and every weight was used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 5) -> str:
        """One line per kind of problem, listing the first ``limit`` tensors with their shapes."""

        def listing(items: list[str]) -> str:
            more = f", … and {len(items) - limit} more" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        lines = []
        if self.mismatched:
            items = [f"{k} (weights {tuple(a)}, model {tuple(b)})" for k, a, b in self.mismatched]
            lines.append(f"{len(items)} differ in shape: {listing(items)}")
        if self.missing:
            items = [f"{k} {tuple(s)}" for k, s in self.missing]
            lines.append(f"{len(items)} missing from the weights: {listing(items)}")
        if self.unexpected:
            items = [f"{k} {tuple(s)}" for k, s in self.unexpected]
            lines.append(f"{len(items)} not in the model: {listing(items)}")
        return "\n".join(lines) if lines else f"all {len(self.loaded)} tensors loaded"


def _natural_order(key: str) -> list[str | int]:
    """Sort key putting ``layer.10`` after ``layer.9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def load_weights(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "weights",
) -> LoadReport:
    """Load ``state`` into ``module``, naming every tensor that does not fit.

    ``strict=True``: any missing, unexpected or differently shaped tensor is a ValueError listing
    the first of each with both shapes; nothing is loaded. ``strict=False``: every tensor whose
    name and shape match loads, the rest of the module keeps its own values (a freshly built
    classifier for another number of classes stays freshly initialised), and the report says what
    was skipped.
    BN ``num_batches_tracked`` counters are optional (older torchvision files lack them).
    """
    own = module.state_dict()
    counter = "num_batches_tracked"  # BN counters: no effect on outputs, absent from some files
    report = LoadReport(
        loaded=tuple(k for k, v in state.items() if k in own and v.shape == own[k].shape),
        missing=tuple(
            (k, tuple(v.shape)) for k, v in own.items() if k not in state and counter not in k
        ),
        unexpected=tuple(
            (k, tuple(state[k].shape))
            for k in sorted(state, key=_natural_order)
            if k not in own and counter not in k
        ),
        mismatched=tuple(
            (k, tuple(state[k].shape), tuple(v.shape))
            for k, v in own.items()
            if k in state and state[k].shape != v.shape
        ),
    )
    if strict and not report.complete:
        raise ValueError(
            f"{source} do not fit the {type(module).__name__}:\n{report.describe()}\n"
            "To start from the tensors that fit (e.g. a new classifier for another number of "
            "classes): atrous train --run.init_from <model>, or in Python strict=False."
        )
    module.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report
