"""Training in two processes (Lightning's ddp_spawn over gloo, on CPU): each process trains
on its share of the batches; the run folder, early stopping and resume behave as in one
process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from recsys.artifacts import RunFolder
from recsys.train.config import parse_run_config
from recsys.train.distributed import AtomicCheckpointIO, lightning_strategy, shard_batches
from recsys.train.runner import train_run


def test_every_batch_is_trained_and_every_process_takes_the_same_number_of_steps():
    for n_batches in (1, 2, 5, 8):
        for world in (1, 2, 3):
            shards = [shard_batches(n_batches, rank, world) for rank in range(world)]
            assert len({len(s) for s in shards}) == 1  # same steps everywhere
            assert set().union(*map(set, shards)) == set(range(n_batches))
            assert len(shards[0]) == -(-n_batches // world)
    assert shard_batches(5, 0, 2) == [0, 2, 4] and shard_batches(5, 1, 2) == [1, 3, 0]


def test_a_checkpoint_streams_to_its_file_without_a_copy_in_memory(tmp_path):
    """Lightning's own writer serialises into ``io.BytesIO`` first (a whole checkpoint held
    in memory beside the model); ours writes through ``torch.save`` into the file, and the
    file reloads to the same state."""
    import tracemalloc

    table = torch.randn(262_144, 64, generator=torch.Generator().manual_seed(0))  # 64 MB
    checkpoint = {"state_dict": {"model.table": table}, "epoch": 3, "optimizer_states": []}
    path = tmp_path / "checkpoints" / "last.ckpt"
    tracemalloc.start()
    try:
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # Python-side buffers only; the 64 MB table is never copied
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["model.table"], table)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint(checkpoint, path, storage_options={})


def test_ddp_strategies_keep_gradients_in_their_buckets_and_others_pass_through():
    strategy = lightning_strategy("ddp_spawn_find_unused_parameters_true")
    assert strategy._start_method == "spawn"
    assert strategy._ddp_kwargs == {"find_unused_parameters": True, "gradient_as_bucket_view": True}
    # a sparse gradient has no bucket to be a view of
    assert not lightning_strategy("ddp_spawn", sparse_gradients=True)._ddp_kwargs[
        "gradient_as_bucket_view"
    ]
    assert lightning_strategy("auto") == "auto"


def raw_config(
    tmp_path: Path, table: Path, name: str, devices: int, batch: int, epochs: int, **model
):
    return {
        "name": name,
        "seed": 7,
        "output_dir": str(tmp_path / "runs"),
        "data": {"dataset": "table", "interactions": {"path": str(table)}, "split": "loo"},
        # the transition block's pair tables: buffers DDP leaves out of its broadcast
        "model": {"kind": "lightgcn", "dim": 16, "layers": 2, "transition_dim": 8, **model},
        "trainer": {
            "max_epochs": epochs, "patience": 20, "lr": 0.01, "progress_bar": False,
            "accelerator": "cpu", "devices": devices, "num_threads": 1,
            "strategy": "ddp_spawn" if devices > 1 else "auto",
            "sampling": {"batch_size": batch},
        },
    }  # fmt: skip


def files(run: RunFolder) -> set[str]:
    return {str(p.relative_to(run.root)) for p in run.root.rglob("*") if p.is_file()}


def test_two_processes_train_like_one_with_their_batches_together(tmp_path, tiny_table):
    one = train_run(parse_run_config(raw_config(tmp_path, tiny_table, "one", 1, 256, 6)))
    two = train_run(parse_run_config(raw_config(tmp_path, tiny_table, "two", 2, 128, 6)))
    assert files(two) == files(one)  # the one-process run folder, nothing more
    a, b = one.metrics(), two.metrics()
    assert a.keys() == b.keys() and a["valid"].keys() == b["valid"].keys()
    assert b["training"]["epochs"] == 6 and len(b["training"]["epoch_seconds"]) == 6
    assert len(b["training"]["valid_seconds"]) == 6
    curves = two.root / "logs" / "metrics.csv"
    assert curves.read_text().count("\n") > 6  # written once, by the first process
    # Two processes of 128 pairs average their gradients: one step of 256 pairs, the
    # batches one process of 256 takes, but other negatives (drawn per batch). The same
    # training up to those draws: valid NDCG@10 within 25% of the one-process run's (on
    # this data the seed alone moves it by up to ~15%).
    assert b["valid"]["ndcg@10"] == pytest.approx(a["valid"]["ndcg@10"], rel=0.25)
    assert b["valid"]["ndcg@10"] > 0.05  # learnt: random ranking scores ~0.01 here


def test_two_processes_with_sparse_updates_train_like_one(tmp_path, tiny_table):
    """Sampled propagation with lazily updated tables in two processes: DDP all-reduces
    the sparse gradients (the rows each process read) over gloo; the run trains as the
    one-process run does, up to the negatives' and neighbourhoods' draws."""
    sparse = {"fanouts": [5, 5], "sparse_updates": True}
    one = train_run(parse_run_config(raw_config(tmp_path, tiny_table, "one", 1, 256, 6, **sparse)))
    two = train_run(parse_run_config(raw_config(tmp_path, tiny_table, "two", 2, 128, 6, **sparse)))
    assert files(two) == files(one)
    a, b = one.metrics()["valid"]["ndcg@10"], two.metrics()["valid"]["ndcg@10"]
    assert b == pytest.approx(a, rel=0.25) and b > 0.05


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_table):
    def command(name: str) -> list[str]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw_config(tmp_path, tiny_table, name, 2, 128, 8)))
        return [sys.executable, "-m", "recsys.cli", "train", "-c", str(path), "--no-progress"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command("ref"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(command("crashy"), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    last = tmp_path / "runs" / "crashy" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both training processes
    proc.wait()
    subprocess.run(command("crashy"), check=True, env=env, capture_output=True)
    ref = json.loads((tmp_path / "runs" / "ref" / "metrics.json").read_text())
    got = json.loads((tmp_path / "runs" / "crashy" / "metrics.json").read_text())
    assert got["valid"] == ref["valid"] and got["test"] == ref["test"]
    assert got["training"]["epochs"] == ref["training"]["epochs"] == 8
    assert got["training"]["resumed"]  # killed after its first checkpoint, not after the end


def test_a_strategy_that_reruns_the_command_is_refused_with_the_one_to_use(tmp_path, tiny_table):
    from recsys.errors import ConfigError

    raw = raw_config(tmp_path, tiny_table, "x", 2, 128, 1)
    for strategy in ("ddp", "ddp_fork", "ddp_find_unused_parameters_true"):
        raw["trainer"]["strategy"] = strategy
        with pytest.raises(ConfigError, match="trainer.strategy.*ddp_spawn"):
            parse_run_config(raw)
    raw["trainer"]["strategy"] = "ddp_spawn_find_unused_parameters_true"
    assert parse_run_config(raw).trainer.strategy.startswith("ddp_spawn")


class _LossOf(torch.nn.Module):
    """DDP hooks its all-reduce into ``forward``: a model's training loss as one."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.loss(batch)["loss"]


def _sparse_ddp_step(rank: int, world: int, store: str) -> None:
    """One process of the test below: its own batch and neighbourhood draws."""
    import numpy as np
    import torch.distributed as dist
    from test_sampling import power_law_graph
    from torch.nn.parallel import DistributedDataParallel

    from recsys.models.lightgcn import LightGCN, LightGCNConfig
    from recsys.train.distributed import declare_sparse_tables

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    graph = power_law_graph(n_users=200, n_items=120, seed=5)
    config = LightGCNConfig(dim=8, layers=2, fanouts=[2, 2], sparse_updates=True, transition_dim=4)
    take = slice(20 * rank, 20 * rank + 20)
    batch = {
        "users": torch.as_tensor(graph.train_users[take]),
        "pos_items": torch.as_tensor(graph.train_items[take]),
        "neg_items": torch.as_tensor(np.random.default_rng(rank).integers(0, 120, size=(20, 1))),
    }
    models = []
    for _ in range(2):  # the same weights: one for DDP, one for the reference
        torch.manual_seed(0)
        models.append(LightGCN(config, graph))
    model, reference = models
    tables = model.sparse_parameters()
    declare_sparse_tables(model, tables)
    ddp = DistributedDataParallel(_LossOf(model), gradient_as_bucket_view=False)
    torch.manual_seed(100 + rank)  # the same draws on both sides
    ddp(batch).backward()
    torch.manual_seed(100 + rank)
    reference.loss(batch)["loss"].backward()
    for got, ref in zip(tables, reference.sparse_parameters(), strict=True):
        assert got.grad.is_sparse and ref.grad.is_sparse
        mean = ref.grad.to_dense()
        dist.all_reduce(mean)  # this process's dense gradient, summed over both
        torch.testing.assert_close(got.grad.to_dense(), mean / world)
        assert not torch.equal(mean, ref.grad.to_dense() * world)  # the draws differ
    dist.barrier()  # both processes past every collective before either leaves
    # Leave without tearing gloo down: the reducer's last reference to the process group
    # joins gloo's worker threads while this thread holds the GIL, and a worker still
    # releasing a finished all-reduce's tensors waits for that GIL (a teardown deadlock
    # that hung CI once); a spawned test worker has nothing else to clean up.
    os._exit(0)


def test_ddp_all_reduces_the_sparse_tables_rows_to_the_mean_gradient(tmp_path):
    """Two processes, each its own batch: DDP's gradient of every lazily updated table is
    the mean of the two processes' own gradients (each checked against a reference model
    that ran the same draws without DDP), kept sparse."""
    import torch.multiprocessing as mp

    mp.spawn(_sparse_ddp_step, args=(2, str(tmp_path / "store")), nprocs=2)


def test_every_lazily_updated_table_is_declared_to_ddp_as_sparse():
    """DDP picks sparse all-reduces by module: every table DAS and LightGCN update lazily
    sits in an embedding module that is now marked sparse (nothing else is); a lazily
    updated parameter outside an embedding module is named, not silently all-reduced dense."""
    from test_sampling import power_law_graph
    from test_semantic_models import CONTENT_CONCAT, small_das, synthetic_content_graph

    from recsys.models import build_model
    from recsys.models.lightgcn import LightGCN, LightGCNConfig
    from recsys.train.distributed import declare_sparse_tables

    graph, _ = synthetic_content_graph()
    settings = {"fanouts": [3, 3], "sparse_updates": True, "transition_dim": 4,
                "code_embeddings": True}  # fmt: skip
    das = build_model(small_das(**CONTENT_CONCAT, **settings), graph)
    config = LightGCNConfig(dim=8, layers=2, fanouts=[2, 2], sparse_updates=True, transition_dim=4)
    lightgcn = LightGCN(config, power_law_graph())
    for model in (das, lightgcn):
        tables = model.sparse_parameters()
        declare_sparse_tables(model, tables)
        embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
        marked = [m.weight for m in embeddings if m.sparse]
        assert {id(p) for p in marked} == {id(p) for p in tables} and len(tables) >= 3
    stray = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"not held by an embedding module: \['weight'\]"):
        declare_sparse_tables(stray, [stray.weight])
