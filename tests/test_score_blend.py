"""bench/score_blend.py: the blend of two runs against each run scored alone."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recsys.eval.bundle import evaluate_run

REPO = Path(__file__).resolve().parents[1]


def _load_blend():
    spec = importlib.util.spec_from_file_location("score_blend", REPO / "bench" / "score_blend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_standardise_rows():
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 40.0]])
    z = _load_blend().standardise(x)
    torch.testing.assert_close(z[0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(z.mean(1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(z.std(1), torch.ones(2), atol=1e-6)


def test_blend_endpoints_equal_the_runs_alone(tmp_path):
    from conftest import synthetic_interactions, train_table_run

    table = synthetic_interactions()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = train_table_run(tmp_path / "a", table, None, {"kind": "mf", "dim": 8},
                        trainer={"max_epochs": 2, "num_threads": 1})  # fmt: skip
    b = train_table_run(tmp_path / "b", table, None, {"kind": "lightgcn", "dim": 4},
                        trainer={"max_epochs": 2, "num_threads": 1})  # fmt: skip
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "score_blend.py"), str(a.root), str(b.root),
         "--lambdas", "0,1e6"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    rows = json.loads(out.stdout)["rows"]
    alone_a, alone_b = evaluate_run(a, "test"), evaluate_run(b, "test")
    assert rows[0]["test_ndcg@10"] == pytest.approx(alone_a["ndcg@10"], abs=1e-4)
    assert rows[1]["test_ndcg@10"] == pytest.approx(alone_b["ndcg@10"], abs=1e-4)
