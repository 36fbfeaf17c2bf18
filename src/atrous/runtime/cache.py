"""Where atrous keeps what it fetches or measures once per machine: ``ATROUS_CACHE``, by default
``~/.cache/atrous`` (published checkpoints, downloads, the runtime choices of ``--fast``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder: ``ATROUS_CACHE`` when set, else ``~/.cache/atrous``."""
    return Path(os.environ.get("ATROUS_CACHE", Path.home() / ".cache" / "atrous"))
