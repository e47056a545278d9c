"""The training run's config: data, model, trainer and evaluation sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from recsys.config import StrictModel, apply_overrides, load_yaml, validate
from recsys.data.dataset import DataConfig
from recsys.errors import ConfigError
from recsys.features.pipeline import FeaturesConfig
from recsys.models.base import model_kinds, model_spec
from recsys.train.datamodule import SamplingConfig


class TrainerConfig(StrictModel):
    max_epochs: int = 100
    patience: int = 10  # validations without a better valid score before stopping
    # Size-aware stopping (None: off, epochs alone decide): early stopping may not stop
    # before min_steps optimiser steps, and waits at least patience_steps steps for a
    # better score, so that "patience" means the same at 5 or 5,000 steps an epoch and a
    # spike of the initial state cannot end a run (recsys.train.stopping).
    min_steps: int | None = Field(None, ge=1)
    patience_steps: int | None = Field(None, ge=1)
    lr: float = 1e-3
    weight_decay: float = 0.0
    sampling: SamplingConfig = SamplingConfig()
    # Lightning's own: accelerator (cpu, gpu, auto), devices per node, nodes, and the
    # strategy that runs them (auto: one process; ddp / ddp_spawn: one process per device,
    # each training on its share of the batches, gradients averaged; on CPU over gloo).
    # ddp also trains in processes another launcher started (torchrun, srun, one command
    # per node): recsys.train.distributed.
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        # ddp_fork / ddp_notebook fork a process whose OpenMP pool may already run.
        if value.startswith(("ddp_fork", "ddp_notebook")):
            raise ValueError(
                f"{value!r} is not supported; use 'ddp' or 'ddp_spawn' (the same"
                f" data-parallel training: {value!r} forks a running OpenMP pool)"
            )
        return value

    num_threads: int | None = None
    # "auto": validate every n epochs, n sized so that validation costs about a fifth of
    # the training between validations, whatever the data's size
    # (recsys.train.stopping.validation_interval); an int: every that many epochs.
    check_val_every_n_epoch: int | Literal["auto"] = Field(1)
    progress_bar: bool = True
    monitor: str = "ndcg@10"
    deterministic: bool = True
    ema_decay: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="keep an exponential moving average of the trainable weights (decay"
        " per optimiser step; buffers are not averaged) and validate, checkpoint, select,"
        " test and refit with it (recsys.train.ema): smoother validation curves for noisy"
        " objectives. None: the raw weights",
    )
    refit: bool = Field(
        default=False,
        description="after early stopping on valid, train the same config again from"
        " scratch on train + valid for the selected number of epochs (no validation) and"
        " score test, export and serve with that model; valid metrics stay those of the"
        " selected model. For chronological splits, where the valid interactions are the"
        " most recent known ones",
    )


class EvalConfig(StrictModel):
    ks: list[int] = [5, 10, 20]
    batch_size: int = 1024
    max_users: int | None = Field(
        default=None,
        ge=1,
        description="rank a uniform sample of this many of a split's users (seeded by the"
        " run's seed, the same users at every validation) for the valid and test metrics:"
        " for catalogues where ranking every user is the cost of an epoch or more. None:"
        " every user (the protocol's metrics)",
    )


class RunConfig(StrictModel):
    name: str
    seed: int = 2020
    output_dir: str = "runs"
    data: DataConfig = DataConfig()
    model: Any
    trainer: TrainerConfig = TrainerConfig()
    eval: EvalConfig = EvalConfig()
    features: FeaturesConfig | None = None  # None: the dataset's preset, when a model needs it
    tune: dict[str, Any] | None = None  # recsys tune's search (recsys.train.tune); train skips it

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any) -> StrictModel:
        if isinstance(value, StrictModel):
            return value
        if not isinstance(value, dict) or value.get("kind") not in model_kinds():
            raise ValueError(f"needs a 'kind', one of {model_kinds()}")
        return model_spec(value["kind"]).config_cls.model_validate(value)

    @model_validator(mode="after")
    def _sparse_updates_over_gloo(self) -> RunConfig:
        t = self.trainer
        several = t.strategy != "auto" or t.devices not in ("auto", 1) or t.num_nodes > 1
        if getattr(self.model, "sparse_updates", False) and several and t.accelerator != "cpu":
            raise ValueError(
                "model.sparse_updates in several processes needs trainer.accelerator: cpu"
                f" (got {t.accelerator!r}; strategy {t.strategy!r}, devices {t.devices!r}):"
                " gloo all-reduces sparse gradients, NCCL does not; set"
                " model.sparse_updates: false to train on several GPUs"
            )
        return self

    def dump(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        out["model"] = self.model.model_dump(mode="json")
        out.pop("tune", None)  # how to search, not how to train: no part of a run's identity
        return out


def parse_run_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a whole run config; the model section by its registered kind, so that
    errors name the dotted key (``model.dimm: unknown key``)."""
    raw = dict(raw)
    model_raw = raw.pop("model", None)
    if not isinstance(model_raw, dict) or "kind" not in model_raw:
        raise ConfigError(
            f"{source}: invalid config\n  model.kind: required, one of {model_kinds()}"
        )
    kind = model_raw["kind"]
    if kind not in model_kinds():
        raise ConfigError(
            f"{source}: invalid config\n  model.kind: unknown {kind!r}; known: {model_kinds()}"
        )
    model = validate(model_spec(kind).config_cls, model_raw, source, prefix="model.")
    return validate(RunConfig, {**raw, "model": model}, source)


def load_run_config(path: str | None, overrides: list[str] | None = None) -> RunConfig:
    raw = load_yaml(path) if path else {}
    return parse_run_config(apply_overrides(raw, overrides or []), source=str(path or "config"))
