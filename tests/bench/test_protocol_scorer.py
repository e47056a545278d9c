"""bench/protocol_scorer.py on tiny synthetic datasets, against hand-computed numbers."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "protocol_scorer.py"
L3 = 1 / math.log2(3)  # discount of rank 2
L7 = 1 / math.log2(7)  # discount of rank 6


def run_scorer(*args: str) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def write_csv(path: Path, recs: dict[str, list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "rank", "score"])
        for user, items in recs.items():
            for r, item in enumerate(items, 1):
                w.writerow([user, item, r, 1.0 / r])
    return path


def write_parquet(path: Path, recs: dict[str, list[str]]) -> Path:
    rows = [(u, it, r, 1.0 / r) for u, items in recs.items() for r, it in enumerate(items, 1)]
    table = pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.string()),
            "item_id": pa.array([r[1] for r in rows], pa.string()),
            "rank": pa.array([r[2] for r in rows], pa.int64()),
            "score": pa.array([r[3] for r in rows], pa.float64()),
        }
    )
    pq.write_table(table, path)
    return path


def approx(d: dict) -> dict:
    return {k: pytest.approx(v, abs=1e-9) for k, v in d.items()}


# ----------------------------------------------------------------------------- ml-100k

# (user, item, rating, ts), deliberately out of order.
ML_ROWS = (
    # user 1: 5 (ts 10), 7 (20), 2 (30), then 9 and 10 tied at ts 40 -> int order 9, 10 (string
    # order would put "10" first); a later duplicate of 5 is dropped. Sequence 5, 7, 2, 9, 10.
    [("1", "10", 4, 40), ("1", "5", 3, 10), ("1", "9", 5, 40), ("1", "2", 1, 30)]
    + [("1", "7", 2, 20), ("1", "5", 5, 50)]
    # user 2: items 101..115 at ts 1..15 (n = 15)
    + [("2", str(100 + t), 3, t) for t in range(15, 0, -1)]
    # user 3: 2 interactions -> whole train, never scored
    + [("3", "7", 1, 5), ("3", "2", 1, 6)]
    # user 4: 3 interactions 20, 21, 22
    + [("4", "22", 1, 300), ("4", "20", 1, 100), ("4", "21", 1, 200)]
)


@pytest.fixture()
def ml_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ml"
    d.mkdir()
    (d / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ML_ROWS))
    return d


ML_RECS = {
    "1": ["101", "10", "102"],  # loo/ratio test {10}: hit at rank 2
    "2": ["115", "5", "7"],  # loo test {115}; ratio test {114, 115}: hit at rank 1
    "3": ["5"],  # not scored (no test items)
    # user 4 has no rows: scores 0
}


def test_ml100k_loo(ml_dir: Path, tmp_path: Path):
    recs = write_csv(tmp_path / "recs.csv", ML_RECS)
    got, err = run_scorer(
        "--dataset",
        "ml-100k",
        "--path",
        str(ml_dir),
        "--split",
        "loo",
        "--recs",
        str(recs),
        "--k",
        "1",
        "5",
    )
    # scored users 1, 2, 4 (user 3 has < 3 interactions).
    # user 1: test {10}, hit at rank 2 -> recall@1 0, recall@5 1, ndcg@5 = 1/log2(3)
    # user 2: test {115}, hit at rank 1 -> 1 everywhere
    # user 4: test {22}, no recs -> 0
    assert got == approx(
        {
            "dataset": "ml-100k",
            "split": "loo",
            "n_users": 3,
            "n_users_with_recs": 2,
            "recall@1": 1 / 3,
            "ndcg@1": 1 / 3,
            "hr@1": 1 / 3,
            "recall@5": 2 / 3,
            "ndcg@5": (L3 + 1) / 3,
            "hr@5": 2 / 3,
        }
    )
    assert "warning" not in err


def test_ml100k_ratio_811(ml_dir: Path, tmp_path: Path):
    recs = write_csv(tmp_path / "recs.csv", ML_RECS)
    got, err = run_scorer(
        "--dataset",
        "ml-100k",
        "--path",
        str(ml_dir / "u.data"),
        "--split",
        "ratio-811",
        "--recs",
        str(recs),
        "--k",
        "1",
        "5",
    )
    # user 1: n = 5 -> k = max(1, floor(1.0)) = 1: test {10} as in loo.
    # user 2: n = 15 -> k = floor(1.5 + 0.5) = 2: test {114, 115}, valid {112, 113};
    #   hit at rank 1 only -> recall@1 = recall@5 = 1/2, ndcg@1 = 1,
    #   ndcg@5 = 1 / (1 + 1/log2(3)) (IDCG over min(2, 5) = 2 items)
    # user 4: n = 3 -> k = 1: test {22}, no recs.
    assert got == approx(
        {
            "dataset": "ml-100k",
            "split": "ratio-811",
            "n_users": 3,
            "n_users_with_recs": 2,
            "recall@1": 0.5 / 3,
            "ndcg@1": 1 / 3,
            "hr@1": 1 / 3,
            "recall@5": 1.5 / 3,
            "ndcg@5": (L3 + 1 / (1 + L3)) / 3,
            "hr@5": 2 / 3,
        }
    )
    assert "warning" not in err


# ----------------------------------------------------------------------------- Amazon P5

COLD = {"4", "11"}  # md5 cold among "1".."12", checked below

SEQ = """1 1 2 3 4 5
2 6 7 6 8 11 4
3 9 10
4 11 4
5 12 1 2
"""


def test_cold_items_are_the_expected_ones():
    cold = {
        str(i) for i in range(1, 13) if int(hashlib.md5(str(i).encode()).hexdigest(), 16) % 10 == 0
    }
    assert cold == COLD


@pytest.fixture()
def seq_file(tmp_path: Path) -> Path:
    p = tmp_path / "sequential_data.txt"
    p.write_text(SEQ)
    return p


def test_amazon_loo(seq_file: Path, tmp_path: Path):
    recs = write_parquet(
        tmp_path / "recs.parquet",
        {
            "1": ["6", "5", "7"],  # test {5}: hit at rank 2
            "2": ["4", "1"],  # seq 6 7 8 11 4 (duplicate 6 dropped): test {4}, hit at rank 1
            "5": ["3", "4", "5", "6", "7", "2"],  # test {2}: hit at rank 6
        },
    )
    got, err = run_scorer(
        "--dataset",
        "amazon-p5",
        "--path",
        str(seq_file),
        "--split",
        "loo",
        "--recs",
        str(recs),
        "--k",
        "5",
        "10",
    )
    # users 3 and 4 have 2 interactions: whole train, not scored.
    assert got == approx(
        {
            "dataset": "amazon-p5",
            "split": "loo",
            "n_users": 3,
            "n_users_with_recs": 3,
            "recall@5": 2 / 3,
            "ndcg@5": (L3 + 1) / 3,
            "hr@5": 2 / 3,
            "recall@10": 1.0,
            "ndcg@10": (L3 + 1 + L7) / 3,
            "hr@10": 1.0,
        }
    )
    assert "warning" not in err


def test_amazon_cold_10(seq_file: Path, tmp_path: Path):
    recs = write_parquet(tmp_path / "recs.parquet", {"1": ["11", "4"], "2": ["4", "11"]})
    got, err = run_scorer(
        "--dataset",
        "amazon-p5",
        "--path",
        str(tmp_path),
        "--split",
        "cold-10",
        "--recs",
        str(recs),
        "--k",
        "1",
        "5",
    )
    # user 1: train {1,2,3,5}, test {4}: hit at rank 2 -> recall@5 1, ndcg@5 1/log2(3)
    # user 2: train {6,7,8}, test {11, 4}: hits at 1, 2 -> recall@1 1/2, ndcg@1 1, @5 all 1
    # user 3: no cold item, not scored; user 4: only cold items -> dropped; user 5: no cold.
    assert got == approx(
        {
            "dataset": "amazon-p5",
            "split": "cold-10",
            "n_users": 2,
            "n_users_with_recs": 2,
            "recall@1": 0.25,
            "ndcg@1": 0.5,
            "hr@1": 0.5,
            "recall@5": 1.0,
            "ndcg@5": (L3 + 1) / 2,
            "hr@5": 1.0,
        }
    )
    assert "warning" not in err


def test_sanity_warnings(seq_file: Path, tmp_path: Path):
    path = tmp_path / "recs.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "rank", "score"])
        w.writerow(["1", "1", 1, 0.9])  # user 1 has item 1 in train
        w.writerow(["1", "4", 2, 0.8])  # ... and item 4 in valid
        w.writerow(["1", "5", 2, 0.7])  # duplicate (user, rank): ignored, so 5 is no hit
        w.writerow(["2", "99", 1, 0.5])  # unknown item
        w.writerow(["zz", "4", 1, 0.5])  # unknown user
    got, err = run_scorer(
        "--dataset", "amazon-p5", "--path", str(seq_file), "--split", "loo", "--recs", str(path)
    )
    assert "2 recommended items are in the user's train/valid" in err
    assert "1 duplicate (user, rank) rows" in err
    assert "not ranking candidates" in err
    assert "not in the split" in err
    assert got["n_users"] == 3 and got["recall@20"] == 0.0
