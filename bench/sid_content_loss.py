#!/usr/bin/env python
"""How much content signal survives in a semantic ID's codeword sum?

    python bench/sid_content_loss.py --dataset amazon-beauty --dims 128,256 --levels 3,4,6,8

Scores the **valid** split of `cold-10` (new items only: a cold item is known by its
content, or by its semantic ID alone) the way the content model and DAS's semantic score
do — user = recency-weighted mean of their training items' vectors, score = dot product —
with the item vectors being: the normalised content (the content-only model), its PCA to
each ``--dims`` (centred, as DAS's ``content_dim``), and the residual k-means
reconstruction (codeword sum, ``L`` levels × ``--codebook-size``) of that PCA, which is
what DAS's semantic score sees when its codewords stay content centroids. Valid only, so
it can inform configuration choices. Prints JSON.
"""

from __future__ import annotations

import argparse
import json

import faiss
import numpy as np
import torch
from cold_content import cold10_content

from recsys.data.splits import TRAIN
from recsys.eval.ranking import evaluate
from recsys.models.base import TrainingGraph
from recsys.models.content import recency_weighted_users


def residual_kmeans(x: np.ndarray, levels: int, size: int, seed: int = 0) -> np.ndarray:
    """``(N, D)`` codeword sums of ``levels`` rounds of k-means on the residuals."""
    residual, total = x.astype(np.float32).copy(), np.zeros_like(x, dtype=np.float32)
    for level in range(levels):
        km = faiss.Kmeans(x.shape[1], size, niter=20, seed=seed + level, verbose=False)
        km.train(residual)
        _, assign = km.index.search(residual, 1)
        codeword = km.centroids[assign[:, 0]]
        total += codeword
        residual -= codeword
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--dims", default="128,256")
    parser.add_argument("--levels", default="3,4,6,8")
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--decay", type=float, default=0.9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from sklearn.decomposition import PCA

    ds, content = cold10_content(args.dataset)
    tu, ti = ds.pairs(TRAIN)
    graph = TrainingGraph(ds.n_users, ds.n_items, tu, ti)
    truth, exclude = ds.eval_matrices("valid")

    def valid_metrics(items: np.ndarray) -> dict[str, float]:
        users = recency_weighted_users(items, graph, args.decay)
        scores = torch.as_tensor(users @ items.T, dtype=torch.float32)
        m = evaluate(
            lambda b: scores[torch.as_tensor(b)],
            truth,
            exclude,
            candidates=ds.candidates["valid"],
        )
        return {"ndcg@10": round(m["ndcg@10"], 4), "recall@20": round(m["recall@20"], 4)}

    rows = {"content": valid_metrics(content)}
    for dim in (int(d) for d in args.dims.split(",")):
        reduced = PCA(n_components=dim, random_state=0).fit_transform(content)
        rows[f"pca{dim}"] = valid_metrics(reduced)
        for levels in (int(v) for v in args.levels.split(",")):
            sums = residual_kmeans(reduced, levels, args.codebook_size)
            rows[f"pca{dim}-rq{levels}x{args.codebook_size}"] = valid_metrics(sums)
    print(json.dumps({"dataset": args.dataset, "split": "cold-10 valid", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
