"""Safe extraction of the archives checkpoints come in (the official model zoo's ``.tar.gz``):
regular files only, every path relative and inside the target, corrupt archives one clear error.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from atrous.errors import InputError


class ArchiveError(InputError):
    """An archive is corrupt, unsafe, or does not hold what it should."""


def _safe_members(archive: tarfile.TarFile, wanted: tuple[str, ...]) -> list[tarfile.TarInfo]:
    """Regular files (and their folders) whose names contain one of ``wanted``, with relative
    paths that stay inside the target: links, devices, absolute paths and ``..`` are refused."""
    members = []
    for member in archive.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise ArchiveError(f"{archive.name}: unsafe path {member.name!r} in the archive")
        if member.isfile() and any(part in member.name for part in wanted):
            members.append(member)
    return members


def extract_archive(archive: Path, folder: Path, wanted: tuple[str, ...] = ("",)) -> Path:
    """Extract the regular files of ``archive`` whose names contain one of ``wanted`` into
    ``folder``. ``filter="data"`` is used where this Python has it (3.10.12+, 3.11.4+); elsewhere
    the member check above is the guard. A corrupt archive is one :class:`ArchiveError`."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = _safe_members(tar, wanted)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(folder, members=members, filter="data")
            else:
                tar.extractall(folder, members=members)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ArchiveError(
            f"{archive} is not a readable .tar.gz ({type(error).__name__}: {error}); delete it "
            "and run again to download it afresh"
        ) from None
    return folder
