"""Training speed side by side with RecBole: one run, one after the other, same threads.

    python bench/speed.py --dataset amazon-beauty --split ratio-811 --epochs 4 --threads 1 \\
        --peer-python bench/peers/.venv/bin/python > speed.json

Trains, for a fixed number of epochs (no early stopping, no refit) and the same batch size
and embedding size: RecBole's LightGCN and BPR (``bench/peers/recbole_speed.py`` in the peer
venv of ``bench/peers/README.md``, on this project's exact split) and this project's
LightGCN, LightGCN + the transition block, two-stage semantic IDs and DAS (their selected
Beauty configs, ``configs/bench/``, with those settings overridden). Each model is its own
process. Prints JSON per model: seconds per training epoch (the median of the epochs after
the first), each evaluation's seconds (separate from training), seconds from the start of
training to the end of the first evaluation, peak RSS, and the ratio of the epoch time to
RecBole's LightGCN. Without ``--peer-python`` only this project's models run.

``--repeat N`` runs the whole list N times, interleaved (round 1: every model, then round 2
...), so that a slow spell of a shared or virtual machine falls on every model alike: each
model's ``seconds_per_epoch`` is then the median over rounds, its ratio the median of the
per-round ratios (``round_ratios``), each round's own numbers under ``rounds``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> (config, extra overrides): this project's models.
OURS = {
    "lightgcn": ("configs/bench/lightgcn-beauty-ratio811.yaml", []),
    "lightgcn+transitions": (
        "configs/bench/lightgcn-beauty-ratio811.yaml",
        ["model.transition_dim=64", "model.transition_decay=0.5"],
    ),
    "two-stage": ("configs/bench/two-stage-beauty.yaml", []),
    "das": ("configs/bench/das-beauty-ratio811.yaml", []),
    # the default config a user runs first (issue 28), validated every epoch here
    "das-default": (
        "configs/das.yaml",
        ["trainer.check_val_every_n_epoch=1", "trainer.patience_steps=null"],
    ),
}
PEERS = {"recbole-lightgcn": "LightGCN", "recbole-bpr": "BPR"}


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    """``(exit code, peak RSS MiB, stdout)`` of one child process. The peak is the child's
    own ``VmHWM`` (its address space's high-water mark, polled until it exits): the kernel's
    rusage of a child also counts the parent's memory at the fork."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
        peak_kb = 0
        while proc.poll() is None:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
                peak_kb = max(peak_kb, int(line.split()[1]))
            except (OSError, StopIteration, ValueError):
                pass  # exiting, or a zombie
            time.sleep(0.05)
        out.seek(0)
        return proc.returncode, peak_kb / 1024, out.read().decode()


def write_split(dataset: str, split: str, folder: Path) -> dict[str, int]:
    """train/valid/test.tsv (user_id, item_id) of this project's split, for the peer."""
    import numpy as np

    from recsys.data.dataset import DataConfig, load_dataset

    data = load_dataset(DataConfig(dataset=dataset, split=split))
    users, items = data.user_map.ids.astype(str), data.item_map.ids.astype(str)
    for label, name in enumerate(("train", "valid", "test")):
        keep = data.labels == label
        rows = np.stack([users[data.users[keep]], items[data.items[keep]]], axis=1)
        lines = ["user_id\titem_id", *("\t".join(r) for r in rows)]
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    n_train = int((data.labels == 0).sum())
    n_valid_users = len(np.unique(data.users[data.labels == 1]))
    return {"n_users": data.n_users, "n_items": data.n_items, "n_train": n_train,
            "n_valid_users": n_valid_users}  # fmt: skip


def summarise(epochs: list[float], evals: list[float]) -> dict:
    after_first = epochs[1:] or epochs
    return {
        "epoch_seconds": epochs,
        "seconds_per_epoch": round(statistics.median(after_first), 3) if after_first else None,
        "eval_seconds": evals,
        "first_eval_seconds_from_start": round(epochs[0] + evals[0], 3)
        if epochs and evals
        else None,
    }


def ours(name: str, args, out_dir: Path, env: dict[str, str]) -> dict:
    config, extra = OURS[name]
    overrides = [
        f"name=speed-{name}", f"output_dir={out_dir}", f"data.dataset={args.dataset}",
        f"data.split={args.split}", f"trainer.max_epochs={args.epochs}",
        f"trainer.patience={args.epochs}", "trainer.min_steps=null",
        "trainer.refit=false", f"trainer.num_threads={args.threads}",
        f"trainer.sampling.batch_size={args.batch_size}", f"model.dim={args.dim}", *extra,
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "recsys.cli", "train", "-c", config, *overrides, "--fresh",
           "--no-progress", "--brief"]  # fmt: skip
    start = time.perf_counter()
    code, rss, _ = run_measured(cmd, env)
    if code != 0:
        return {"model": name, "error": f"exit {code}"}
    metrics = json.loads((out_dir / f"speed-{name}" / "metrics.json").read_text())
    training = metrics["training"]
    return {
        "model": name,
        "library": "recsys",
        **summarise(training["epoch_seconds"], training["valid_seconds"]),
        "process_seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(rss, 1),
        "valid_ndcg@10": metrics["valid"]["ndcg@10"],
    }


def peer(name: str, args, split_dir: Path, env: dict[str, str]) -> dict:
    cmd = [args.peer_python, str(REPO / "bench" / "peers" / "recbole_speed.py"),
           "--split-dir", str(split_dir), "--model", PEERS[name], "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--dim", str(args.dim),
           "--threads", str(args.threads)]  # fmt: skip
    start = time.perf_counter()
    code, rss, out = run_measured(cmd, env)
    if code != 0:
        return {"model": name, "error": f"exit {code}"}
    result = json.loads(out.strip().splitlines()[-1])
    return {
        "model": name,
        "library": f"recbole {result.get('version')}",
        **summarise(result["epoch_seconds"], result["eval_seconds"]),
        "process_seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(rss, 1),
        "valid_ndcg@10": result.get("valid_ndcg@10"),
    }


def combine_rounds(rounds: list[list[dict]], base: str = "recbole-lightgcn") -> list[dict]:
    """Per-round results (each a list of per-model results, the same models in the same
    order) → one result per model: the first round's fields, ``seconds_per_epoch`` the
    median over the rounds, ``round_ratios`` each round's epoch time over ``base``'s in
    the same round and ``epoch_ratio_to_recbole_lightgcn`` their median."""
    combined = []
    for at, first in enumerate(rounds[0]):
        mine = [r[at] for r in rounds]
        result = dict(first)
        epochs = [r["seconds_per_epoch"] for r in mine if r.get("seconds_per_epoch")]
        if epochs:
            result["seconds_per_epoch"] = round(statistics.median(epochs), 3)
        ratios = []
        for r, this in zip(rounds, mine, strict=True):
            ref = next((x for x in r if x["model"] == base and x.get("seconds_per_epoch")), None)
            if ref and this.get("seconds_per_epoch"):
                ratios.append(round(this["seconds_per_epoch"] / ref["seconds_per_epoch"], 3))
        if ratios:
            result["epoch_ratio_to_recbole_lightgcn"] = round(statistics.median(ratios), 3)
            if len(rounds) > 1:
                result["round_ratios"] = ratios
        if len(rounds) > 1:
            result["rounds"] = mine
        combined.append(result)
    return combined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--split", default="ratio-811")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--peer-python", help="the RecBole venv's python (bench/peers/README.md)")
    parser.add_argument("--models", default=",".join([*PEERS, *OURS]))
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds (median)")
    args = parser.parse_args()
    names = args.models.split(",")
    unknown = [n for n in names if n not in OURS and n not in PEERS]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; known: {[*PEERS, *OURS]}")
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "OPENBLAS_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1"}  # fmt: skip
    if not args.peer_python:
        names = [n for n in names if n not in PEERS]
    rounds = []
    with tempfile.TemporaryDirectory(prefix="recsys-speed-") as tmp:
        tmp_path = Path(tmp)
        split_info = write_split(args.dataset, args.split, tmp_path)
        for _ in range(args.repeat):
            results = []
            for name in names:
                if name in PEERS:
                    results.append(peer(name, args, tmp_path, env))
                else:
                    results.append(ours(name, args, tmp_path / "runs", env))
                print(json.dumps(results[-1]), file=sys.stderr)
            rounds.append(results)
    results = combine_rounds(rounds)
    from recsys.train.stopping import validation_interval

    # trainer.check_val_every_n_epoch: auto on this data (the runs above validate every
    # epoch, to time each validation): validation's share of training at that interval
    interval = validation_interval(
        "auto", split_info["n_valid_users"], split_info["n_items"], split_info["n_train"],
        10**6,
    )  # fmt: skip
    for r in results:
        if r.get("seconds_per_epoch") and r.get("eval_seconds"):
            r["eval_share_of_epoch"] = round(
                statistics.median(r["eval_seconds"]) / r["seconds_per_epoch"], 3
            )
            if r.get("library") == "recsys":
                r["eval_share_at_auto_interval"] = round(r["eval_share_of_epoch"] / interval, 3)
    print(json.dumps({
        "dataset": args.dataset, "split": args.split, **split_info, "epochs": args.epochs,
        "threads": args.threads, "batch_size": args.batch_size, "dim": args.dim,
        "repeat": args.repeat, "auto_validation_interval": interval,
        "machine": {"cores": os.cpu_count()}, "models": results,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
