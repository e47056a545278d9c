"""The project's printed metrics equal an independent scorer's on real splits.

``bench/protocol_scorer.py`` was written from BENCHMARK_PROTOCOL.md alone and does not
import recsys: it rebuilds the split from the raw files and scores our exported top-20.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.export.topk import export_recommendations
from recsys.train.config import parse_run_config
from recsys.train.runner import train_run

REPO = Path(__file__).resolve().parents[1]
CASES = [
    # (dataset preset, scorer layout, folder, split, epochs)
    ("ml-100k", "ml-100k", "ml-100k", "loo", 3),
    ("ml-100k", "ml-100k", "ml-100k", "cold-10", 0),
    ("amazon-beauty", "amazon-p5", "amazon-p5/beauty", "ratio-811", 1),
]


@pytest.mark.shared
@pytest.mark.parametrize("dataset,layout,folder,split,epochs", CASES)
def test_exported_top20_scores_the_same(
    shared_data, tmp_path, dataset, layout, folder, split, epochs
):
    kind = "lightgcn" if epochs else "popularity"
    config = parse_run_config(
        {
            "name": f"{dataset}-{split}",
            "output_dir": str(tmp_path),
            "data": {"dataset": dataset, "split": split},
            "model": {"kind": kind},
            "trainer": {
                "max_epochs": max(epochs, 1),
                "progress_bar": False,
                "sampling": {"batch_size": 8192},
                "lr": 0.005,
            },
        }
    )
    run = train_run(config)
    printed = run.metrics()["test"]
    recs = tmp_path / "recs.parquet"
    export_recommendations(run.root, recs, split="test", k=20, progress=False)
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "protocol_scorer.py"),
            "--dataset",
            layout,
            "--path",
            str(shared_data / folder),
            "--split",
            split,
            "--recs",
            str(recs),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    scored = json.loads(res.stdout)
    assert "warning" not in res.stderr, res.stderr
    assert scored["n_users"] == printed["n_users"]
    for k in (5, 10, 20):
        for metric in ("recall", "ndcg", "hr"):
            key = f"{metric}@{k}"
            assert scored[key] == pytest.approx(printed[key], abs=1e-6), key
