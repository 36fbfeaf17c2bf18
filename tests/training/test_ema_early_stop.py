"""The EMA of the weights and early stopping: the EMA's formula, both surviving a kill and resume
(same final weights, raw and averaged, and the same stop step as an uninterrupted run), and the
optional MLflow logging through a stand-in ``mlflow`` module."""

import itertools
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import randomize_bn, tiny_config

import atrous.training.loop
from atrous.errors import AtrousError, UsageError
from atrous.hub.load import load
from atrous.models.checkpoint import load_checkpoint
from atrous.models.zoo import create_model
from atrous.training.config import RunConfig
from atrous.training.ema import WeightAverage, ema_decay
from atrous.training.loop import TrainingPreempted, train
from atrous.training.tracking import RUN_ID_FILE


def test_the_ema_follows_its_formula_and_copies_buffers():
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_mobilenetv2", num_classes=3, width_multiplier=0.25)
    average = WeightAverage(model, decay=0.6)
    expected = {name: p.detach().clone() for name, p in model.named_parameters()}
    for step in range(4):  # decays min(0.6, 1/10, 2/11, 3/12, 4/13) then 0.6 from step 7 on
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param))
        randomize_bn(model, seed=step)
        average.update(model)
        decay = min(0.6, (1 + step) / (10 + step))
        for name, param in model.named_parameters():
            expected[name] = decay * expected[name] + (1 - decay) * param.detach()
    averaged = dict(average.model.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name], value, rtol=1e-6, atol=1e-7)
    for (name, own), trained in zip(average.model.named_buffers(), model.buffers(), strict=True):
        assert torch.equal(own, trained), name  # BN statistics copied, not averaged
    assert average.updates == 4 and not any(p.requires_grad for p in average.model.parameters())
    assert ema_decay(0.9999, 0) == 0.1 and ema_decay(0.9999, 10**6) == 0.9999


def test_bad_settings_are_refused():
    with pytest.raises(UsageError, match=r"run\.ema_decay must be below 1"):
        RunConfig(ema_decay=1.0)
    with pytest.raises(UsageError, match=r"run\.early_stop_patience"):
        RunConfig(early_stop_patience=2, val_every=0)
    with pytest.raises(UsageError, match=r"run\.early_stop_min_delta must be at least 0"):
        RunConfig(early_stop_min_delta=-0.1)


def extras(path: Path, **changes):
    """A tiny run validating every 2 steps, keeping an EMA, and stopping at its second
    validation: with a 0.5 mIoU margin, the second can never count as an improvement."""
    changes = {"val_every": 2, "ema_decay": 0.8, "early_stop_patience": 1, **changes}
    return tiny_config(path, early_stop_min_delta=0.5, **changes)


def assert_same_state(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a), load_checkpoint(b)
    for key in ("iteration", "best_miou", "plateau", "ema_updates"):
        assert first[key] == second[key], key
    for weights in ("model", "ema"):
        for name, value in first[weights].items():
            assert torch.equal(value, second[weights][name]), (weights, name)


@pytest.mark.slow
def test_ema_and_early_stopping_survive_a_kill_and_resume(tmp_path, monkeypatch, capsys):
    straight = train(extras(tmp_path / "straight"))
    assert straight.stopped_early and straight.iteration == 4  # validations at 2 and 4
    said = capsys.readouterr().out
    assert "stopped early at iteration 4 of 12" in said and "EMA's" in said
    # The stop flag comes up after step 2, where validation is due: the resumed run validates
    # there first, then trains to the same stop.
    calls = itertools.count(1)
    monkeypatch.setattr(
        atrous.training.loop, "agree_to_stop", lambda requested, device: next(calls) == 2
    )
    with pytest.raises(TrainingPreempted):
        train(extras(tmp_path / "run"))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["validation_due"] is True
    monkeypatch.undo()
    resumed = train(extras(tmp_path / "run"))
    assert resumed.stopped_early and resumed.iteration == 4
    assert_same_state(tmp_path / "straight" / "last.pt", tmp_path / "run" / "last.pt")
    assert_same_state(tmp_path / "straight" / "best.pt", tmp_path / "run" / "best.pt")
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["plateau"]["since_best"] == 1 and last["ema_updates"] == 4
    assert any(not torch.equal(v, last["model"][k]) for k, v in last["ema"].items())
    # The best checkpoint and the model folder hold the EMA's weights (chosen on its mIoU).
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    for saved in (load(tmp_path / "run" / "best.pt"), load(tmp_path / "run" / "model")):
        for name, value in saved.state_dict().items():
            assert torch.equal(value, best["ema"][name]), name
    # The same command again does not train on: the run has ended.
    again = train(extras(tmp_path / "run"))
    assert again.stopped_early and again.iteration == 4
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 4


class FakeMlflow(types.ModuleType):
    """Records what training asks of MLflow."""

    def __init__(self) -> None:
        super().__init__("mlflow")
        self.calls = []

    def start_run(self, run_id=None, run_name=None):
        self.calls.append(("start_run", run_id, run_name))
        info = types.SimpleNamespace(run_id=run_id or "run-1")
        return types.SimpleNamespace(info=info)

    def log_params(self, params):
        self.calls.append(("log_params", params))

    def log_metrics(self, metrics, step):
        self.calls.append(("log_metrics", metrics, step))

    def end_run(self):
        self.calls.append(("end_run",))


@pytest.mark.slow
def test_mlflow_gets_parameters_once_and_metrics_by_step(tmp_path, monkeypatch):
    mlflow = FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    config = tiny_config(tmp_path, iterations=2, val_every=1, mlflow=True)
    train(tiny_config(tmp_path, iterations=2, val_every=1, mlflow=True, stop_after=1))
    train(config)
    names = [call[0] for call in mlflow.calls]
    assert names.count("log_params") == 1 and names.count("end_run") == 2
    assert mlflow.calls[0] == ("start_run", None, tmp_path.name)
    assert ("start_run", "run-1", None) in mlflow.calls  # the resumed invocation: same run
    assert (tmp_path / RUN_ID_FILE).read_text() == "run-1"
    params = next(call[1] for call in mlflow.calls if call[0] == "log_params")
    assert params["run.batch_size"] == 4 and params["model.backbone"] == "mobilenetv2"
    metrics = [call for call in mlflow.calls if call[0] == "log_metrics"]
    assert {step for _, _, step in metrics} == {1, 2}
    assert any("val_miou" in values for _, values, _ in metrics)
    assert any("loss" in values and "lr" in values for _, values, _ in metrics)


def test_mlflow_without_the_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(AtrousError, match=r"pip install 'atrous\[mlflow\]'"):
        train(tiny_config(tmp_path, mlflow=True))
    assert not (tmp_path / "last.pt").exists()
