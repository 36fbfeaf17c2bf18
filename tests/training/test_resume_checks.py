"""Resuming refuses what it cannot continue: another model configuration, a corrupt ``last.pt``;
a partial checkpoint of a killed write is swept at the next start of the run."""

import dataclasses
import shutil

import pytest
from helpers import tiny_config

from atrous.models.checkpoint import CheckpointError, load_checkpoint
from atrous.training.loop import train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-iteration run started beside a partial ``last.pt`` of a killed write; returns the
    run's config and the partial file's path."""
    output_dir = tmp_path_factory.mktemp("run")
    orphan = output_dir / ".last.pt.x7q2_k0p"
    orphan.write_bytes(b"half a checkpoint")
    config = tiny_config(output_dir, iterations=2, val_every=1000)
    train(config)
    return config, orphan


def longer(config, output_dir, **model_changes):
    """The same run asked for 4 iterations (so it resumes), in ``output_dir``."""
    run = dataclasses.replace(config.run, iterations=4, output_dir=str(output_dir))
    return dataclasses.replace(config, model=config.model.replace(**model_changes), run=run)


def test_a_partial_checkpoint_is_swept_at_the_next_start(finished_run):
    _, orphan = finished_run
    assert not orphan.exists()
    assert load_checkpoint(orphan.with_name("last.pt"))["iteration"] == 2


def test_resuming_with_another_model_configuration_is_refused_naming_fields(finished_run, tmp_path):
    config, _ = finished_run
    shutil.copytree(config.run.output_dir, tmp_path / "run")
    before = (tmp_path / "run" / "last.pt").read_bytes()
    changed = longer(config, tmp_path / "run", output_stride=8, aspp_dropout=0.0)
    with pytest.raises(CheckpointError) as refused:
        train(changed)
    message = str(refused.value)
    assert str(tmp_path / "run" / "last.pt") in message
    assert "model.output_stride: checkpoint 16, now 8" in message
    assert "model.aspp_dropout: checkpoint 0.1, now 0.0" in message
    assert "model.backbone" not in message  # only what differs
    assert "--run.resume false" in message and "--run.output_dir" in message
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_resuming_from_a_corrupt_last_pt_says_so_and_how_to_start_afresh(finished_run, tmp_path):
    config, _ = finished_run
    shutil.copytree(config.run.output_dir, tmp_path / "run")
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    (tmp_path / "run" / "best.pt").write_bytes(b"")  # a previous checkpoint to point to
    with pytest.raises(CheckpointError) as refused:
        train(longer(config, tmp_path / "run"))
    message = str(refused.value)
    assert f"checkpoint {last} is corrupt or truncated" in message
    assert "--run.resume false" in message
    assert f"copy {tmp_path / 'run' / 'best.pt'} over it" in message
    assert "tensors" not in message  # not a security refusal
