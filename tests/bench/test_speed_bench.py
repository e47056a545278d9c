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


def test_rounds_combine_by_their_medians_and_per_round_ratios():
    """Three interleaved rounds: a model's epoch is the median over rounds and its ratio the
    median of each round's ratio to RecBole's LightGCN in that same round (not the ratio of
    the medians); a failed run is left out of both."""

    def round_of(peer: float, das: float | None) -> list[dict]:
        das_run = (
            {"model": "das", "seconds_per_epoch": das}
            if das
            else {"model": "das", "error": "exit 1"}
        )
        return [{"model": "recbole-lightgcn", "seconds_per_epoch": peer}, das_run]

    rounds = [round_of(2.0, 2.2), round_of(1.0, 1.3), round_of(4.0, 3.0)]
    peer, das = speed.combine_rounds(rounds)
    assert peer["seconds_per_epoch"] == 2.0 and peer["round_ratios"] == [1.0, 1.0, 1.0]
    assert das["seconds_per_epoch"] == 2.2
    assert das["round_ratios"] == [1.1, 1.3, 0.75] and das["epoch_ratio_to_recbole_lightgcn"] == 1.1
    assert [r["seconds_per_epoch"] for r in das["rounds"]] == [2.2, 1.3, 3.0]
    _, das = speed.combine_rounds([round_of(2.0, 3.0), round_of(1.0, None)])
    assert das["seconds_per_epoch"] == 3.0 and das["round_ratios"] == [1.5]
    (one,) = speed.combine_rounds([[{"model": "lightgcn", "seconds_per_epoch": 0.8}]])
    assert one == {"model": "lightgcn", "seconds_per_epoch": 0.8}  # one round: as measured
