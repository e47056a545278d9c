"""Training in several processes (Lightning's ``ddp`` / ``ddp_spawn`` strategies).

Each process trains on its share of every epoch's batches (:class:`PairBatches` takes every
``world``-th one); Lightning averages the gradients, so an optimiser step sees ``world``
batches, and every process ranks the whole validation set itself (the same weights give the
same numbers: no gather, no disagreement on when to stop). Checkpoints and logs are written
by the first process only, and so is the run folder, as in a one-process run.

``ddp_spawn``: the launching process starts the others for each fit and writes the run
folder afterwards. ``ddp``: every process runs the whole run (``recsys train``), the first
(:func:`is_leader`) alone writing; Lightning's launcher starts the others once the first has
prepared the run folder (:class:`RunDDPStrategy`: as ``recsys train -c RUN/config.yaml``),
or another launcher starts them all at once (torchrun, srun, one command per node:
:func:`started_together`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
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


def is_leader() -> bool:
    """Whether this process is a run's first (global rank 0), as its launcher says before
    Lightning starts: torchrun's ``RANK``, srun's ``SLURM_PROCID``, Lightning's
    ``NODE_RANK`` and ``LOCAL_RANK`` (its ``ddp`` launcher's other processes, a node's
    command); a process launched alone is. Only the first writes the run folder."""
    names = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")
    return all(int(os.environ.get(name) or 0) == 0 for name in names)


def started_together(num_nodes: int) -> bool:
    """Whether a run's processes were all started at once by a launcher of their own
    (torchrun, srun, one command per node), rather than by the first one once it had
    prepared the run folder (Lightning's ``ddp`` launcher, ``ddp_spawn``)."""
    torchrun = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE") or 1) > 1
    return num_nodes > 1 or torchrun or int(os.environ.get("SLURM_NTASKS") or 1) > 1


LAUNCHER_PID = "RECSYS_LAUNCHER_PID"  # set in the processes RunLauncher starts


class RunLauncher(_SubprocessScriptLauncher):
    """Lightning's ``ddp`` launcher, whose other processes run ``command`` (the run's own
    ``recsys train -c RUN/config.yaml``) instead of this process's command line, which is
    pytest's, a notebook's or a benchmark's when training is called from Python. The
    environment they get is Lightning's."""

    def __init__(self, environment, num_processes: int, num_nodes: int, command: list[str]):
        super().__init__(environment, num_processes, num_nodes)
        self.command = command

    def _call_children_scripts(self) -> None:
        self._check_can_spawn_children()
        cluster = self.cluster_environment
        os.environ.update(  # as Lightning's launcher sets them, for this process too
            MASTER_ADDR=cluster.main_address,
            MASTER_PORT=str(cluster.main_port),
            NODE_RANK=str(cluster.node_rank()),
            LOCAL_RANK=str(cluster.local_rank()),
            WORLD_SIZE=str(self.num_processes * self.num_nodes),
        )
        env = {**os.environ, LAUNCHER_PID: str(os.getpid())}
        self.procs = [
            subprocess.Popen(self.command, env={**env, "LOCAL_RANK": str(local_rank)})
            for local_rank in range(1, self.num_processes)
        ]


def follow_launcher(poll_seconds: float = 1.0) -> None:
    """In a process :class:`RunLauncher` started: exit as soon as the process that started
    it is gone (killed), instead of waiting in a collective for it until gloo's timeout
    (30 minutes, holding a whole model's memory)."""
    launcher = int(os.environ.get(LAUNCHER_PID) or 0)
    if not launcher or launcher == os.getpid():
        return

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="follow-launcher", daemon=True).start()


class RunDDPStrategy(DDPStrategy):
    """``ddp`` whose other processes are started as ``command`` (:class:`RunLauncher`)."""

    def __init__(self, command: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.command = command

    def _configure_launcher(self) -> None:
        if self._start_method != "popen":
            return super()._configure_launcher()
        assert self.cluster_environment is not None
        self._launcher = RunLauncher(
            self.cluster_environment, self.num_processes, self.num_nodes, self.command
        )


def train_command(config_path: Path) -> list[str]:
    """What the other processes of a ``ddp`` run execute: the run's resolved config."""
    return [sys.executable, "-m", "recsys.cli", "train", "-c", str(config_path)]


def starts_by_command(name: str) -> bool:
    """Whether Lightning's strategy ``name`` starts its other processes as commands that
    run the whole run again (``ddp`` and its variants), not as children of this one."""
    entry = StrategyRegistry[name] if name in StrategyRegistry else None  # .get() builds one
    if entry is None or entry["strategy"] is not DDPStrategy:
        return False
    return entry["init_params"].get("start_method", "popen") == "popen"


def lightning_strategy(
    name: str, sparse_gradients: bool = False, config_path: Path | None = None
) -> str | DDPStrategy:
    """Lightning's strategy called ``name``; a DDP one with the gradients stored in their
    all-reduce buckets (``gradient_as_bucket_view``: no second copy of every gradient,
    which the embedding tables make as large as the model), except with
    ``sparse_gradients``: a sparse gradient has no bucket to live in (the reducer aborts).
    ``ddp`` (and its variants started by command) starts its other processes as
    ``recsys train -c config_path`` (:class:`RunDDPStrategy`)."""
    if name not in StrategyRegistry or StrategyRegistry[name]["strategy"] is not DDPStrategy:
        return name
    init = dict(StrategyRegistry[name]["init_params"], gradient_as_bucket_view=not sparse_gradients)
    if not starts_by_command(name):
        return DDPStrategy(**init)
    if config_path is None:
        raise ValueError(f"strategy {name!r} starts processes from a run's config_path")
    return RunDDPStrategy(train_command(config_path), **init)


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
