"""Training throughput in one process against several (Lightning's ddp_spawn over gloo).

    python bench/ddp_speed.py --config configs/bench/lightgcn-beauty-ratio811.yaml \\
        --devices 1,2 --epochs 4 --repeat 3 > ddp.json

Trains the config for a fixed number of epochs (no early stopping, no refit) once per
``--devices`` value and round, one thread per process, one run after the other, and prints
JSON per run: training samples per second (training pairs / the median epoch after the
first; validation excluded), the epoch seconds, and the speed-up over its round's first
device count; then the median speed-up of each device count over the ``--repeat`` rounds.
Each process of an N-process run takes its share of every epoch's batches
(``recsys.train.distributed``), so an epoch is one pass over the training pairs whatever N.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/bench/lightgcn-beauty-ratio811.yaml")
    parser.add_argument("--devices", default="1,2")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="rounds over --devices")
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
           f"trainer.strategy={'ddp_spawn' if devices > 1 else 'auto'}",
           *args.overrides, "--fresh", "--no-progress", "--brief"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((tmp / name / "metrics.json").read_text())
    epochs = metrics["training"]["epoch_seconds"]
    median = statistics.median(epochs[1:] or epochs)
    return {
        "devices": devices, "epoch_seconds": epochs, "seconds_per_epoch": median,
        "samples_per_second": round(_train_pairs(tmp / name) / median, 1),
        "valid_ndcg@10": metrics["valid"]["ndcg@10"],
    }  # fmt: skip


def _train_pairs(run: Path) -> int:
    from recsys.artifacts import RunFolder
    from recsys.data.splits import TRAIN

    return int((RunFolder(run).interactions()["label"] == TRAIN).sum())


if __name__ == "__main__":
    main()
