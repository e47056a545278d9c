#!/usr/bin/env python
"""Are two finished runs complementary?  Blend their scores, λ chosen on valid.

    python bench/score_blend.py runs/twostage-ml100k-loo runs/content-ml100k-loo

Scores each user with ``z(A) + λ · z(B)``, where ``z`` standardises a user's scores over
all items (so the two scales need not match), for every λ in ``--lambdas``, on valid
(the embeddings valid was scored with) and on test.  Prints JSON: one row per λ, plus
the λ that is best on **valid** and its test numbers.  Not a model (two runs, one knob);
a quick check of whether a model that adds B's signal to A's could gain, before
building one.
"""

from __future__ import annotations

import argparse
import json

import torch

from recsys.artifacts import RunFolder
from recsys.eval.bundle import evaluate_scores


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """``(B, I)`` → per-row zero mean, unit standard deviation."""
    return (scores - scores.mean(1, keepdim=True)) / (scores.std(1, keepdim=True) + 1e-9)


def blend_metrics(a: RunFolder, b: RunFolder, split: str, lam: float) -> dict[str, float]:
    ua, ia = (torch.from_numpy(x).float() for x in a.embeddings(split))
    ub, ib = (torch.from_numpy(x).float() for x in b.embeddings(split))
    return evaluate_scores(
        a, split, lambda u: standardise(ua[u] @ ia.T) + lam * standardise(ub[u] @ ib.T), (10, 20)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--lambdas", default="0,0.1,0.2,0.3,0.5,0.7,1.0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    a, b = RunFolder(args.run_a), RunFolder(args.run_b)
    if a.manifest()["data_fingerprint"] != b.manifest()["data_fingerprint"]:
        raise SystemExit("the two runs were trained on different data (fingerprints differ)")
    rows = []
    for lam in (float(x) for x in args.lambdas.split(",")):
        row = {"lambda": lam}
        for split in ("valid", "test"):
            m = blend_metrics(a, b, split, lam)
            row[f"{split}_ndcg@10"] = round(m["ndcg@10"], 4)
            row[f"{split}_recall@20"] = round(m["recall@20"], 4)
        rows.append(row)
    best = max(rows, key=lambda r: r["valid_ndcg@10"])
    print(json.dumps({"a": args.run_a, "b": args.run_b, "rows": rows, "chosen_on_valid": best}))


if __name__ == "__main__":
    main()
