#!/usr/bin/env python
"""Choose DAS's cold-item scoring knobs on **valid**, from one finished run.

    python bench/das_cold_scoring.py runs/das-content-uh4-beauty-cold10 \
        --kappas 1,8,16,32 --lambdas 0,0.3,1,3

``model.cold_semantic_weight`` (κ) and ``model.popularity_weight`` (λ) of a concat-mode
DAS run only change how its final vectors are scored, never training, so their effect can
be read from the run's saved valid vectors: the semantic half of each item without
training interactions times κ, plus λ × a ridge regression (α = 1) of the standardised
log training counts on the items' semantic halves fitted on the warm items — what the
model computes. Valid only (never test), so that the grid may choose a configuration;
the chosen one is then trained as usual, since early stopping reads valid with the knobs
in place. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from recsys.artifacts import RunFolder
from recsys.data.splits import TRAIN
from recsys.eval.bundle import evaluate_scores
from recsys.models.content import popularity_regressor


def cold_scoring_grid(
    run: RunFolder, kappas: list[float], lambdas: list[float]
) -> list[dict[str, float]]:
    """Valid N@10 / R@20 for each (κ, λ), from the run's saved valid vectors."""
    model = run.config()["model"]
    if model.get("kind") != "das" or model.get("semantic_combination") != "concat":
        raise SystemExit(f"{run.root}: needs a DAS run with semantic_combination: concat")
    users, items = (torch.from_numpy(a).double() for a in run.embeddings("valid"))
    dim, run_lambda = int(model["dim"]), float(model.get("popularity_weight", 0.0))
    end = items.shape[1] - (1 if run_lambda > 0 else 0)  # drop the run's own pop column
    if end == dim:
        raise SystemExit(f"{run.root}: the run's vectors have no semantic half")
    frame = run.interactions()
    train = frame[frame["label"] == TRAIN]
    counts = np.bincount(train["item_idx"].to_numpy(), minlength=items.shape[0])
    cold = torch.from_numpy(counts == 0)
    semantic = items[:, dim:end].clone()
    semantic[cold] /= float(model.get("cold_semantic_weight", 1.0))  # the unscaled s_i
    collaborative = users[:, :dim] @ items[:, :dim].T  # (U, I)
    similarity = users[:, dim:end] @ semantic.T
    ridge = popularity_regressor(semantic.numpy(), counts)  # as the model fits it
    popularity = torch.from_numpy(ridge.predict(semantic.numpy()))
    rows = []
    for kappa in kappas:
        scale = torch.where(cold, kappa, 1.0)
        for lam in lambdas:
            scores = collaborative + similarity * scale + lam * popularity

            def score(batch: torch.Tensor, scores: torch.Tensor = scores) -> torch.Tensor:
                return scores[batch]

            m = evaluate_scores(run, "valid", score)
            rows.append(
                {
                    "cold_semantic_weight": kappa,
                    "popularity_weight": lam,
                    "valid_ndcg@10": round(m["ndcg@10"], 4),
                    "valid_recall@20": round(m["recall@20"], 4),
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run")
    parser.add_argument("--kappas", default="1,4,8,16,32")
    parser.add_argument("--lambdas", default="0,0.3,1,3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    floats = [[float(v) for v in text.split(",")] for text in (args.kappas, args.lambdas)]
    rows = cold_scoring_grid(RunFolder(args.run), *floats)
    json.dump({"run": args.run, "split": "valid", "rows": rows}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
