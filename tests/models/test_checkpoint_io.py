"""Checkpoint files: a failed write keeps the previous file and leaves no temporary one; partial
files of a killed write are swept; corrupt and unsafe files are told apart."""

from pathlib import Path

import pytest
import torch

from atrous.errors import AtrousError
from atrous.models.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    load_checkpoint,
    save_checkpoint,
    sweep_partial_checkpoints,
)


def full_disk(*args, **kwargs):
    """What torch.save raises when the disk fills mid-write."""
    raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 5632 vs 5568")


def test_a_full_disk_keeps_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"iteration": 1, "w": torch.arange(4.0)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError) as failed:
        save_checkpoint({"iteration": 2, "w": torch.zeros(4)}, path)
    message = str(failed.value)
    assert str(path) in message and "disk full" in message and "previous last.pt is kept" in message
    assert isinstance(failed.value, AtrousError) and isinstance(failed.value, OSError)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_an_os_error_on_a_first_write_says_nothing_was_written(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(CheckpointWriteError, match="No space left on device; nothing was written"):
        save_checkpoint({"iteration": 2}, tmp_path / "best.pt")
    assert list(tmp_path.iterdir()) == []


def test_partial_files_of_a_killed_write_are_swept_and_nothing_else(tmp_path):
    orphans = [tmp_path / ".last.pt.k2j4x_9a", tmp_path / ".last.pt.00000000"]
    keep = [tmp_path / "last.pt", tmp_path / ".best.pt.abcdefgh", tmp_path / "notes.last.pt.txt"]
    for path in orphans + keep:
        path.write_bytes(b"partial")
    assert sweep_partial_checkpoints(tmp_path / "last.pt") == sorted(orphans)
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert sweep_partial_checkpoints(tmp_path / "missing" / "last.pt") == []


@pytest.mark.parametrize("cut", [0, 10, 0.5])
def test_a_truncated_checkpoint_is_called_corrupt_not_unsafe(tmp_path, cut):
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as failed:
        load_checkpoint(path)
    assert str(path) in str(failed.value)
    assert "weights_only" not in str(failed.value)  # no advice to load it unsafely


class Payload:
    def __reduce__(self):
        return (print, ("code from the file ran",))


def test_a_checkpoint_with_code_is_refused_as_unsafe(tmp_path, capsys):
    path = tmp_path / "hostile.pt"
    torch.save({"w": Payload()}, path)
    with pytest.raises(CheckpointError, match="would run code from the file") as failed:
        load_checkpoint(path)
    assert "corrupt" not in str(failed.value)
    assert "code from the file ran" not in capsys.readouterr().out
    assert isinstance(failed.value, ValueError)


def test_a_missing_checkpoint_stays_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(Path(tmp_path / "none.pt"))
