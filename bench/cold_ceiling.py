#!/usr/bin/env python
"""How far can content-only go on `cold-10` if popularity were known exactly?

    python bench/cold_ceiling.py --dataset ml-100k

Scores cold items by content cosine (users = recency-weighted mean of their known items,
as the content model does) + λ · the *oracle* standardised log count of each cold item
(valid counts for valid, all interactions for test), λ picked on valid.  Not a model (it
reads the labels); a ceiling for "content + predicted popularity".  Prints JSON.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from cold_content import cold10_content

from recsys.data.splits import TRAIN, VALID
from recsys.eval.ranking import evaluate
from recsys.models.base import TrainingGraph
from recsys.models.content import recency_weighted_users


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--lambdas", default="0.05,0.1,0.2,0.5,1.0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds, items = cold10_content(args.dataset)
    tu, ti = ds.pairs(TRAIN)
    vu, vi = ds.pairs(VALID)
    known = {
        "valid": TrainingGraph(ds.n_users, ds.n_items, tu, ti),
        "test": TrainingGraph(
            ds.n_users, ds.n_items, np.concatenate([tu, vu]), np.concatenate([ti, vi])
        ),
    }
    counts = {
        "valid": np.bincount(vi, minlength=ds.n_items),
        "test": np.bincount(ds.items, minlength=ds.n_items),
    }

    def ndcg(split: str, lam: float) -> float:
        cand = ds.candidates[split]
        log = np.log1p(counts[split].astype(np.float64))
        pop = (log - log[cand].mean()) / log[cand].std()
        users = recency_weighted_users(items, known[split], 0.9)
        scores = torch.as_tensor(users @ items.T + lam * pop[None, :], dtype=torch.float32)
        truth, exclude = ds.eval_matrices(split)
        fn = lambda b: scores[torch.as_tensor(b)]  # noqa: E731
        return evaluate(fn, truth, exclude, candidates=cand)["ndcg@10"]

    grid = [float(x) for x in args.lambdas.split(",")]
    valid = {lam: ndcg("valid", lam) for lam in grid}
    best = max(valid, key=valid.get)
    print(json.dumps({"dataset": args.dataset, "valid_ndcg@10": valid, "lambda": best,
                      "test_ndcg@10": ndcg("test", best)}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
