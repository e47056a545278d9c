"""``bench/ddp_step.py``: a step's parts in one process and in two (gloo), as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_the_step_parts_add_up_in_one_and_two_processes(tmp_path, tiny_table):
    """Two processes' parts add up to their step, and the gradients averaged by hand
    (``--separate-comm``) train the weights DDP's own reducer trains, bit for bit (with two
    processes the mean's halving is exact in either order)."""
    config = {
        "name": "ddp-step", "seed": 7, "output_dir": str(tmp_path / "runs"),
        "data": {"dataset": "table", "interactions": {"path": str(tiny_table)}, "split": "loo"},
        "model": {"kind": "lightgcn", "dim": 16, "layers": 2, "fanouts": [4, 4],
                  "sparse_updates": True},
        "trainer": {"sampling": {"batch_size": 64}},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    report, by_ddp = (bench(tmp_path, path, "1,2", "--separate-comm"), bench(tmp_path, path, "2"))
    one, two = report["runs"]
    assert two["weights"] == by_ddp["runs"][0]["weights"] != one["weights"]
    assert (one["devices"], two["devices"]) == (1, 2) and one["speedup"] == 1.0
    assert one["sparse_tables"] and two["sparse_tables"]
    parts = ("batch", "forward", "backward", "wait", "comm", "optimizer")
    for run in (one, two):
        assert run["steps"] == 3
        assert abs(sum(run[p] for p in parts) - run["step"]) <= 1e-3  # rounding only
    assert one["comm"] == 0.0 and one["wait"] == 0.0  # one process: nothing to reduce
    assert two["comm"] > 0.0
    assert two["speedup"] == round(2 * one["step"] / two["step"], 3)


def bench(tmp_path: Path, config: Path, devices: str, *options: str) -> dict:
    cmd = [sys.executable, str(REPO / "bench" / "ddp_step.py"), str(config), "--devices", devices,
           "--steps", "3", "--warmup", "1", *options]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)
