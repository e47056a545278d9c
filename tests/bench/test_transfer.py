"""bench/transfer.py: issue 28's early-best check on hand-made validation curves, and a
row read back from a run folder's metrics and curve."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from conftest import load_bench


def _curve(values: list[float], every: int = 1) -> pd.Series:
    return pd.Series(values, index=[every * (i + 1) - 1 for i in range(len(values))])


def test_a_best_in_the_first_five_percent_fails_unless_the_curve_stays_flat():
    transfer = load_bench("transfer")
    # 100 epochs, best at epoch 3 (1-based), then a fall to half: the spike of issue 28.
    spike = _curve([0.07, 0.06, 0.08] + [0.04] * 97)
    assert transfer.early_best(3, 100, spike) == {
        "early": True, "lowest_after_best": 0.5, "ok": False
    }  # fmt: skip
    # The same early best with every later validation within 5% of it: flat, passes.
    flat = _curve([0.07, 0.075, 0.08] + [0.077] * 97)
    assert transfer.early_best(3, 100, flat)["ok"]
    assert transfer.early_best(3, 100, flat)["lowest_after_best"] == round(0.077 / 0.08, 3)
    # A best at epoch 6 of 100 is past the first 5%: passes whatever follows.
    late = _curve([0.01] * 5 + [0.08] + [0.01] * 94)
    assert transfer.early_best(6, 100, late) == {
        "early": False, "lowest_after_best": round(0.01 / 0.08, 3), "ok": True
    }  # fmt: skip
    # Validations every 10 epochs: the first one (epoch 10 of 300) is inside 5% (15 epochs).
    sparse = _curve([0.08, 0.05, 0.05], every=10)
    assert transfer.early_best(10, 300, sparse)["early"]


def test_a_row_reads_the_run_folder(tmp_path: Path):
    transfer = load_bench("transfer")
    run = tmp_path / transfer.run_name("das", "ml-100k", "loo")
    (run / "logs").mkdir(parents=True)
    pd.DataFrame(
        {"epoch": [0, 0, 1, 1, 2], "val/ndcg@10": [0.10, None, 0.12, None, 0.11]}
    ).to_csv(run / "logs" / "metrics.csv", index=False)
    metrics = {
        "valid": {"ndcg@10": 0.12, "recall@20": 0.3},
        "test": {"ndcg@10": 0.1, "recall@20": 0.28},
        "training": {"epochs": 3, "best_epoch": 2, "train_seconds": 9.5,
                     "validation_interval": 1},
    }  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))
    row = transfer.row("das", "ml-100k", "loo", tmp_path)
    assert row["run"] == "transfer-das-ml-100k-loo" and row["best_epoch"] == 2
    hand = transfer.HAND_SELECTED[("das", "ml-100k", "loo")][0]
    assert row["vs_hand_selected"] == round(0.12 / hand - 1, 4)
    # best at epoch 2 of 3 is not in the first 5% (ceil(0.15) = 1 epoch)
    assert not row["early"] and row["lowest_after_best"] == round(0.11 / 0.12, 3)
    assert "| das | ml-100k | loo | 3 (2) |" in transfer.markdown([row])
