"""``bench/memory_phases.py``: each phase of a short ``recsys train`` with the most it held."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_every_phase_of_a_run_is_logged_in_order_with_its_peak(tmp_path, tiny_table):
    config = {
        "name": "phases", "seed": 7, "output_dir": str(tmp_path / "runs"),
        "data": {"dataset": "table", "interactions": {"path": str(tiny_table)}, "split": "loo"},
        "model": {"kind": "lightgcn", "dim": 8, "layers": 1},
        "trainer": {"max_epochs": 2, "progress_bar": False, "sampling": {"batch_size": 64}},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, str(REPO / "bench" / "memory_phases.py"), "--steps", "2", "--",
           "-c", str(path), "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    names = [p["phase"] for p in report["phases"]]
    expected = [
        "load_dataset", "write_data", "build_model", "fit", "_free_training_state",
        "frozen_embeddings", "use_history", "write_embeddings", "write_item_encoder",
        "write_history_query", "semantic_ids", "evaluate_embeddings", "write_metrics",
    ]  # fmt: skip
    assert [n for n in names if n in expected] == expected
    for phase in report["phases"]:
        assert 0 < phase["rss_gb"] <= phase["peak_gb"] + 1e-2  # the peak includes the start
    assert report["peak_gb"] == max(p["peak_gb"] for p in report["phases"])
    # two epochs cut to two batches each (the data holds more): global steps 0..3
    pairs = len(pd.read_csv(tiny_table))
    assert pairs > 4 * 64
    curve = pd.read_csv(tmp_path / "runs" / "phases" / "logs" / "metrics.csv")
    assert curve["epoch"].max() == 1 and curve["step"].max() == 3
