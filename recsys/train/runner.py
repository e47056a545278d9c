"""One training run, start to finish: data → model → Lightning → run folder."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from filelock import FileLock, Timeout
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from recsys.artifacts import RunFolder, git_commit
from recsys.data.dataset import SplitDataset, load_dataset
from recsys.data.splits import TEST, TRAIN, VALID
from recsys.errors import ConfigError
from recsys.eval.ranking import evaluate
from recsys.io import atomic_write_text
from recsys.models import TrainingGraph, build_model
from recsys.models.base import Recommender, dot_scores, frozen_embeddings, model_spec
from recsys.train.clock import EpochClock
from recsys.train.config import RunConfig, parse_run_config
from recsys.train.datamodule import InteractionDataModule
from recsys.train.distributed import AtomicCheckpointIO, FitFacts, ThreadCount
from recsys.train.ema import ParameterEMA
from recsys.train.module import RecommenderModule
from recsys.train.rng import GlobalRandomState
from recsys.train.stopping import WarmupEarlyStopping, stopping_patience, validation_interval

log = logging.getLogger(__name__)


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Sparse.*")
    warnings.filterwarnings("ignore", message=".*sparse.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*has.*__len__.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*")


@contextmanager
def run_folder_lock(config: RunConfig) -> Iterator[None]:
    """One ``recsys train`` per run folder at a time: a second one (a resume started
    twice, ``--fresh`` over a live run) is refused before it touches anything, instead of
    both writing the same checkpoints and logs. The lock file sits beside the folder
    (``--fresh`` deletes the folder) and is released by the OS when its process dies
    (``flock``), so a crash leaves nothing to clean up."""
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    lock = FileLock(output / f".{config.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(
            f"{output / config.name} is being trained by another process; wait for it to"
            " finish or choose another name=..."
        ) from None
    try:
        yield
    finally:
        lock.release()


def _same_config(saved: Any, resolved: dict[str, Any]) -> bool:
    """Whether a run folder's saved config is ``resolved``, once validated by today's code:
    a key added since, at its default, does not make an older run another config (new
    keys default to the behaviour before them); a key since removed or renamed does."""
    if saved == resolved:
        return True
    try:
        return isinstance(saved, dict) and parse_run_config(saved).dump() == resolved
    except ConfigError:
        return False


def _held_otherwise(run: RunFolder, resolved: dict[str, Any], data_fingerprint: str) -> str | None:
    """Why ``run``'s folder cannot hold the run of config ``resolved`` on this data (its
    saved config differs, or its manifest, written last, names other data); None if it can."""
    if run.config_path.exists() and not _same_config(run.config(), resolved):
        return f"{run.root} holds a run with a different config"
    if run.manifest_path.exists():
        saved = json.loads(run.manifest_path.read_text()).get("data_fingerprint")
        if saved != data_fingerprint:
            return (
                f"{run.manifest_path}: the run was trained on other data (data_fingerprint"
                f" {saved}, now {data_fingerprint})"
            )
    return None


def prepare_run_folder(
    config: RunConfig, fresh: bool, data_fingerprint: str
) -> tuple[RunFolder, Path | None]:
    """Create the run folder; return the checkpoint to resume from, if any.

    A folder holding an interrupted run of the same config resumes from ``last.ckpt``;
    one with a different config, or a finished one trained on other data (its manifest's
    ``data_fingerprint``), is refused rather than silently mixed.
    """
    run = RunFolder(Path(config.output_dir) / config.name)
    resolved = config.dump()
    last = run.checkpoint_dir / "last.ckpt"
    if fresh and run.root.exists():
        shutil.rmtree(run.root)
    reason = _held_otherwise(run, resolved, data_fingerprint)
    if reason is not None:
        raise ConfigError(f"{reason}; pass --fresh to overwrite it or choose another name=...")
    run.root.mkdir(parents=True, exist_ok=True)
    run.write_config(resolved)
    return run, (last if last.exists() else None)


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
    callbacks = [*callbacks, GlobalRandomState(), ThreadCount(tc.num_threads)]
    if tc.ema_decay is not None:
        callbacks = [*callbacks, ParameterEMA(tc.ema_decay)]
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator=tc.accelerator,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        strategy=tc.strategy,
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
    module = RecommenderModule(
        model,
        tc.lr,
        tc.weight_decay,
        valid_truth,
        valid_exclude,
        dataset.candidates.get("valid"),
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
    candidates = dataset.candidates.get("valid")
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
    log_file = run.log_dir / "metrics.csv"
    kept = run.log_dir / "metrics.before-resume.csv"
    if resume and log_file.exists():
        atomic_write_text(kept, merged_curves([kept, log_file]).to_csv(index=False))
    start = time.perf_counter()
    facts_path.unlink(missing_ok=True)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    seconds = clock.before + time.perf_counter() - start
    epochs, best_path, best_score = (
        trainer.current_epoch, checkpoint.best_model_path, checkpoint.best_model_score
    )  # fmt: skip
    if trainer.world_size > 1:  # the fit ran in other processes: their facts
        ran = json.loads(facts_path.read_text())
        epochs, best_path, best_score = (
            ran["epochs"], ran["best_model_path"], ran["best_model_score"]
        )  # fmt: skip
        clock.load_state_dict(ran["clock"])
        seconds = clock.before
    facts_path.unlink(missing_ok=True)  # the run folder holds what it always held
    if kept.exists() and log_file.exists():
        atomic_write_text(log_file, merged_curves([kept, log_file]).to_csv(index=False))
        kept.unlink()
    state = load_checkpoint_weights(model, best_path or str(run.checkpoint_dir / "best.ckpt"))
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
    if trainer.world_size > 1:  # trained in other processes: the last epoch's weights
        state = load_checkpoint_weights(model, last)
        seconds = float(state["callbacks"]["EpochClock"]["seconds"])
    return model, {"epochs": epochs, "train_seconds": round(seconds, 2)}


def evaluate_embeddings(vectors, dataset: SplitDataset, config: RunConfig) -> dict[str, Any]:
    """vectors: ``{"valid": (users (U, D), items (I, D)), "test": (...)}``, what each split
    is scored with (they differ for models whose users are built from history)."""
    out: dict[str, Any] = {}
    for split in ("valid", "test"):
        user, item = vectors[split]
        truth, exclude = dataset.eval_matrices(split)
        if truth.nnz == 0:
            continue
        out[split] = evaluate(
            dot_scores(user, item),
            truth,
            exclude,
            ks=tuple(config.eval.ks),
            candidates=dataset.candidates.get(split),
            batch_size=config.eval.batch_size,
        )
    return out


def feature_cache_dir() -> Path:
    return Path(os.environ.get("RECSYS_CACHE", ".cache/recsys")) / "features"


def item_features(dataset: SplitDataset, config: RunConfig):
    """Frozen item features aligned with item indices (cached on disk by content hash)."""
    from recsys.features.pipeline import build_item_features
    from recsys.features.presets import run_features

    if dataset.item_table is None:
        raise ConfigError(
            f"model {config.model.kind!r} needs item content; {dataset.name} has none"
        )
    features = run_features(config.features, dataset.name)
    shown = features  # with a progress bar while training shows one (not what is saved)
    if config.trainer.progress_bar and features.text is not None:
        text = features.text.model_copy(update={"progress": True})
        shown = features.model_copy(update={"text": text})
    built = build_item_features(dataset.item_table, shown, cache_dir=feature_cache_dir())
    return built, features


def write_item_encoder(model: Recommender, run: RunFolder) -> None:
    """``RUN/item_encoder/`` for models that can embed unseen items (serving's POST
    /v1/items), written into a temporary folder first and renamed into place."""
    writer = getattr(model, "write_item_encoder", None)
    final = run.root / "item_encoder"
    if writer is None:
        shutil.rmtree(final, ignore_errors=True)
        return
    tmp = run.root / ".item_encoder.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    writer(tmp)
    if tmp.exists():
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)


def write_history_query(model: Recommender, run: RunFolder) -> None:
    """``RUN/history_query/`` (see :mod:`recsys.serve.history`) for models that say how
    an anonymous user's query is built from their items; written into a temporary folder
    first and renamed into place."""
    describe = getattr(model, "history_query", None)
    final = run.root / "history_query"
    was_training = model.training
    model.eval()
    with torch.no_grad():
        described = describe() if describe is not None else None
    model.train(was_training)
    if described is None:
        shutil.rmtree(final, ignore_errors=True)
        return
    segments, arrays = described
    tmp = run.root / ".history_query.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "query.json").write_text(json.dumps({"segments": segments}, indent=2))
    if arrays:
        np.savez(tmp / "arrays.npz", **arrays)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def borrowed_item_codes(source: Path, item_ids: np.ndarray, quantizer) -> np.ndarray:
    """``(n_items, L)`` codes of ``item_ids`` from another run's semantic-ID table; every
    item must be there, with the configured levels and codes inside the codebook."""
    table = RunFolder(source).semantic_ids("items")
    where = source / "semantic_ids" / "items.parquet"
    if table is None:
        raise ConfigError(f"model.semantic_ids_from: no {where}")
    columns = [f"c{level}" for level in range(quantizer.levels)]
    missing = [c for c in columns if c not in table.columns]
    if missing or f"c{quantizer.levels}" in table.columns:
        raise ConfigError(
            f"{where}: expected codes {columns} (model.quantizer.levels="
            f"{quantizer.levels}), found {[c for c in table.columns if c.startswith('c')]}"
        )
    table = table.set_index(table["item_id"].astype(str))
    wanted = pd.Index(np.asarray(item_ids).astype(str))
    absent = wanted.difference(table.index)
    if len(absent):
        raise ConfigError(
            f"{where}: {len(absent)} items of this dataset are absent, e.g. {absent[0]!r}"
        )
    codes = table.loc[wanted, columns].to_numpy(np.int64)
    if codes.min() < 0 or codes.max() >= quantizer.codebook_size:
        raise ConfigError(
            f"{where}: codes outside [0, {quantizer.codebook_size}) (model.quantizer.codebook_size)"
        )
    return codes


def user_features(dataset: SplitDataset):
    """Side information of users as (matrix, present), or None when the dataset has none."""
    from recsys.features.presets import USER_PRESETS
    from recsys.features.tabular import TabularEncoder

    if dataset.user_table is None or dataset.name not in USER_PRESETS:
        return None
    encoder = TabularEncoder(USER_PRESETS[dataset.name])
    return encoder.fit(dataset.user_table).encode(dataset.user_table)


def finished_run(config: RunConfig, data_fingerprint: str) -> RunFolder | None:
    """``config``'s run folder if it holds a finished run (its manifest, written last,
    exists) of exactly this config on this data; otherwise None. A run kept from another
    code version (the manifest's git commit) is named on stderr."""
    run = RunFolder(Path(config.output_dir) / config.name)
    if not (run.config_path.exists() and run.manifest_path.exists()):
        return None
    if _held_otherwise(run, config.dump(), data_fingerprint) is not None:
        return None
    then, now = run.manifest().get("git_commit"), git_commit()
    if then and now and then != now:  # kept all the same: the code may not change its numbers
        print(
            f"kept {run.root}: finished at commit {then[:12]}, the code is now at {now[:12]};"
            " its numbers are that code's (--fresh retrains it)",
            file=sys.stderr,
        )
    return run


def train_run(
    config: RunConfig,
    fresh: bool = False,
    skip_finished: bool = False,
    callbacks: list[Callback] | None = None,
) -> RunFolder:
    """Train ``config`` into ``<output_dir>/<name>/`` and return that run folder.

    ``skip_finished`` leaves a run that already finished with this config on this data as
    it is (nothing rewritten) and returns it, so that a list of runs can be restarted after
    a crash without retraining what was done; an interrupted run resumes as always.
    ``callbacks`` join the first phase's Lightning trainer (``recsys tune``'s pruning)."""
    if fresh and skip_finished:
        raise ConfigError("--fresh retrains and --skip-finished keeps: pass one of them")
    _quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    dataset = load_dataset(config.data)  # bad data fails here, before anything is written
    source, borrowed_codes = getattr(config.model, "semantic_ids_from", None), None
    if source is not None:  # so does a bad semantic-ID source
        borrowed_codes = borrowed_item_codes(
            Path(source), dataset.item_map.ids, config.model.quantizer
        )
    with run_folder_lock(config):
        done = finished_run(config, dataset.fingerprint) if skip_finished else None
        if done is not None:
            return done
        return _train_into_folder(config, fresh, dataset, borrowed_codes, callbacks or [])


def refit_run(
    source: Path, name: str, fresh: bool = False, progress_bar: bool | None = None
) -> RunFolder:
    """Retrain the model a finished run selected, on train + valid, into the sibling folder
    ``<source's parent>/<name>`` (``recsys refit``). The first phase (its checkpoints,
    selected epoch and curves) is copied, not rerun, so one first phase gives test numbers
    under both policies (``source`` keeps its own) and the result equals training the same
    config with ``trainer.refit: true`` in one go. An interrupted refit resumes; ``fresh``
    copies the first phase again."""
    src = RunFolder(source)
    selected = src.selected_path
    if not src.config_path.exists():
        raise ConfigError(f"{source}: not a run folder (no config.yaml)")
    if not selected.exists():
        raise ConfigError(
            f"{source}: its first phase has not finished ({selected} is missing); train it"
            " to the end first"
        )
    config = parse_run_config(src.config())
    if config.trainer.refit:
        raise ConfigError(
            f"{src.config_path}: trainer.refit is already true (its test numbers are the refit's)"
        )
    target = source.parent / name
    if target.resolve() == source.resolve():
        raise ConfigError(f"{source}: the refit needs a name of its own")
    config.name, config.output_dir, config.trainer.refit = name, str(source.parent), True
    if progress_bar is not None:
        config.trainer.progress_bar = progress_bar
    with run_folder_lock(config):
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
        if not target.exists():  # copied whole or not at all
            partial = source.parent / f".{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            for part in (src.checkpoint_dir, src.log_dir):
                shutil.copytree(part, partial / part.name, ignore=shutil.ignore_patterns("refit"))
            RunFolder(partial).write_config(config.dump())
            partial.rename(target)
    return train_run(config)


def _train_into_folder(
    config: RunConfig,
    fresh: bool,
    dataset: SplitDataset,
    borrowed_codes: np.ndarray | None,
    callbacks: list[Callback],
) -> RunFolder:
    run, resume = prepare_run_folder(config, fresh, dataset.fingerprint)
    run.write_data(
        dataset.user_map,
        dataset.item_map,
        dataset.users,
        dataset.items,
        dataset.labels,
        dataset.candidates,
    )
    run.write_items(dataset.item_table)
    train_users, train_items = dataset.pairs(TRAIN)
    graph = TrainingGraph(dataset.n_users, dataset.n_items, train_users, train_items)
    if getattr(config.model, "counts_from", None) == "test-oracle":
        graph.test_item_counts = np.bincount(dataset.pairs(TEST)[1], minlength=dataset.n_items)
    if model_spec(config.model.kind).build.needs_item_features:
        graph.item_features, graph.features_config = item_features(dataset, config)
    if model_spec(config.model.kind).build.needs_user_features:
        graph.user_features = user_features(dataset)
    graph.item_codes = borrowed_codes
    model = build_model(config.model, graph)
    training: dict[str, Any] = {"epochs": 0, "train_seconds": 0.0}
    selected = run.selected_path
    if model.trainable and resume is not None and selected.exists():
        # the first phase had finished (a crash during the refit): its best weights
        training = json.loads(selected.read_text())
        load_checkpoint_weights(model, run.checkpoint_dir / "best.ckpt")
    elif model.trainable:
        training = fit(model, dataset, config, run, resume, callbacks)
        atomic_write_text(selected, json.dumps(training))
    valid_user, valid_item = frozen_embeddings(model)  # history = train: what valid scored
    user, item = valid_user, valid_item
    user_for_valid = item_for_valid = None
    known = np.isin(dataset.labels, (TRAIN, VALID))
    known_users, known_items = dataset.users[known], dataset.items[known]
    refitted = config.trainer.refit and model.trainable and bool((dataset.labels == VALID).any())
    if refitted:  # test, export and serving use the model trained on train + valid
        model, training["refit"] = refit(
            config, run, graph, known_users, known_items, training["best_epoch"]
        )
    if model.use_history(known_users, known_items) or refitted:
        user, item = frozen_embeddings(model)
        user_for_valid = valid_user.numpy()
        # Propagation can mix user state into items: keep valid's items when they moved.
        if not torch.equal(item, valid_item):
            item_for_valid = valid_item.numpy()
    run.write_embeddings(user.numpy(), item.numpy(), user_for_valid, item_for_valid)
    write_item_encoder(model, run)
    write_history_query(model, run)
    id_maps = {"items": dataset.item_map, "users": dataset.user_map}
    for side, (sids, stats) in model.semantic_ids().items():
        run.write_semantic_ids(side, id_maps[side].ids, sids, stats)
    metrics = evaluate_embeddings(
        {"valid": (valid_user, valid_item), "test": (user, item)}, dataset, config
    )
    run.write_metrics(
        {
            "model": config.model.kind,
            "dataset": dataset.name,
            "split": dataset.protocol,
            "training": training,
            **metrics,
        }
    )
    run.write_manifest(
        name=config.name,
        model=config.model.kind,
        dataset=dataset.name,
        split=dataset.protocol,
        data_fingerprint=dataset.fingerprint,
        n_users=dataset.n_users,
        n_items=dataset.n_items,
        embedding_dim=int(user.shape[1]),
        seed=config.seed,
        command=" ".join(sys.argv),
    )
    return run
