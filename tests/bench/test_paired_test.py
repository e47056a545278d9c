"""bench/paired_test.py: a paired comparison of two runs over the same users."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_bench

from recsys.eval.bundle import evaluate_run, evaluate_scores, per_user_run_metrics

REPO = Path(__file__).resolve().parents[2]


def _load():
    return load_bench("paired_test")


def test_compare_hand_computed():
    a = np.array([0.5, 0.0, 1.0, 0.2, 0.3, 0.0])
    b = np.array([0.1, 0.0, 0.5, 0.4, 0.3, 0.2])
    out = _load().compare(a, b)
    diff = a - b  # 0.4, 0, 0.5, -0.2, 0, -0.2
    assert out["diff"] == pytest.approx(0.5 / 6)
    assert (out["a_wins"], out["ties"], out["b_wins"], out["users"]) == (2, 2, 2, 6)
    # paired t: mean / (sample sd / √n), two-sided, n − 1 degrees of freedom
    t = diff.mean() / (diff.std(ddof=1) / math.sqrt(6))
    from scipy.stats import t as student

    assert out["t_test_p"] == pytest.approx(2 * student.sf(abs(t), 5))
    assert out["ci95_low"] < out["diff"] < out["ci95_high"]
    # a larger sample of the same differences narrows the interval around the same mean
    wide = _load().compare(np.tile(a, 50), np.tile(b, 50))
    assert wide["diff"] == pytest.approx(out["diff"])
    assert wide["ci95_high"] - wide["ci95_low"] < (out["ci95_high"] - out["ci95_low"]) / 4


def test_runs_compared_user_by_user(tmp_path):
    from conftest import two_tiny_runs

    a, b = two_tiny_runs(tmp_path)
    # per-user values average to the run's own metrics
    users, values = per_user_run_metrics(a, "test")
    summary = evaluate_run(a, "test")
    assert len(users) == summary["n_users"]
    assert values["ndcg@10"].mean() == pytest.approx(summary["ndcg@10"], abs=1e-12)
    assert values["recall@20"].mean() == pytest.approx(summary["recall@20"], abs=1e-12)

    script = [sys.executable, str(REPO / "bench" / "paired_test.py")]
    out = subprocess.run(
        [*script, "--a", str(a.root), "--b", str(b.root)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result = json.loads(out.stdout)
    expected = summary["ndcg@10"] - evaluate_run(b, "test")["ndcg@10"]
    assert result["ndcg@10"]["diff"] == pytest.approx(expected, abs=1e-12)
    assert result["ndcg@10"]["users"] == summary["n_users"]
    # a side of two runs is their per-user mean: A twice against A is no difference at all
    out = subprocess.run(
        [*script, "--a", str(a.root), str(a.root), "--b", str(a.root), "--metric", "ndcg@10"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    same = json.loads(out.stdout)["ndcg@10"]
    assert same["diff"] == 0.0 and same["ties"] == same["users"]
    assert same["ci95_low"] == same["ci95_high"] == 0.0 and same["t_test_p"] == 1.0

    # test scored with the vectors valid was scored with (history without valid)
    valid_user, valid_item = (torch.from_numpy(x) for x in b.embeddings("valid"))
    assert not torch.equal(valid_user, torch.from_numpy(b.embeddings("test")[0]))
    by_hand = evaluate_scores(b, "test", lambda u: valid_user[u] @ valid_item.T, (10, 20))
    _, stale = per_user_run_metrics(b, "test", vectors="valid")
    assert stale["ndcg@10"].mean() == pytest.approx(by_hand["ndcg@10"], abs=1e-12)
    assert stale["recall@20"].mean() == pytest.approx(by_hand["recall@20"], abs=1e-12)
    with pytest.raises(ValueError, match="vectors must be"):
        per_user_run_metrics(b, "test", vectors="train")
    out = subprocess.run(
        [*script, "--a", str(b.root), "--b", str(b.root), "--vectors", "valid"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert result["vectors"] == "valid"
    assert result["ndcg@10"]["mean_a"] == pytest.approx(by_hand["ndcg@10"], abs=1e-12)
