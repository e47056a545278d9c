"""Training in several processes (Lightning's ``ddp_spawn`` / ``ddp`` strategies).

Each process trains on its share of every epoch's batches (:class:`PairBatches` takes every
``world``-th one); Lightning averages the gradients, so an optimiser step sees ``world``
batches, and every process ranks the whole validation set itself (the same weights give the
same numbers: no gather, no disagreement on when to stop). Checkpoints and logs are written
by the first process only; the run folder is written by the launching process afterwards,
as in a one-process run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch.nn.parallel import DistributedDataParallel

from recsys.allocator import keep_large_blocks
from recsys.io import atomic_path, atomic_write_text
from recsys.train.clock import EpochClock


class ProcessSetup(Callback):
    """Every training process set up as the first one: ``trainer.num_threads`` (spawned
    processes start with torch's default, every core each, which oversubscribes the
    machine) and large freed blocks kept in the heap (:mod:`recsys.allocator`)."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        keep_large_blocks()
        if self.threads:
            torch.set_num_threads(self.threads)


def skip_constant_buffers(module: torch.nn.Module) -> None:
    """Leave out of DDP's broadcast the buffers training never changes. DDP copies every
    buffer from the first process to the others before every step, so that state changed in
    place (EMA codebooks, dead-code counters, frozen IDs) stays the same everywhere; the
    buffers built with the model from the data are the same in every process already, and
    some are large: those left out of checkpoints (neighbour tables, transition histories)
    and a module's ``input_buffers`` (content rows, items × feature width)."""
    constant = [
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in module.named_modules()
        for name in [*sub._non_persistent_buffers_set, *getattr(sub, "input_buffers", ())]
        if getattr(sub, name, None) is not None
    ]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, constant)


def declare_sparse_tables(module: torch.nn.Module, tables: list[torch.nn.Parameter]) -> None:
    """Mark the embedding modules holding ``tables`` (the parameters a model updates lazily,
    ``model.sparse_updates``) as ``sparse``: DDP decides which parameters get a sparse
    all-reduce (the rows a step read, from every process) from their module's ``sparse``
    flag, not from the gradients themselves, and fails on a sparse gradient it expected
    dense. Our models read these tables with sparse lookups of their own; the flag changes
    nothing else."""
    wanted = {id(p) for p in tables}
    owned = set()
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        if isinstance(sub, torch.nn.Embedding | torch.nn.EmbeddingBag) and id(weight) in wanted:
            sub.sparse = True
            owned.add(id(weight))
    names = [name for name, p in module.named_parameters() if id(p) in wanted - owned]
    if names:
        raise ValueError(f"sparse tables not held by an embedding module: {names}")


def lightning_strategy(name: str, sparse_gradients: bool = False) -> str | DDPStrategy:
    """Lightning's strategy called ``name``; a DDP one with the gradients stored in their
    all-reduce buckets (``gradient_as_bucket_view``: no second copy of every gradient,
    which the embedding tables make as large as the model), except with
    ``sparse_gradients``: a sparse gradient has no bucket to live in (the reducer aborts)."""
    if name not in StrategyRegistry or StrategyRegistry[name]["strategy"] is not DDPStrategy:
        return name
    init = StrategyRegistry[name]["init_params"]
    return DDPStrategy(**init, gradient_as_bucket_view=not sparse_gradients)


def shard_batches(n_batches: int, rank: int, world: int) -> list[int]:
    """The batch numbers process ``rank`` of ``world`` trains on in an epoch of
    ``n_batches``: every ``world``-th one from ``rank``, padded from the epoch's start so
    that every process takes the same number of steps (a process with fewer would leave
    the others waiting for its gradients)."""
    per_rank = -(-n_batches // world)
    return [(rank + world * step) % n_batches for step in range(per_rank)]


class FitFacts(Callback):
    """What the launching process needs from a fit that ran in other processes (their
    callbacks' state does not come back): epochs trained, the checkpoint's best score, the
    clock. The first process writes them to ``path`` (JSON) when the fit ends."""

    def __init__(self, path: Path, checkpoint: ModelCheckpoint, clock: EpochClock) -> None:
        self.path, self.checkpoint, self.clock = path, checkpoint, clock

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        score = self.checkpoint.best_model_score
        facts = {
            "epochs": trainer.current_epoch,
            "best_model_path": self.checkpoint.best_model_path,
            "best_model_score": None if score is None else float(score),
            "clock": self.clock.state_dict(),
        }
        atomic_write_text(self.path, json.dumps(facts))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through a temporary file renamed onto the checkpoint:
    a process killed while saving (any of a multi-process run's, or a one-process run)
    leaves the previous checkpoint whole, never a truncated one to resume from.
    ``torch.save`` streams into that file: Lightning's own writer serialises the whole
    checkpoint into memory first (``io.BytesIO``), which was a 1M-item DAS run's peak
    (4.4 GB of checkpoint held on top of the model: 20.1 GB)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
