#!/usr/bin/env python
"""Choose DAS's cold-item scoring knobs on **valid**, from one finished run.

    python bench/das_cold_scoring.py runs/das-content-uh4-beauty-cold10 \
        --kappas 1,8,16,32 --lambdas 0,0.3,1,3

``model.cold_semantic_weight`` (κ, concat mode) and ``model.popularity_weight`` (λ) of a
DAS run only change how its final vectors are scored, never training, so their effect can
be read from the run's saved valid vectors: the semantic half of each item without
training interactions times κ, plus λ × a ridge regression (α = 1) of the standardised
log training counts on the items' semantic vectors fitted on the warm items — what the
model computes — or, with ``--popularity-source content``, λ × the content model's trees
on the raw item features (``model.popularity_source: content``; add mode too:
``--kappas 1``). Valid only (never test), so that the grid may choose a configuration;
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
from recsys.models.content import popularity_gbdt, popularity_regressor, raw_feature_matrix


def content_popularity(run: RunFolder, counts: np.ndarray) -> np.ndarray:
    """``(I,)``: the content model's trees on the run's raw item features, as a DAS run
    with ``popularity_source: content`` fits them."""
    from recsys.features.pipeline import build_item_features
    from recsys.features.presets import run_features
    from recsys.train.config import parse_run_config
    from recsys.train.runner import feature_cache_dir

    config = parse_run_config(run.config())
    features_config = run_features(config.features, config.data.dataset)
    features = build_item_features(run.items(), features_config, cache_dir=feature_cache_dir())
    raw = raw_feature_matrix(features)
    return popularity_gbdt(raw, counts).predict(raw)


def train_item_counts(run: RunFolder, n_items: int) -> np.ndarray:
    """``(I,)``: each item's training interactions in the run's saved split."""
    frame = run.interactions()
    return np.bincount(frame.loc[frame["label"] == TRAIN, "item_idx"], minlength=n_items)


def cold_scoring_grid(
    run: RunFolder, kappas: list[float], lambdas: list[float], source: str = "semantic"
) -> list[dict[str, float]]:
    """Valid N@10 / R@20 for each (κ, λ), from the run's saved valid vectors; the
    popularity is predicted from ``source`` (``semantic`` or ``content``)."""
    model = run.config()["model"]
    if model.get("kind") != "das":
        raise SystemExit(f"{run.root}: needs a DAS run")
    concat = model.get("semantic_combination", "add") == "concat"
    if not concat and kappas != [1.0]:
        raise SystemExit(f"{run.root}: κ needs semantic_combination: concat; pass --kappas 1")
    users, items = (torch.from_numpy(a) for a in run.embeddings("valid"))
    dim, run_lambda = int(model.get("dim", 64)), float(model.get("popularity_weight", 0.0))
    end = items.shape[1] - (1 if run_lambda > 0 else 0)  # drop the run's own pop column
    users, items = users[:, :end], items[:, :end]
    counts = train_item_counts(run, items.shape[0])
    cold = torch.from_numpy(counts == 0)
    if concat:
        if end == dim:
            raise SystemExit(f"{run.root}: the run's vectors have no semantic half")
        items = items.clone()
        items[cold, dim:] /= float(model.get("cold_semantic_weight", 1.0))  # unscaled s_i
        semantic = items[:, dim:]
    else:  # add mode: no κ; the semantic vector is the interest columns over γ
        if source == "semantic" and float(model.get("item_id_weight", 1.0)) != 0:
            raise SystemExit(f"{run.root}: add mode hides s_i unless item_id_weight is 0")
        interest = dim - int(model.get("pop_dim", 16))
        semantic = items[:, :interest] / float(model.get("semantic_weight", 1.0))
    if source == "content":
        popularity = content_popularity(run, counts)
    else:
        s = semantic.double().numpy()
        popularity = popularity_regressor(s, counts).predict(s)  # as the model fits it
    popularity = torch.from_numpy(popularity).to(items)
    rows = []
    for kappa in kappas:
        scaled = items.clone()
        scaled[cold, dim:] *= kappa  # concat only (add mode: κ is 1)
        for lam in lambdas:
            # the model's own product, [users ; λ] · [items ; predicted popularity], in
            # its precision, so that ties break as they did in the run
            query = torch.cat([users, users.new_full((len(users), 1), lam)], 1)
            scores = query @ torch.cat([scaled, popularity[:, None]], 1).T

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
    parser.add_argument(
        "--popularity-source",
        choices=["semantic", "content"],
        default="semantic",
        help="what predicts popularity (model.popularity_source)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    floats = [[float(v) for v in text.split(",")] for text in (args.kappas, args.lambdas)]
    rows = cold_scoring_grid(RunFolder(args.run), *floats, source=args.popularity_source)
    out = {"run": args.run, "split": "valid", "popularity_source": args.popularity_source}
    json.dump({**out, "rows": rows}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
