#!/usr/bin/env python
"""Is model A better than model B on the same split, or is the gap noise?  A paired test
over users.

    python bench/paired_test.py --a runs/das runs/das-seed1 --b runs/lightgcn runs/lightgcn-seed1

Scores every run from its saved embeddings, takes each user's metric (averaged over a
side's runs, e.g. its seeds), and compares the two sides user by user: the mean
difference A − B with a 95% bootstrap confidence interval (scipy, BCa, 10 000 resamples,
seeded), the paired t-test and Wilcoxon signed-rank p-values, and how many users A wins,
ties and loses. Users are the protocol's evaluated ones (a relevant item in the split),
identical on both sides because every run must carry the same data fingerprint. Prints
JSON. The interval covers which users happened to be evaluated (and, with several runs a
side, the seeds' mean); it does not make one seed stand for others.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from recsys.artifacts import RunFolder
from recsys.eval.bundle import per_user_run_metrics


def side_metrics(
    runs: list[RunFolder], split: str, metrics: list[str], vectors: str | None = None
) -> tuple[np.ndarray, dict]:
    """``users (N,)`` and each metric ``(N,)`` averaged over ``runs``."""
    users, sums = None, {m: 0.0 for m in metrics}
    for run in runs:
        run_users, values = per_user_run_metrics(run, split, ks=(10, 20), vectors=vectors)
        if users is not None and not np.array_equal(users, run_users):
            raise ValueError(f"{run.root}: evaluates other users than the first run")
        users = run_users
        for m in metrics:
            sums[m] = sums[m] + values[m]
    return users, {m: sums[m] / len(runs) for m in metrics}


def compare(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Paired comparison of per-user values ``a, b (N,)``."""
    diff = a - b
    if np.all(diff == diff[0]):  # no spread: nothing to resample, the gap is exact
        low = high = float(diff[0])
        t_test_p = 1.0 if diff[0] == 0 else 0.0
    else:
        ci = stats.bootstrap(
            (diff,), np.mean, confidence_level=0.95, n_resamples=10_000, method="BCa",
            rng=np.random.default_rng(seed),
        ).confidence_interval  # fmt: skip
        low, high = float(ci.low), float(ci.high)
        t_test_p = float(stats.ttest_rel(a, b).pvalue)
    nonzero = diff[diff != 0]
    return {
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "diff": float(diff.mean()),
        "ci95_low": low,
        "ci95_high": high,
        "t_test_p": t_test_p,
        "wilcoxon_p": float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) else 1.0,
        "users": int(len(diff)),
        "a_wins": int((diff > 0).sum()),
        "ties": int((diff == 0).sum()),
        "b_wins": int((diff < 0).sum()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--a", nargs="+", type=Path, required=True, help="run folders of A")
    ap.add_argument("--b", nargs="+", type=Path, required=True, help="run folders of B")
    ap.add_argument("--split", default="test", choices=["valid", "test"])
    ap.add_argument("--metric", action="append", help="default: ndcg@10 and recall@20")
    ap.add_argument(
        "--vectors",
        choices=["valid", "test"],
        help="score the split with these saved vectors (valid: test without the valid"
        " interactions in each user's history, and before any refit)",
    )
    args = ap.parse_args()
    metrics = args.metric or ["ndcg@10", "recall@20"]
    torch.set_num_threads(1)
    runs_a = [RunFolder(p) for p in args.a]
    runs_b = [RunFolder(p) for p in args.b]
    fingerprints = {r.manifest()["data_fingerprint"] for r in [*runs_a, *runs_b]}
    if len(fingerprints) > 1:
        raise SystemExit("the runs were trained on different data (fingerprints differ)")
    users_a, a = side_metrics(runs_a, args.split, metrics, args.vectors)
    users_b, b = side_metrics(runs_b, args.split, metrics, args.vectors)
    if not np.array_equal(users_a, users_b):
        raise SystemExit("the two sides evaluate different users")
    out = {
        "a": [str(p) for p in args.a],
        "b": [str(p) for p in args.b],
        "split": args.split,
        "vectors": args.vectors or args.split,
        **{m: compare(a[m], b[m]) for m in metrics},
    }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
