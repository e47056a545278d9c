"""Training throughput in one process against several (Lightning's ddp_spawn or ddp over
gloo).

    python bench/ddp_speed.py --config configs/bench/lightgcn-beauty-ratio811.yaml \\
        --devices 1,2 --epochs 4 --repeat 3 [--strategy ddp] > ddp.json

Trains the config for a fixed number of epochs (no early stopping, no refit) once per
``--devices`` value and round, one thread per process, one run after the other, and prints
JSON per run: training samples per second (training pairs / the median epoch after the
first; validation excluded), the epoch seconds, and the speed-up over its round's first
device count; then the median speed-up of each device count over the ``--repeat`` rounds.
Each process of an N-process run takes its share of every epoch's batches
(``recsys.train.distributed``), so an epoch is one pass over the training pairs whatever N.
``peak_tree_rss_gb``: the most the run's processes held together (their resident sizes
summed, polled every 0.1 s), the whole command (data, model, fit, evaluation) included.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/bench/lightgcn-beauty-ratio811.yaml")
    parser.add_argument("--devices", default="1,2")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="rounds over --devices")
    parser.add_argument("--strategy", default="ddp_spawn", help="of the runs in several processes")
    parser.add_argument("overrides", nargs="*", help="more key=value overrides")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    device_counts = [int(d) for d in args.devices.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="recsys-ddp-") as tmp:
        # rounds interleave the device counts, so that a slow spell of a shared machine
        # falls on all of them rather than on one
        for round_ in range(args.repeat):
            for devices in device_counts:
                results.append({"round": round_, **train(args, devices, Path(tmp), env)})
                print(json.dumps(results[-1]), file=sys.stderr)
    median_speedup = speedups(results, device_counts)
    print(json.dumps({
        "config": args.config, "epochs": args.epochs, "threads_per_process": 1,
        "strategy": args.strategy,
        "machine": {"cores": os.cpu_count()}, "rounds": args.repeat,
        "median_speedup": median_speedup, "runs": results,
    }, indent=2))  # fmt: skip


def speedups(results: list[dict], device_counts: list[int]) -> dict[int, float]:
    """Set each run's ``speedup`` over the first run of its round; the median speed-up of
    each device count."""
    for r in results:
        base = next(b for b in results if b["round"] == r["round"])["samples_per_second"]
        r["speedup"] = round(r["samples_per_second"] / base, 3)
    return {
        devices: statistics.median(r["speedup"] for r in results if r["devices"] == devices)
        for devices in device_counts
    }


def train(args: argparse.Namespace, devices: int, tmp: Path, env: dict[str, str]) -> dict:
    """Train the config in ``devices`` processes; its epoch seconds and samples/s."""
    name = f"ddp{devices}"
    cmd = [sys.executable, "-m", "recsys.cli", "train", "-c", args.config,
           f"name={name}", f"output_dir={tmp}", f"trainer.max_epochs={args.epochs}",
           f"trainer.patience={args.epochs}", "trainer.refit=false",
           "trainer.num_threads=1", "trainer.accelerator=cpu",
           f"trainer.devices={devices}",
           f"trainer.strategy={args.strategy if devices > 1 else 'auto'}",
           *args.overrides, "--fresh", "--no-progress", "--brief"]  # fmt: skip
    peak = run_with_tree_peak(cmd, env)
    metrics = json.loads((tmp / name / "metrics.json").read_text())
    epochs = metrics["training"]["epoch_seconds"]
    median = statistics.median(epochs[1:] or epochs)
    return {
        "devices": devices, "epoch_seconds": epochs, "seconds_per_epoch": median,
        "samples_per_second": round(_train_pairs(tmp / name) / median, 1),
        "valid_ndcg@10": metrics["valid"]["ndcg@10"], "peak_tree_rss_gb": round(peak, 2),
    }  # fmt: skip


def run_with_tree_peak(cmd: list[str], env: dict[str, str]) -> float:
    """Run ``cmd`` to the end (an error if it fails); the most its process and all their
    descendants held resident at once, GB (Linux)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_gb(proc.pid))
        time.sleep(0.1)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return peak


def tree_rss_gb(root: int) -> float:
    """The resident sizes of process ``root`` and its descendants, summed (GB)."""
    parent, rss = {}, {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):  # gone meanwhile
            continue
        pid = int(status.parent.name)
        parent[pid] = int(fields["PPid"])
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    total = 0
    for pid in rss:
        ancestor = pid
        while ancestor not in (root, 0, 1) and ancestor in parent:
            ancestor = parent[ancestor]
        total += rss[pid] if ancestor == root else 0
    return total / 2**20


def _train_pairs(run: Path) -> int:
    from recsys.artifacts import RunFolder
    from recsys.data.splits import TRAIN

    return int((RunFolder(run).interactions()["label"] == TRAIN).sum())


if __name__ == "__main__":
    main()
