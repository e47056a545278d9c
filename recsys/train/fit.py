"""The Lightning phases of a run: the first phase (early stopping on valid, checkpoints,
resume) and the refit on train + valid, and the trainer both use."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from recsys.artifacts import RunFolder
from recsys.data.dataset import SplitDataset
from recsys.data.splits import TRAIN
from recsys.eval.ranking import sample_users
from recsys.io import atomic_write_text
from recsys.models import TrainingGraph, build_model
from recsys.models.base import Recommender
from recsys.train.clock import EpochClock
from recsys.train.config import RunConfig
from recsys.train.datamodule import InteractionDataModule
from recsys.train.distributed import (
    AtomicCheckpointIO,
    FitFacts,
    ProcessSetup,
    is_leader,
    lightning_strategy,
)
from recsys.train.ema import ParameterEMA
from recsys.train.module import RecommenderModule
from recsys.train.rng import GlobalRandomState
from recsys.train.stopping import WarmupEarlyStopping, stopping_patience, validation_interval


def merged_curves(files: list[Path]) -> pd.DataFrame:
    """The logged rows of successive attempts at one phase (oldest file first): each
    later attempt replaces the rows from its first epoch on."""
    merged: pd.DataFrame | None = None
    for frame in (pd.read_csv(f) for f in files if f.exists() and f.stat().st_size):
        if merged is not None and len(frame):
            merged = merged[merged["epoch"] < frame["epoch"].min()]
        merged = frame if merged is None else pd.concat([merged, frame])
    return merged if merged is not None else pd.DataFrame()


def lightning_trainer(
    config: RunConfig,
    run: RunFolder,
    max_epochs: int,
    callbacks: list[Callback],
    log_version: str,
    **options: Any,
) -> L.Trainer:
    """The Lightning trainer both training phases use (logs under ``logs/<version>``)."""
    tc = config.trainer
    # a resumed run continues the interrupted one's random draws, not fresh ones
    callbacks = [*callbacks, GlobalRandomState(), ProcessSetup(tc.num_threads)]
    if tc.ema_decay is not None:
        callbacks = [*callbacks, ParameterEMA(tc.ema_decay)]
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator=tc.accelerator,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        strategy=lightning_strategy(
            tc.strategy, getattr(config.model, "sparse_updates", False), run.config_path
        ),
        deterministic=tc.deterministic,
        callbacks=callbacks,
        logger=CSVLogger(run.root, name="logs", version=log_version),
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
        reload_dataloaders_every_n_epochs=1,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        plugins=[AtomicCheckpointIO()],
        **options,
    )


def spawned(trainer: L.Trainer) -> bool:
    """Whether ``trainer``'s fit ran in processes it started for it (``ddp_spawn``), so that
    its state there (epochs, best checkpoint, clock, weights) did not come back."""
    return trainer.world_size > 1 and getattr(trainer.strategy, "_start_method", "") != "popen"


def load_checkpoint_weights(model: Recommender, path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint's model weights into ``model``; returns the checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()})
    return state


def fit(
    model: Recommender,
    dataset: SplitDataset,
    config: RunConfig,
    run: RunFolder,
    resume: Path | None,
    callbacks: list[Callback] | None = None,
) -> dict[str, Any]:
    """Train with Lightning; load the best checkpoint's weights into ``model``."""
    tc = config.trainer
    valid_truth, valid_exclude = dataset.eval_matrices("valid")
    valid_truth = sample_users(valid_truth, config.eval.max_users, config.seed)
    module = RecommenderModule(
        model,
        tc.lr,
        tc.weight_decay,
        valid_truth,
        valid_exclude,
        candidates := dataset.candidates.get("valid"),
        tuple(config.eval.ks),
        config.eval.batch_size,
        tc.monitor,
    )
    train_users, train_items = dataset.pairs(TRAIN)
    datamodule = InteractionDataModule(
        train_users, train_items, dataset.n_items, tc.sampling, config.seed
    )
    monitor = f"val/{tc.monitor}"
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoint_dir,
        filename="best",
        monitor=monitor,
        mode="max",
        save_last=True,
        enable_version_counter=False,
    )
    clock = EpochClock()
    steps_per_epoch = -(-len(train_users) // tc.sampling.batch_size)  # PairBatches' length
    check_every = validation_interval(
        tc.check_val_every_n_epoch,
        int((valid_truth.getnnz(axis=1) > 0).sum()),
        dataset.n_items if candidates is None else len(candidates),
        len(train_users),
        tc.max_epochs,
    )
    patience = stopping_patience(tc.patience, tc.patience_steps, steps_per_epoch, check_every)
    stop = WarmupEarlyStopping(monitor, patience=patience, mode="max", min_steps=tc.min_steps)
    facts_path = run.checkpoint_dir / "fit.json"
    facts = FitFacts(facts_path, checkpoint, clock)
    trainer = lightning_trainer(
        config,
        run,
        tc.max_epochs,
        [checkpoint, stop, clock, facts, *(callbacks or [])],
        log_version="",
        check_val_every_n_epoch=check_every,
    )
    # CSVLogger deletes an existing metrics.csv: keep the interrupted run's curves in a
    # file of their own until this phase ends, so that a second crash loses none of them.
    # (The first process alone writes: the others of a ddp run train and leave.)
    leader = is_leader()
    log_file = run.log_dir / "metrics.csv"
    kept = run.log_dir / "metrics.before-resume.csv"
    if leader and resume and log_file.exists():
        atomic_write_text(kept, merged_curves([kept, log_file]).to_csv(index=False))
    start = time.perf_counter()
    if leader:
        facts_path.unlink(missing_ok=True)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    seconds = clock.before + time.perf_counter() - start
    epochs, best_path, best_score = (
        trainer.current_epoch, checkpoint.best_model_path, checkpoint.best_model_score
    )  # fmt: skip
    if trainer.world_size > 1 and not spawned(trainer):  # from the fit's start, as spawned:
        seconds = clock.elapsed()  # not the other processes' start (data, model) before it
    if spawned(trainer):  # the fit ran in other processes: their facts
        ran = json.loads(facts_path.read_text())
        epochs, best_path, best_score = (
            ran["epochs"], ran["best_model_path"], ran["best_model_score"]
        )  # fmt: skip
        clock.load_state_dict(ran["clock"])
        seconds = clock.before
    best_path = best_path or str(run.checkpoint_dir / "best.ckpt")
    if not leader:  # what a refit needs; the first process writes the rest
        return {"best_epoch": int(torch.load(best_path, mmap=True, weights_only=True)["epoch"]) + 1}
    facts_path.unlink(missing_ok=True)  # the run folder holds what it always held
    if kept.exists() and log_file.exists():
        atomic_write_text(log_file, merged_curves([kept, log_file]).to_csv(index=False))
        kept.unlink()
    state = load_checkpoint_weights(model, best_path)
    best_epoch = int(state["epoch"])
    return {
        "epochs": epochs,
        "best_epoch": best_epoch + 1,
        "best_valid": float(best_score) if best_score is not None else None,
        "train_seconds": round(seconds, 2),
        "seconds_to_best": round(clock.times[best_epoch], 2) if best_epoch in clock.times else None,
        "resumed": resume is not None,
        "epoch_seconds": clock.epoch_seconds,  # training only, one per epoch
        "valid_seconds": clock.valid_seconds,  # one per validation
        "validation_interval": check_every,  # epochs
    }


def refit(
    config: RunConfig,
    run: RunFolder,
    graph: TrainingGraph,
    users: np.ndarray,
    items: np.ndarray,
    epochs: int,
) -> tuple[Recommender, dict[str, Any]]:
    """Train ``config``'s model again from scratch (same seed) on the train + valid pairs
    ``users, items`` (per-user chronological) for ``epochs`` epochs, without validation
    (``trainer.refit``); ``graph``: the first phase's, for everything but the pairs.
    Checkpoints go to ``checkpoints/refit/``, so that an interrupted refit resumes from
    its last epoch."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    model = build_model(
        config.model, dataclasses.replace(graph, train_users=users, train_items=items)
    )
    tc = config.trainer
    module = RecommenderModule(model, tc.lr, tc.weight_decay, None, None, None, (), 1)
    folder = run.checkpoint_dir / "refit"
    last = folder / "last.ckpt"
    # no monitor: every epoch overwrites refit/last.ckpt
    every_epoch = ModelCheckpoint(dirpath=folder, filename="last", enable_version_counter=False)
    clock = EpochClock()
    trainer = lightning_trainer(
        config, run, epochs, [every_epoch, clock], log_version="refit", limit_val_batches=0
    )
    datamodule = InteractionDataModule(users, items, graph.n_items, tc.sampling, config.seed)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
    seconds = clock.before + time.perf_counter() - start
    if spawned(trainer):  # trained in other processes: the last epoch's weights
        state = load_checkpoint_weights(model, last)
        seconds = float(state["callbacks"]["EpochClock"]["seconds"])
    return model, {"epochs": epochs, "train_seconds": round(seconds, 2)}
