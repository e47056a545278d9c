"""Where a training step's time goes in one process against several: the batch, the
forward, the backward (with DDP's gradient all-reduce) and the optimiser, as JSON.

    python bench/ddp_step.py /tmp/scale/configs/scale-lightgcn-sampled-100000.yaml \\
        --devices 1,2 --steps 40

Builds the config's model as ``bench/profile_step.py`` does, wraps it in DDP as training
does (constant buffers left out of the broadcast, lazily updated tables declared sparse,
dense gradients in their buckets: ``recsys.train.distributed``), spawns the processes over
gloo with one thread each, and times ``--steps`` steps after ``--warmup``: each process
takes its own share of the batches as in training. Seconds are per step, rank 0's. The
speed-up of N processes is ``N × step(1) / step(N)`` (each of N processes trains a batch a
step). ``--separate-comm`` trains without DDP's wrapper: the backward alone, a barrier
(``wait``: the other process's lag), then every gradient all-reduced and averaged by hand as
DDP's reducer would (``comm``; a sparse one through gloo's sparse all-reduce), so the
exchange's seconds stand apart from the arithmetic's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--devices", default="1,2")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--separate-comm", action="store_true")
    parser.add_argument("overrides", nargs="*", help="more key=value config overrides")
    args = parser.parse_intermixed_args()  # overrides before or after the options
    runs = []
    for world in (int(d) for d in args.devices.split(",")):
        with tempfile.TemporaryDirectory(prefix="recsys-ddp-step-") as tmp:
            out = Path(tmp) / "rank0.json"
            mp.spawn(_process, args=(world, _free_port(), args, str(out)), nprocs=world)
            runs.append(json.loads(out.read_text()))
    base = runs[0]["step"] / runs[0]["devices"]
    for run in runs:
        run["speedup"] = round(run["devices"] * base / run["step"], 3)
    print(json.dumps({"config": args.config, "threads_per_process": 1,
                      "separate_comm": args.separate_comm, "runs": runs}, indent=2))  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    from profile_step import build_training

    from recsys.allocator import keep_large_blocks
    from recsys.train.datamodule import PairBatches

    keep_large_blocks()  # as every training process (recsys.train.distributed.ProcessSetup)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    config, model, optimizer, data = build_training(args.config, args.overrides)
    net = _wrapped(model) if world > 1 and not args.separate_comm else None
    batches = iter(PairBatches(data.users, data.items, data.sampler, config.trainer.sampling,
                               config.seed * 100003, rank, world))  # fmt: skip
    parts = dict.fromkeys(("batch", "forward", "backward", "wait", "comm", "optimizer"), 0.0)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            parts = dict.fromkeys(parts, 0.0)
        start = time.perf_counter()
        batch = next(batches)
        fetched = time.perf_counter()
        loss = net(batch) if net is not None else model.loss(batch)["loss"]
        forward = time.perf_counter()
        optimizer.zero_grad()
        if world > 1 and args.separate_comm:
            loss.backward()
            backward = time.perf_counter()
            dist.barrier()
            waited = time.perf_counter()
            _all_reduce_mean(model, world)
        else:
            loss.backward()
            backward = waited = time.perf_counter()
        reduced = time.perf_counter()
        optimizer.step()
        done = time.perf_counter()
        marks = (start, fetched, forward, backward, waited, reduced, done)
        for name, begin, end in zip(parts, marks, marks[1:], strict=False):
            parts[name] += end - begin
    if rank == 0:
        per_step = {name: round(seconds / args.steps, 4) for name, seconds in parts.items()}
        sparse = bool(model.sparse_parameters())
        Path(out).write_text(json.dumps({
            "devices": world, "sparse_tables": sparse, "steps": args.steps, **per_step,
            "step": round(sum(parts.values()) / args.steps, 4), "weights": _digest(model),
        }))  # fmt: skip
    if world > 1:
        dist.destroy_process_group()


def _digest(model: torch.nn.Module) -> str:
    """The trained weights' SHA-256 (every process holds the same ones)."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        digest.update(name.encode() + param.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class _Loss(torch.nn.Module):
    """The model's training loss as a module's forward, which DDP wraps."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model.loss(batch)["loss"]


def _wrapped(model) -> torch.nn.parallel.DistributedDataParallel:
    """DDP around the model's loss as training sets it up."""
    from recsys.train.distributed import declare_sparse_tables, skip_constant_buffers

    tables = model.sparse_parameters()
    declare_sparse_tables(model, tables)
    loss = _Loss(model)
    skip_constant_buffers(loss)
    return torch.nn.parallel.DistributedDataParallel(loss, gradient_as_bucket_view=not tables)


def _all_reduce_mean(model: torch.nn.Module, world: int) -> None:
    """Every gradient summed over the processes and divided by their number, as DDP's
    reducer does (a sparse one through gloo's sparse all-reduce)."""
    for param in model.parameters():
        if param.grad is None:
            continue
        if param.grad.is_sparse:
            work = dist.all_reduce(param.grad, async_op=True)
            work.wait()
            param.grad = work.result()[0].div_(world)
        else:
            dist.all_reduce(param.grad)
            param.grad.div_(world)


if __name__ == "__main__":
    main()
