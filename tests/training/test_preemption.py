"""Preemption: a stop signal ends training after the current step with ``last.pt`` at that
iteration, and the same command resumes to the weights of an uninterrupted run."""

import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_config, wait_for_steps

import atrous.training.loop
from atrous.models.checkpoint import load_checkpoint
from atrous.runtime.preemption import PREEMPTED_EXIT_CODE
from atrous.training.loop import TrainingPreempted, train


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first["iteration"] == second["iteration"]
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key
    assert first["best_miou"] == second["best_miou"]


def _previous_handler(signum, frame):
    """A handler of the caller's that training must put back (not SIG_DFL, not its own)."""
    raise AssertionError(f"the caller's handler ran for signal {signum}")


@pytest.fixture
def own_handlers():
    """SIGTERM and SIGUSR1 handled by the caller while a test trains; the originals after."""
    numbers = (signal.SIGTERM, signal.SIGUSR1)
    originals = {number: signal.signal(number, _previous_handler) for number in numbers}
    yield numbers
    for number, handler in originals.items():
        signal.signal(number, handler)


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGUSR1])
def test_a_signal_stops_after_the_step_with_last_pt_at_that_iteration(
    tmp_path, number, own_handlers
):
    config = tiny_config(tmp_path, iterations=200, val_every=1000, checkpoint_every=0)
    sender = threading.Thread(
        target=lambda: (wait_for_steps(tmp_path, 2), os.kill(os.getpid(), number)), daemon=True
    )
    sender.start()
    with pytest.raises(TrainingPreempted) as stop:
        train(config)
    assert stop.value.reason == signal.Signals(number).name
    assert 2 <= stop.value.iteration < 200
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == stop.value.iteration
    assert f"at iteration {stop.value.iteration}" in str(stop.value)
    assert "run the same command again" in str(stop.value)
    assert not (tmp_path / "best.pt").exists()  # validation was far away
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert all(signal.getsignal(n) is _previous_handler for n in own_handlers)


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_then_the_same_command_resumes_exactly(tmp_path):
    """What a scheduler does: SIGTERM to every process of the job, data-loading workers too."""
    config = tiny_config(tmp_path / "run", iterations=40, val_every=1000, checkpoint_every=0)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, workers=1))
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict()))
    command = [sys.executable, "-m", "atrous", "train", "--config", str(config_path)]
    job = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    wait_for_steps(tmp_path / "run", 3)
    os.killpg(job.pid, signal.SIGTERM)
    output, _ = job.communicate(timeout=120)
    assert job.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    stopped = load_checkpoint(tmp_path / "run" / "last.pt")["iteration"]
    assert 3 <= stopped < 40
    assert f"preempted by SIGTERM at iteration {stopped}" in output
    assert "exit status 75" in output

    again = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {tmp_path / 'run' / 'last.pt'} at iteration {stopped}" in again.stdout
    straight = dataclasses.replace(
        config, run=dataclasses.replace(config.run, output_dir=str(tmp_path / "straight"))
    )
    train(straight)
    assert_same_weights(tmp_path / "straight" / "last.pt", tmp_path / "run" / "last.pt")


@pytest.mark.slow
def test_a_stop_at_a_validation_step_validates_first_on_resume(tmp_path, monkeypatch):
    """The stop flag comes up after step 6, where validation is due: the step's checkpoint says
    so, the resumed run validates at 6 before step 7, and it ends as an uninterrupted run."""
    train(tiny_config(tmp_path / "straight"))
    calls = itertools.count(1)
    monkeypatch.setattr(
        atrous.training.loop,
        "agree_to_stop",
        lambda requested, device: next(calls) == 6 or requested,
    )
    with pytest.raises(TrainingPreempted) as stop:
        train(tiny_config(tmp_path / "run"))
    assert stop.value.iteration == 6
    assert load_checkpoint(tmp_path / "run" / "last.pt")["validation_due"] is True
    assert not (tmp_path / "run" / "best.pt").exists()
    monkeypatch.undo()
    train(tiny_config(tmp_path / "run"))
    assert_same_weights(tmp_path / "straight" / "last.pt", tmp_path / "run" / "last.pt")
    assert_same_weights(tmp_path / "straight" / "best.pt", tmp_path / "run" / "best.pt")


@pytest.mark.slow
def test_checkpoints_every_n_iterations_and_every_few_minutes(tmp_path, monkeypatch):
    written = []
    original = atrous.training.loop.save_checkpoint

    def spy(state, path):
        written.append((Path(path).name, state["iteration"]))
        original(state, path)

    monkeypatch.setattr(atrous.training.loop, "save_checkpoint", spy)
    train(tiny_config(tmp_path / "a", val_every=6, checkpoint_every=4))
    last = [iteration for name, iteration in written if name == "last.pt"]
    assert last == [4, 6, 8, 12]  # every 4, at each validation, at the end
    written.clear()
    train(tiny_config(tmp_path / "b", iterations=3, val_every=0, checkpoint_minutes=1e-9))
    assert [i for name, i in written if name == "last.pt"] == [1, 2, 3]
