"""Downloads that can be trusted, and the cache they land in.

:func:`download_file` fetches over https only (plain http only from this machine, for tests and
local mirrors), checks the byte size and SHA-256 its publisher pins, notices truncation
(Content-Length against bytes received) and resumes with an HTTP Range request when the server
allows it (else starts again), and gives up on a stalled server after ``ATROUS_DOWNLOAD_TIMEOUT``
seconds (default 60). A file that fails its check is kept as ``<name>.part`` for inspection.
:func:`extract_archive` unpacks a tarball into the cache (not the system temp), refusing links,
absolute paths and ``..`` on every supported Python. ``ATROUS_CACHE`` moves the cache (default
``~/.cache/atrous``); converted folders record the converter that wrote them.
"""

from __future__ import annotations

import hashlib
import os
import sys
from http.client import HTTPException
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import BinaryIO
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from atrous.errors import AtrousError
from atrous.runtime.cache import cache_root

#: Bump when a converter's output changes for the same input, so cached folders are rebuilt.
CONVERSION_REVISION = 2
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CHUNK = 1 << 16


class DownloadError(AtrousError, OSError):
    """A published file could not be fetched, or is not the file its publisher published."""


class ChecksumError(DownloadError):
    """The downloaded bytes are not the pinned ones (size or SHA-256)."""


def converter_version() -> str:
    """What a converted folder records: the atrous version and the conversion revision."""
    try:
        package = version("atrous")
    except PackageNotFoundError:
        package = "unknown"
    return f"atrous {package}, conversion {CONVERSION_REVISION}"


def cached_folder(name: str) -> Path:
    """Where the converted folder of the published checkpoint ``name`` lives."""
    return cache_root() / "published" / name.replace(":", "_")


def downloads_folder() -> Path:
    """Where downloaded archives wait for their conversion (kept when it fails)."""
    return cache_root() / "downloads"


def is_cached(name: str) -> bool:
    return (cached_folder(name) / "source.json").is_file()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_url(url: str) -> None:
    """Refuse anything but https (plain http only to this machine)."""
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK):
        return
    raise DownloadError(f"refusing to download {url}: only https URLs are used")


def verify(path: Path, size: int | None, sha256: str | None, name: str | None = None) -> str:
    """``path``'s SHA-256, after checking it against the pinned size and SHA-256 (or the prefix
    in a file's name); errors call the file ``name`` (default: its own)."""
    name = name or path.name
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ChecksumError(f"{name}: expected {size:,} bytes, got {actual_size:,}; kept as {path}")
    digest = sha256_of(path)
    if sha256 is not None and not digest.startswith(sha256.lower()):
        raise ChecksumError(
            f"{name}: expected SHA-256 {sha256}, got {digest}: the file is damaged or not the "
            f"published one; kept as {path} for inspection (the next try downloads it afresh)"
        )
    return digest


def _timeout() -> float:
    return float(os.environ.get("ATROUS_DOWNLOAD_TIMEOUT", "60"))


def _open(url: str, start: int):
    """The server's response for ``url`` from byte ``start`` (a Range request when > 0)."""
    headers = {"User-Agent": "atrous"} | ({"Range": f"bytes={start}-"} if start else {})
    return urlopen(Request(url, headers=headers), timeout=_timeout())


def _resumed_at(response, url: str, start: int) -> int:
    """Where ``response`` to a Range request for byte ``start`` begins: ``start`` (206), or 0
    when the server ignored the Range and sends the whole file (200)."""
    if response.status != 206:
        return 0
    if not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
        raise DownloadError(f"cannot download {url}: asked from byte {start}, sent another range")
    return start


def _read(response) -> bytes:
    """The bytes that have arrived (up to a block); b"" when the body ends or stops early
    (closed, stalled, cut short)."""
    try:
        return response.read1(CHUNK)
    except (TimeoutError, ConnectionError, HTTPException):
        return b""


def _copy(response, out: BinaryIO, progress: bool, total: int | None, done: int) -> None:
    """Copy the body, drawing a progress bar on stderr when asked."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, file=sys.stderr)
    try:
        for block in iter(lambda: _read(response), b""):
            out.write(block)
            if bar is not None:
                bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()


def _attempt(url: str, part: Path, size: int | None, progress: bool) -> int | None:
    """One request into ``part`` (resumed where it stops); the expected total size, if known."""
    start = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, start)
    except HTTPError as error:
        if error.code == 416 and start:  # the partial file is already whole: start afresh
            part.unlink()
            return _attempt(url, part, size, progress)
        raise DownloadError(f"cannot download {url}: HTTP {error.code} {error.reason}") from None
    with response:
        start = _resumed_at(response, url, start) if start else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else size
        if size is not None and total is not None and total != size:
            raise ChecksumError(
                f"{url} offers {total:,} bytes; its publisher pins {size:,}: not the published "
                "file (a changed file or a wrong mirror)"
            )
        try:
            with part.open("ab" if start else "wb") as out:
                _copy(response, out, progress, total, start)  # short: the caller resumes
        except OSError as error:  # a full disk, a read-only cache
            raise DownloadError(
                f"cannot write {part}: {error.strerror or error}; free space there (ATROUS_CACHE "
                "moves atrous's cache; what arrived is kept and resumed next time)"
            ) from None
    return total


def download_file(
    url: str,
    target: Path,
    size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    attempts: int = 4,
) -> Path:
    """``url`` saved as ``target``, verified against ``size`` and ``sha256`` (a full digest or
    the prefix in a file's name). An existing verified ``target`` is reused; a partial
    ``target.part`` is resumed. Raises :class:`DownloadError` naming the file."""
    check_url(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    if target.is_file():
        try:
            verify(target, size, sha256)
            return target
        except ChecksumError:
            target.unlink()  # damaged in the cache: download it again
    if part.exists() and size is not None and part.stat().st_size >= size:
        part.unlink()  # a whole file kept after a failed check: download it afresh
    received, total = 0, None
    for _ in range(attempts):
        try:
            total = _attempt(url, part, size, progress)
        except (URLError, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            raise DownloadError(f"cannot download {url}: {reason}") from None
        received = part.stat().st_size if part.exists() else 0
        if total is None or received >= total:
            break
    else:
        raise DownloadError(
            f"{target.name}: the download from {url} stopped at {received:,} of {total:,} bytes "
            f"{attempts} times; the partial file is kept as {part} and the next try resumes it"
        )
    verify(part, size if size is not None else total, sha256, target.name)
    os.replace(part, target)
    return target
