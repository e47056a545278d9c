"""One training run, start to finish: data → model → Lightning → run folder."""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from filelock import FileLock, Timeout
from lightning.pytorch.callbacks import Callback

from recsys.allocator import keep_large_blocks, map_large_blocks, release_free_memory
from recsys.artifacts import RunFolder, git_commit
from recsys.data.dataset import SplitDataset, load_dataset
from recsys.data.splits import TEST, TRAIN, VALID
from recsys.errors import ConfigError
from recsys.eval.ranking import evaluate, sample_users
from recsys.io import atomic_write_text
from recsys.models import TrainingGraph, build_model
from recsys.models.base import Recommender, dot_scores, frozen_embeddings, model_spec
from recsys.train.config import RunConfig, parse_run_config
from recsys.train.distributed import follow_launcher, is_leader, started_together
from recsys.train.fit import fit, load_checkpoint_weights, refit

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
    root = Path(config.output_dir) / config.name
    if fresh and root.exists():
        shutil.rmtree(root)
    run, resume = follow_run_folder(config, data_fingerprint)
    run.root.mkdir(parents=True, exist_ok=True)
    run.write_config(config.dump())
    return run, resume


def follow_run_folder(config: RunConfig, data_fingerprint: str) -> tuple[RunFolder, Path | None]:
    """What :func:`prepare_run_folder` decides, without writing (a ddp run's other
    processes): the refusal of a folder that holds another run, and the checkpoint to
    resume from (the first process, which prepares the folder, writes no checkpoint before
    they all train)."""
    run = RunFolder(Path(config.output_dir) / config.name)
    reason = _held_otherwise(run, config.dump(), data_fingerprint)
    if reason is not None:
        raise ConfigError(f"{reason}; pass --fresh to overwrite it or choose another name=...")
    last = run.checkpoint_dir / "last.ckpt"
    return run, (last if last.exists() else None)


def evaluate_embeddings(vectors, dataset: SplitDataset, config: RunConfig) -> dict[str, Any]:
    """vectors: ``{"valid": (users (U, D), items (I, D)), "test": (...)}``, what each split
    is scored with (they differ for models whose users are built from history)."""
    out: dict[str, Any] = {}
    for split in ("valid", "test"):
        user, item = vectors[split]
        truth, exclude = dataset.eval_matrices(split)
        truth = sample_users(truth, config.eval.max_users, config.seed)
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


def _free_training_state() -> None:
    """Lightning's trainer, module and optimiser hold each other, so Adam's moments (twice
    the model) would outlive fit() until a full collection: freed before the embeddings,
    and their pages handed back to the kernel (:mod:`recsys.allocator` keeps freed blocks
    for the training steps; after them large blocks are mapped apiece again, so that each
    phase holds only what is alive: the evaluation's score chunks grew the heap by 6–8 GB
    at 1M items)."""
    gc.collect()
    release_free_memory()
    map_large_blocks()


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
    if fresh and started_together(config.trainer.num_nodes):
        raise ConfigError(
            "--fresh with processes started together (several nodes, torchrun, srun): one"
            " would delete the run folder while another reads it; delete"
            f" {Path(config.output_dir) / config.name} before launching, or choose another name=..."
        )
    _quiet_lightning()
    follow_launcher()  # a ddp run's other process ends with the first
    L.seed_everything(config.seed, workers=True, verbose=False)
    keep_large_blocks()  # a step's large temporaries reuse the heap (recsys.allocator)
    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    dataset = load_dataset(config.data)  # bad data fails here, before anything is written
    source, borrowed_codes = getattr(config.model, "semantic_ids_from", None), None
    if source is not None:  # so does a bad semantic-ID source
        borrowed_codes = borrowed_item_codes(
            Path(source), dataset.item_map.ids, config.model.quantizer
        )
    # a ddp run's other processes train beside the first, which holds the lock
    with run_folder_lock(config) if is_leader() else nullcontext():
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
    if started_together(config.trainer.num_nodes):  # each would copy the first phase
        raise ConfigError(
            "recsys refit copies the first phase before training: start it as one command"
            " (trainer.strategy ddp or ddp_spawn start the other processes), or train with"
            " trainer.refit: true"
        )
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
    leader = is_leader()  # the others of a ddp run train and leave; the first writes
    if not leader:
        run, resume = follow_run_folder(config, dataset.fingerprint)
    else:
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
        if leader:
            atomic_write_text(selected, json.dumps(training))
        _free_training_state()
    known = np.isin(dataset.labels, (TRAIN, VALID))
    known_users, known_items = dataset.users[known], dataset.items[known]
    refitted = config.trainer.refit and model.trainable and bool((dataset.labels == VALID).any())
    if not leader:  # the refit's fit needs every process; nothing else does
        if refitted:
            refit(config, run, graph, known_users, known_items, training["best_epoch"])
        return run
    start = time.perf_counter()
    valid_user, valid_item = frozen_embeddings(model)  # history = train: what valid scored
    training["embedding_seconds"] = round(time.perf_counter() - start, 3)
    # After training, each phase's temporaries go back to the kernel as it ends: kept in
    # the heap (recsys.allocator), they stayed resident under the next (6 GB at 1M items).
    release_free_memory()
    user, item = valid_user, valid_item
    user_for_valid = item_for_valid = None
    if refitted:  # test, export and serving use the model trained on train + valid
        model, training["refit"] = refit(
            config, run, graph, known_users, known_items, training["best_epoch"]
        )
        _free_training_state()  # the refit's trainer and optimiser, as above
    if model.use_history(known_users, known_items) or refitted:
        release_free_memory()
        user, item = frozen_embeddings(model)
        release_free_memory()
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
    release_free_memory()
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
