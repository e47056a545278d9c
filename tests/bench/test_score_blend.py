"""bench/score_blend.py: the blend of two runs against each run scored alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_bench

from recsys.eval.bundle import evaluate_run

REPO = Path(__file__).resolve().parents[2]


def _load_blend():
    return load_bench("score_blend")


def test_standardise_rows():
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 40.0]])
    z = _load_blend().standardise(x)
    torch.testing.assert_close(z[0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(z.mean(1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(z.std(1), torch.ones(2), atol=1e-6)


def test_blend_endpoints_equal_the_runs_alone(tmp_path):
    from conftest import two_tiny_runs

    a, b = two_tiny_runs(tmp_path)
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "score_blend.py"), str(a.root), str(b.root),
         "--lambdas", "0,1e6"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    rows = json.loads(out.stdout)["rows"]
    alone_a, alone_b = evaluate_run(a, "test"), evaluate_run(b, "test")
    assert rows[0]["test_ndcg@10"] == pytest.approx(alone_a["ndcg@10"], abs=1e-4)
    assert rows[1]["test_ndcg@10"] == pytest.approx(alone_b["ndcg@10"], abs=1e-4)
