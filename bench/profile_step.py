"""Where a training epoch's time goes: the top operators of one epoch, as JSON.

    python bench/profile_step.py configs/bench/lightgcn-beauty-ratio811.yaml --threads 1 \\
        --batch-size 8192 --dim 64 --top 10

Builds the config's model on its dataset (the data and feature caches as ``recsys train``
uses them), then trains ``--epochs`` epochs the way the Lightning module does (the same
batches, deterministic algorithms, the module's optimiser), without Lightning itself or
validation: the model's own cost. The last epoch runs under ``torch.profiler``; prints the
epochs' seconds and the ``--top`` operators by self CPU time (share of the profiled epoch,
calls). Run it from the commit before a change and after it for a before/after table.
Large freed blocks stay in the heap as in training (:mod:`recsys.allocator`;
``--glibc-default`` leaves glibc's handling as it is, for a before/after of that).

``--timer dispatch`` times each aten operator (forward and backward) by the wall clock
around it inside a ``TorchDispatchMode`` instead: ``torch.profiler`` charges its own
overhead to the large operators (it showed a 0.9 ms ``(U+I, 64)`` add at 19 ms). Operators
are keyed by name and first input's shape; work outside aten (scipy's kernels, Python)
is not in that table: ``op_seconds`` against ``profiled_epoch_seconds`` shows how much.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--epochs", type=int, default=3, help="the last one is profiled")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--max-steps", type=int, help="steps an epoch at most (large data)")
    parser.add_argument("--timer", choices=["profiler", "dispatch"], default="profiler")
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's large freed blocks unmapped (training keeps them: recsys.allocator)",
    )
    parser.add_argument("overrides", nargs="*", help="more key=value config overrides")
    args = parser.parse_args()
    from recsys.allocator import keep_large_blocks

    blocks_kept = False if args.glibc_default else keep_large_blocks()  # as train_run
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # as trainer.deterministic (the default)

    from recsys.train.datamodule import PairBatches

    config, model, optimizer, data = build_training(
        args.config,
        [f"trainer.sampling.batch_size={args.batch_size}", f"model.dim={args.dim}"]
        + args.overrides,
    )
    users = data.users

    def epoch(index: int) -> float:
        model.on_train_epoch_start(index)
        start = time.perf_counter()
        batches = PairBatches(data.users, data.items, data.sampler, config.trainer.sampling,
                              config.seed * 100003 + index)  # fmt: skip
        for step, batch in enumerate(batches):
            if args.max_steps is not None and step >= args.max_steps:
                break
            loss = model.loss(batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.after_epoch_steps()
        return time.perf_counter() - start

    seconds = [round(epoch(i), 3) for i in range(args.epochs - 1)]
    if args.timer == "dispatch":
        with OpTimer() as timer:
            seconds.append(round(epoch(args.epochs - 1), 3))
        total = sum(t for t, _ in timer.ops.values())
        top = sorted(timer.ops.items(), key=lambda kv: kv[1][0], reverse=True)[: args.top]
        ops = [
            {"op": name, "shape": list(shape), "self_seconds": round(t, 4),
             "share_of_ops": round(t / total, 3), "calls": calls}
            for (name, shape), (t, calls) in top
        ]  # fmt: skip
        extra = {"op_seconds": round(total, 3), "profiled_epoch_seconds": seconds[-1]}
    else:
        with torch.profiler.profile() as profiler:
            seconds.append(round(epoch(args.epochs - 1), 3))
        events = profiler.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
        ops = [
            {"op": e.key, "self_seconds": round(e.self_cpu_time_total / 1e6, 3),
             "share": round(e.self_cpu_time_total / total, 3), "calls": e.count}
            for e in top
        ]  # fmt: skip
        extra = {}
    print(json.dumps({
        "config": args.config, "threads": args.threads, "batch_size": args.batch_size,
        "large_blocks_kept": blocks_kept,
        "dim": args.dim, "steps_per_epoch": -(-len(users) // args.batch_size),
        "epoch_seconds": seconds, "timer": args.timer, **extra, "top_ops": ops,
    }, indent=2))  # fmt: skip


def build_training(config_path: str, overrides: list[str]):
    """The config's model on its dataset (the data and feature caches as ``recsys train``
    uses them), its optimiser as the Lightning module configures it, and the training
    pairs' data module: ``(config, model, optimizer, data)``."""
    from recsys.data.dataset import load_dataset
    from recsys.data.splits import TRAIN
    from recsys.models import TrainingGraph, build_model
    from recsys.models.base import model_spec
    from recsys.train import runner
    from recsys.train.config import load_run_config
    from recsys.train.datamodule import InteractionDataModule
    from recsys.train.module import RecommenderModule

    config = load_run_config(config_path, overrides)
    dataset = load_dataset(config.data)
    users, items = dataset.pairs(TRAIN)
    graph = TrainingGraph(dataset.n_users, dataset.n_items, users, items)
    spec = model_spec(config.model.kind)
    if spec.build.needs_item_features:
        graph.item_features, graph.features_config = runner.item_features(dataset, config)
    if spec.build.needs_user_features:
        graph.user_features = runner.user_features(dataset)
    torch.manual_seed(config.seed)
    model = build_model(config.model, graph)
    module = RecommenderModule(model, config.trainer.lr, config.trainer.weight_decay,
                               None, None, None, (), 1)  # fmt: skip
    optimizer = module.configure_optimizers()
    data = InteractionDataModule(users, items, dataset.n_items, config.trainer.sampling, 0)
    return config, model, optimizer, data


class OpTimer(TorchDispatchMode):
    """Wall-clock seconds and calls per (aten operator, first tensor input's shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[tuple[str, tuple[int, ...]], list] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        elapsed = time.perf_counter() - start
        flat = [x for a in args for x in (a if isinstance(a, (list, tuple)) else [a])]
        first = next((a for a in flat if isinstance(a, torch.Tensor)), None)  # cat: a list
        shape = tuple(first.shape) if first is not None else ()
        entry = self.ops.setdefault((str(func.overloadpacket.__name__), shape), [0.0, 0])
        entry[0] += elapsed
        entry[1] += 1
        return out


if __name__ == "__main__":
    main()
