"""``bench/speed.py``'s measurements: per-process peak RSS and the epoch summary."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("speed", REPO / "bench" / "speed.py")
speed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(speed)


def test_peak_rss_is_the_childs_own():
    """A child that holds 300 MB reports at least that; one that holds nothing, far less."""
    big = "import numpy, time; a = numpy.ones(300 * 2**20 // 8); time.sleep(0.3); print(a.sum())"
    code, rss, out = speed.run_measured([sys.executable, "-c", big], dict(os.environ))
    assert code == 0 and float(out) == 300 * 2**20 // 8 and rss >= 300
    code, small, _ = speed.run_measured([sys.executable, "-c", "pass"], dict(os.environ))
    assert code == 0 and small < 100
    code, _, _ = speed.run_measured([sys.executable, "-c", "raise SystemExit(3)"], {})
    assert code == 3


def test_summary_takes_the_median_after_the_first_epoch():
    out = speed.summarise([9.0, 2.0, 4.0, 3.0], [0.5, 0.4, 0.6, 0.5])
    assert out["seconds_per_epoch"] == 3.0  # median of 2, 4, 3: the first (warm-up) left out
    assert out["first_eval_seconds_from_start"] == 9.5
    assert speed.summarise([5.0], [1.0])["seconds_per_epoch"] == 5.0


def test_profile_step_reports_the_top_operators_of_an_epoch(tmp_path):
    """bench/profile_step.py on the built-in dataset: one row per operator, shares of the
    profiled epoch in decreasing order, LightGCN's propagation among them (the default
    config without its transition block, whose lookups would share the top)."""
    import json
    import subprocess

    config = tmp_path / "lightgcn.yaml"
    config.write_text(f"base: {REPO / 'configs' / 'lightgcn.yaml'}\nmodel:\n  transition_dim: 0\n")
    cmd = [sys.executable, str(REPO / "bench" / "profile_step.py"), str(config),
           "--epochs", "2", "--batch-size", "16384", "--dim", "16", "--top", "5"]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    assert len(result["epoch_seconds"]) == 2 and result["steps_per_epoch"] >= 1
    shares = [row["share"] for row in result["top_ops"]]
    assert len(shares) == 5 and shares == sorted(shares, reverse=True) and sum(shares) <= 1.0
    assert any("SparseMatmul" in row["op"] for row in result["top_ops"])
