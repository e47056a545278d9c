"""``recsys tune``: a tiny Optuna study over LightGCN runs that resumes after a kill and
writes a config that ``recsys train`` reproduces to the digit."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import synthetic_interactions

from recsys.cli import main
from recsys.errors import ConfigError
from recsys.train.tune import TuneParam, run_tune, split_config


def write_config(root: Path, n_trials: int = 3, max_epochs: int = 2) -> Path:
    synthetic_interactions(n_users=60, n_items=40).to_csv(root / "inter.csv", index=False)
    config = {
        "name": "lgcn",
        "output_dir": str(root / "runs"),
        "data": {"dataset": "table", "split": "loo",
                 "interactions": {"path": str(root / "inter.csv")}},
        "model": {"kind": "lightgcn", "dim": 8, "layers": 1},
        "trainer": {"max_epochs": max_epochs, "num_threads": 1, "progress_bar": False,
                    "sampling": {"batch_size": 64}},
        "tune": {
            "n_trials": n_trials,
            "startup_trials": 1,
            "params": {
                "trainer.lr": {"low": 1.0e-3, "high": 5.0e-2, "log": True},
                "model.dim": {"choices": [4, 8]},
            },
        },
    }  # fmt: skip
    path = root / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_tiny_study_writes_a_config_that_reproduces_its_best_trial(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["tune", "-c", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| trial | state |"))
    for column in ("trainer.lr", "model.dim", "valid ndcg@10", "epochs", "seconds", "run"):
        assert f"| {column} |" in header
    folder = tmp_path / "runs" / "lgcn-tune"
    study = optuna.load_study(study_name="lgcn", storage=f"sqlite:///{folder / 'study.db'}")
    assert len(study.trials) == 3
    best = study.best_trial
    # Each trial is an ordinary run folder whose saved valid metric is the trial's value.
    trial_run = folder / best.user_attrs["run"]
    valid = json.loads((trial_run / "metrics.json").read_text())["valid"]["ndcg@10"]
    assert best.value == valid
    # best.yaml: a plain config (no tune section) with the best parameters.
    best_yaml = yaml.safe_load((folder / "best.yaml").read_text())
    assert "tune" not in best_yaml and best_yaml["name"] == "lgcn-best"
    assert best_yaml["trainer"]["lr"] == best.params["trainer.lr"]
    assert best_yaml["model"]["dim"] == best.params["model.dim"]
    assert main(["train", "-c", str(folder / "best.yaml"), "--brief"]) == 0
    retrained = json.loads((tmp_path / "runs" / "lgcn-best" / "metrics.json").read_text())
    assert retrained["valid"] == json.loads((trial_run / "metrics.json").read_text())["valid"]
    assert (folder / "summary.csv").exists()
    # A second call finds the study done: no new trial.
    study2, _ = run_tune(str(config), progress=False)
    assert len(study2.trials) == 3


def test_a_killed_tune_resumes_and_finishes_its_trials(tmp_path):
    """SIGKILL while a trial trains; the rerun marks it failed, trains the same parameters
    again in the same run folder (from its checkpoint), and completes the budget."""
    config = write_config(tmp_path, n_trials=3, max_epochs=30)
    db = tmp_path / "runs" / "lgcn-tune" / "study.db"
    cmd = [sys.executable, "-m", "recsys.cli", "tune", "-c", str(config), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    deadline = time.monotonic() + 240
    running = None
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    rows = con.execute("SELECT number, state FROM trials").fetchall()
            except sqlite3.Error:
                rows = []
            ckpts = list((tmp_path / "runs" / "lgcn-tune").glob("trial-*/checkpoints/last.ckpt"))
            running = [n for n, state in rows if state == "RUNNING"]
            if running and ckpts:  # a trial is training and has a checkpoint
                break
        time.sleep(0.2)
    if proc.poll() is not None:
        pytest.skip("the study finished before it could be killed (a fast machine)")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert running
    had_checkpoint = {
        p.parts[-3] for p in (tmp_path / "runs" / "lgcn-tune").glob("trial-*/checkpoints/last.ckpt")
    }
    study, _ = run_tune(str(config), progress=False)
    states = [t.state for t in study.trials]
    finished = [s for s in states if s in (optuna.trial.TrialState.COMPLETE,
                                             optuna.trial.TrialState.PRUNED)]  # fmt: skip
    assert len(finished) == 3 and optuna.trial.TrialState.COMPLETE in finished
    assert states.count(optuna.trial.TrialState.FAIL) == 1  # the killed one, run again
    killed = next(t for t in study.trials if t.state == optuna.trial.TrialState.FAIL)
    again = [t for t in study.trials if t.user_attrs.get("run") == killed.user_attrs["run"]]
    assert len(again) == 2 and again[1].params == killed.params
    name = killed.user_attrs["run"]
    if again[1].state == optuna.trial.TrialState.COMPLETE and name in had_checkpoint:
        folder = tmp_path / "runs" / "lgcn-tune" / name  # resumed from its last.ckpt
        assert json.loads((folder / "metrics.json").read_text())["training"]["resumed"]


def test_bad_tune_sections_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="no tune: section"):
        split_config({"name": "x"})
    with pytest.raises(ConfigError, match="low and high, or choices"):
        split_config({"name": "x", "tune": {"params": {"trainer.lr": {"low": 1}}}})
    with pytest.raises(ValueError, match="low 2.0 > high 1.0"):
        TuneParam(low=2, high=1)


def test_a_strategy_that_starts_processes_as_commands_is_refused(tmp_path):
    """``ddp``'s other processes would run one trial's config to its end, unpruned, while
    this process went on to the next trial: refused before any training, naming the one
    to use."""
    config = write_config(tmp_path, n_trials=1)
    with pytest.raises(ConfigError, match="trainer.strategy 'ddp'.*use 'ddp_spawn'"):
        run_tune(str(config), ["trainer.strategy=ddp", "trainer.devices=2"], progress=False)
    assert not list((tmp_path / "runs" / "lgcn-tune").glob("trial-*"))  # no run folder


def test_a_trial_is_not_pruned_during_its_warm_up():
    """The median pruner would stop a slow starter at its first validation; before
    ``trainer.min_steps`` the callback only reports, as early stopping only watches."""
    from types import SimpleNamespace

    from recsys.train.tune import PruneOnValid

    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1)
    )
    for value in (0.5, 0.6):  # two finished trials that were good at epoch 0
        leader = study.ask()
        leader.report(value, step=0)
        leader.report(value, step=1)
        study.tell(leader, value)
    trial = study.ask()

    def validate(epoch: int, step: int, value: float) -> None:
        trainer = SimpleNamespace(
            sanity_checking=False, callback_metrics={"val/ndcg@10": value},
            current_epoch=epoch, global_step=step,
        )  # fmt: skip
        PruneOnValid(trial, "val/ndcg@10", min_steps=100).on_validation_end(trainer, None)

    validate(0, step=50, value=0.1)  # far behind, but in its warm-up: reported, not pruned
    assert trial.should_prune()  # the pruner itself would have stopped it
    with pytest.raises(optuna.TrialPruned):
        validate(1, step=100, value=0.1)  # past the warm-up: pruned
    assert trial.user_attrs["epochs"] == 2
