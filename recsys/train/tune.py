"""``recsys tune -c CONFIG``: hyper-parameter search with Optuna over ordinary runs.

The config's ``tune:`` section declares the search (everything else is the run to tune)::

    tune:
      n_trials: 20
      metric: ndcg@10           # valid split; trials also early-stop on it
      params:
        trainer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
        model.dim: {choices: [32, 64, 128]}
        model.layers: {low: 1, high: 3, step: 1}

Each trial trains the config with its parameters applied as dotted overrides into an
ordinary run folder ``<output_dir>/<name>-tune/trial-<number>``, and is scored by its
saved valid metric: test is never read. Trials report the valid metric after every
validation and the median pruner (Optuna) stops one that falls behind the median of the
trials before it at the same epoch, once past its warm-up (``trainer.min_steps``; a
``TrialPruned`` run folder keeps its checkpoints).
The study lives in ``<output_dir>/<name>-tune/study.db`` (SQLite): run the same command
again after a kill and it goes on, the interrupted trial resuming from its last
checkpoint. At the end ``best.yaml`` is the config with the best trial's parameters and
no ``tune:`` section, named ``<name>-best``: ``recsys train -c best.yaml`` retrains that
trial to the digit. ``summary.csv`` and the printed table list every trial.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import pandas as pd
from lightning.pytorch.callbacks import Callback
from pydantic import Field, model_validator

from recsys.config import StrictModel, apply_overrides, load_yaml
from recsys.errors import ConfigError
from recsys.io import atomic_write_text

log = logging.getLogger(__name__)


class TuneParam(StrictModel):
    """One searched setting: a range (``low``/``high``, ``log``, ``step``) or ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False  # sample on a log scale (learning rates, regularisation)
    step: float | None = None  # an int range when low, high and step are all whole numbers
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> TuneParam:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give low and high, or choices")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, self.choices)
        assert self.low is not None and self.high is not None
        whole = all(float(v).is_integer() for v in (self.low, self.high, self.step or 1))
        if whole and self.step is not None:
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step))
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)


class TuneConfig(StrictModel):
    params: dict[str, TuneParam] = Field(min_length=1)  # dotted config keys
    n_trials: int = Field(20, ge=1)
    metric: str = "ndcg@10"  # on valid; also what each trial early-stops on
    seed: int = 0  # the sampler's (TPE) seed: the same study given the same results
    prune: bool = True  # median pruning on the per-epoch valid metric
    startup_trials: int = Field(3, ge=0)  # trials never pruned, and sampled at random


class PruneOnValid(Callback):
    """Reports the valid metric to Optuna after each validation; stops a losing trial,
    but not during the trial's warm-up (``trainer.min_steps``): a slow start is judged by
    the same rule as early stopping, which would not end the run there either."""

    def __init__(self, trial: optuna.Trial, monitor: str, min_steps: int | None = None) -> None:
        self.trial, self.monitor, self.min_steps = trial, monitor, min_steps or 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        self.trial.report(value, step=trainer.current_epoch)
        if trainer.global_step < self.min_steps:
            return
        if self.trial.should_prune():
            self.trial.set_user_attr("epochs", trainer.current_epoch + 1)
            raise optuna.TrialPruned(f"epoch {trainer.current_epoch}: {self.monitor} {value:.4f}")


def split_config(raw: dict[str, Any]) -> tuple[dict[str, Any], TuneConfig]:
    """The run config without its ``tune:`` section, and that section validated."""
    raw = copy.deepcopy(raw)
    section = raw.pop("tune", None)
    if section is None:
        raise ConfigError("the config has no tune: section (params to search, n_trials)")
    try:
        return raw, TuneConfig.model_validate(section)
    except ValueError as err:
        raise ConfigError(f"tune: {err}") from None


def tune_dir(raw: dict[str, Any]) -> Path:
    return Path(raw.get("output_dir", "runs")) / f"{raw['name']}-tune"


def trial_config(
    raw: dict[str, Any], params: dict[str, Any], name: str, output_dir: str, metric: str
) -> tuple[dict[str, Any], Any]:
    """The raw and validated run config of one trial: ``params`` set at their dotted keys
    (values as sampled, not re-parsed from text)."""
    from recsys.train.config import parse_run_config

    out = copy.deepcopy(raw)
    for key, value in params.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    out["name"], out["output_dir"] = name, output_dir
    out.setdefault("trainer", {})["monitor"] = metric
    return out, parse_run_config(out, source=f"trial {name}")


def run_tune(
    config_path: str, overrides: list[str] | None = None, n_trials: int | None = None,
    progress: bool = True,
) -> tuple[optuna.Study, Path]:  # fmt: skip
    """Run (or resume) the study; returns it and the written ``best.yaml``."""
    from recsys.train.distributed import starts_by_command
    from recsys.train.runner import train_run

    raw, spec = split_config(apply_overrides(load_yaml(config_path), overrides or []))
    if "name" not in raw:
        raise ConfigError(f"{config_path}: name is required")
    folder = tune_dir(raw)
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{folder.resolve() / 'study.db'}"
    sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=spec.startup_trials)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials)
        if spec.prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=raw["name"], storage=storage, direction="maximize", sampler=sampler,
        pruner=pruner, load_if_exists=True,
    )  # fmt: skip
    study.set_user_attr("metric", spec.metric)
    _requeue_interrupted(study)
    monitor = f"val/{spec.metric}"

    def objective(trial: optuna.Trial) -> float:
        params = {key: p.suggest(trial, key) for key, p in spec.params.items()}
        name = trial.user_attrs.get("run") or f"trial-{trial.number:03d}"
        trial.set_user_attr("run", name)
        _, config = trial_config(raw, params, name, str(folder), spec.metric)
        if starts_by_command(config.trainer.strategy):  # it would re-run one trial, unpruned
            raise ConfigError(
                f"recsys tune: trainer.strategy {config.trainer.strategy!r} starts its other"
                " processes as commands; trials train in this one: use 'ddp_spawn'"
            )
        config.trainer.progress_bar = False
        prune = PruneOnValid(trial, monitor, config.trainer.min_steps)
        run = train_run(config, skip_finished=True, callbacks=[prune])
        metrics = run.metrics()
        training = metrics.get("training", {})
        trial.set_user_attr("epochs", training.get("epochs"))
        trial.set_user_attr("best_epoch", training.get("best_epoch"))
        trial.set_user_attr("seconds", training.get("train_seconds"))
        return float(metrics["valid"][spec.metric])  # valid only: test is never read

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))  # failed ones: again
    remaining = (n_trials or spec.n_trials) - done
    if remaining > 0:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(objective, n_trials=remaining, show_progress_bar=progress)
    best = study.best_trial
    best_raw, _ = trial_config(
        raw, best.params, f"{raw['name']}-best", raw.get("output_dir", "runs"), spec.metric
    )
    path = folder / "best.yaml"
    header = (
        f"# recsys tune: trial {best.number} of study {raw['name']} ({folder / 'study.db'}),"
        f" valid {spec.metric} {best.value:.6f}\n"
        f"# params: {best.params}\n"
    )
    import yaml

    atomic_write_text(path, header + yaml.safe_dump(best_raw, sort_keys=False))
    atomic_write_text(folder / "summary.csv", summary(study, spec.metric).to_csv(index=False))
    return study, path


def _requeue_interrupted(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed process: failed, and enqueued again with the same
    parameters and run folder, so the new trial resumes that folder's last checkpoint."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"run": trial.user_attrs.get("run")})
        log.warning("trial %d was interrupted; it runs again from its checkpoint", trial.number)


def summary(study: optuna.Study, metric: str) -> pd.DataFrame:
    """One row per trial: number, state, params, valid metric, epochs, seconds."""
    rows = []
    for t in study.trials:
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                **{k: v for k, v in t.params.items()},
                f"valid {metric}": None if t.value is None else round(t.value, 6),
                "epochs": t.user_attrs.get("epochs"),
                "seconds": t.user_attrs.get("seconds"),
                "run": t.user_attrs.get("run"),
            }
        )
    return pd.DataFrame(rows)
