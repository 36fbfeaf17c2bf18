"""Safe extraction of checkpoint archives (atrous.convert.archive): links, absolute paths and
``..`` are refused on every supported Python, a cut archive is one error naming it."""

import tarfile

import numpy as np
import pytest
from helpers import tarball

from atrous.convert.archive import ArchiveError, extract_archive

DATA = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("data_filter", [True, False], ids=["filter", "no-filter"])
def test_extraction_is_safe_with_and_without_tarfiles_filter(tmp_path, monkeypatch, data_filter):
    """Pythons before 3.10.12/3.11.4 have no ``filter=``: the member check alone guards."""
    if not data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tarball({"m/model.ckpt.index": b"i", "m/graph.pb": b"g"}, {"m/l": "/"}))
    out = extract_archive(archive, tmp_path / "out", (".index",))
    assert [p.name for p in out.rglob("*")] == ["m", "model.ckpt.index"]  # no graph, no link
    archive.write_bytes(tarball({"../evil.index": b"x"}))
    with pytest.raises(ArchiveError, match=r"unsafe path '\.\./evil\.index'"):
        extract_archive(archive, tmp_path / "out2")
    assert not (tmp_path / "evil.index").exists()


def test_a_corrupt_archive_is_one_error_naming_it(tmp_path):
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(tarball({"model.ckpt.index": DATA})[:3000])
    with pytest.raises(ArchiveError, match=f"{archive} is not a readable .tar.gz"):
        extract_archive(archive, tmp_path / "out")
