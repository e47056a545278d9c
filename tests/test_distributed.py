"""Training in two processes (Lightning's ddp and ddp_spawn over gloo, on CPU): each process
trains on its share of the batches; the run folder, early stopping and resume behave as in
one process; processes started by Lightning, by torchrun or one command per node train the
same weights."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
    tmp_path: Path,
    table: Path,
    name: str,
    devices: int,
    batch: int,
    epochs: int,
    strategy: str = "ddp_spawn",
    **model,
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
            "strategy": strategy if devices > 1 else "auto",
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


def command(tmp_path: Path, raw: dict) -> list[str]:
    """``recsys train`` of config ``raw`` (written beside the runs)."""
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return [sys.executable, "-m", "recsys.cli", "train", "-c", str(path), "--no-progress"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SPARSE = {"fanouts": [5, 5], "sparse_updates": True}  # draws from the global generator


def embeddings(run: Path) -> list[np.ndarray]:
    return list(RunFolder(run).embeddings())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_sparse_updates_train_like_one(tmp_path, tiny_table):
    """Sampled propagation with lazily updated tables in two processes: DDP all-reduces
    the sparse gradients (the rows each process read) over gloo; the run trains as the
    one-process run does, up to the negatives' and neighbourhoods' draws. Whatever starts
    the two processes, they train the same weights to the bit: ``ddp_spawn``; ``ddp``,
    whose launcher starts the second as a command (``recsys train -c RUN/config.yaml``);
    torchrun, which starts both at once; two "nodes" of one process each (``num_nodes:
    2``, one command per node with its ``NODE_RANK``, as on two machines). Only the first
    process writes the run folder; ``--fresh``, which one process would act on while
    another reads the folder, is refused where they start together."""
    def refitted(raw: dict) -> dict:  # the refit's fit needs every process too
        return {**raw, "trainer": {**raw["trainer"], "refit": True}}

    def trained(name: str, devices: int, batch: int) -> RunFolder:
        raw = raw_config(tmp_path, tiny_table, name, devices, batch, 6, **SPARSE)
        return train_run(parse_run_config(refitted(raw)))

    one, two = trained("one", 1, 256), trained("two", 2, 128)
    assert files(two) == files(one) and "checkpoints/refit/last.ckpt" in files(two)
    a, b = one.metrics()["valid"]["ndcg@10"], two.metrics()["valid"]["ndcg@10"]
    assert b == pytest.approx(a, rel=0.25) and b > 0.05

    launched = refitted(raw_config(tmp_path, tiny_table, "ddp", 2, 128, 6, "ddp", **SPARSE))
    printed = subprocess.run(command(tmp_path, launched), env=ENV, capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert printed.stdout.count("run folder:") == 1  # the first process's report only

    torchrun = {**launched, "name": "torchrun"}
    together = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", *command(tmp_path, torchrun)[2:]]  # fmt: skip
    subprocess.run(together, env=ENV, check=True, capture_output=True)

    nodes = {**launched, "name": "nodes"}
    nodes["trainer"] = {**launched["trainer"], "devices": 1, "num_nodes": 2}
    env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    node = [
        subprocess.Popen(command(tmp_path, nodes), env={**env, "NODE_RANK": str(rank)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (1, 0)
    ]  # fmt: skip
    printed = [process.communicate(timeout=600) for process in node]
    assert [process.returncode for process in node] == [0, 0], printed[1][1][-2000:]
    assert printed[0][0] == "" and "run folder:" in printed[1][0]  # node 1 writes nothing

    for name in ("ddp", "torchrun", "nodes"):
        run = RunFolder(tmp_path / "runs" / name)
        assert files(run) == files(two)
        for got, want in zip(run.embeddings(), two.embeddings(), strict=True):
            np.testing.assert_array_equal(got, want)
        assert run.metrics()["valid"] == two.metrics()["valid"]
        assert run.metrics()["test"] == two.metrics()["test"]  # the refit's model
    fresh = subprocess.run([*together, "--fresh"], env=ENV, capture_output=True, text=True)
    assert fresh.returncode != 0 and "--fresh with processes started together" in fresh.stderr
    assert (tmp_path / "runs" / "torchrun" / "manifest.json").exists()  # nothing deleted


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_table):
    """SIGKILL after the first checkpoint, to every process of a two-process run or (ddp)
    to the first alone, whose second process then leaves instead of waiting for it; the
    same command again resumes to exactly the uninterrupted run's numbers, under either
    strategy (they train the same weights: the test above)."""

    def run(name: str, strategy: str) -> list[str]:
        raw = raw_config(tmp_path, tiny_table, name, 2, 128, 6, strategy, **SPARSE)
        return command(tmp_path, raw)

    subprocess.run(run("ref", "ddp"), check=True, env=ENV, capture_output=True)
    ref = json.loads((tmp_path / "runs" / "ref" / "metrics.json").read_text())
    for strategy in ("ddp_spawn", "ddp"):
        name = f"crashy-{strategy}"
        proc = subprocess.Popen(run(name, strategy), env=ENV, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        last = tmp_path / "runs" / name / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 300
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if strategy == "ddp_spawn":
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both training processes
            proc.wait()
        else:  # the first process alone: the second, left waiting for it, ends too
            second = children_of(proc.pid)
            assert len(second) == 1
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            deadline = time.monotonic() + 30
            while Path(f"/proc/{second[0]}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not Path(f"/proc/{second[0]}").exists()
        subprocess.run(run(name, strategy), check=True, env=ENV, capture_output=True)
        got = json.loads((tmp_path / "runs" / name / "metrics.json").read_text())
        assert got["valid"] == ref["valid"] and got["test"] == ref["test"], strategy
        assert got["training"]["epochs"] == ref["training"]["epochs"] == 6
        assert got["training"]["resumed"]  # killed after its first checkpoint, not after the end


def test_strategies_that_fork_a_running_openmp_pool_are_refused(tmp_path, tiny_table):
    from recsys.errors import ConfigError

    raw = raw_config(tmp_path, tiny_table, "x", 2, 128, 1)
    for strategy in ("ddp_fork", "ddp_notebook_find_unused_parameters_true"):
        raw["trainer"]["strategy"] = strategy
        with pytest.raises(ConfigError, match="trainer.strategy.*'ddp' or 'ddp_spawn'"):
            parse_run_config(raw)
    for strategy in ("ddp", "ddp_find_unused_parameters_true", "ddp_spawn"):
        raw["trainer"]["strategy"] = strategy
        assert parse_run_config(raw).trainer.strategy == strategy


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


def _random_state_round_trip(rank: int, world: int, store: str) -> None:
    """One process of the test below."""
    import torch.distributed as dist

    from recsys.train.rng import GlobalRandomState

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(rank)  # each process its own stream, as each draws for its batches
    torch.rand(10 + rank)
    saved = GlobalRandomState().state_dict()  # every process takes part (Lightning's way)
    expected = torch.rand(5)  # what this process draws next
    assert len(saved["ranks"]) == world
    torch.manual_seed(1234)  # a resumed process starts elsewhere
    GlobalRandomState().load_state_dict(saved)
    assert torch.equal(torch.rand(5), expected)
    dist.barrier()
    os._exit(0)  # as _sparse_ddp_step: no gloo teardown


def test_each_process_resumes_its_own_random_draws(tmp_path):
    """A checkpoint, written by the first process, holds every process's generator state,
    and each restores its own: a second process restoring the first's would draw the
    first's neighbourhoods after a resume, not those of an uninterrupted run."""
    import torch.multiprocessing as mp

    mp.spawn(_random_state_round_trip, args=(2, str(tmp_path / "store")), nprocs=2)


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
