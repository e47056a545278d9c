"""Item indexes on a large synthetic catalogue: build time, memory, calibrated recall.

    python bench/index_scale.py --items 1000000 --kinds ivf,hnsw > index-1m.json

Items are 64-d vectors drawn around 1,000 cluster centres whose sizes follow a power law
(a few huge genres, a long tail), with norms spread like popularity (log-normal), so that
inner-product search has the skew real item embeddings have; queries are drawn the same
way. Each kind is built in a process of its own (its peak RSS is its own), through
``ItemIndex.build`` with the calibration serving uses (its search parameter raised until
recall@10 on ``--calibration`` sample queries reaches 0.96), then scored on other queries:
recall@10 against exact search, milliseconds per query in batches of 256.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def vectors(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(n, dim)`` float32 around power-law-sized clusters, log-normal norms."""
    weights = 1.0 / np.arange(1, len(centres) + 1) ** 1.1
    cluster = rng.choice(len(centres), size=n, p=weights / weights.sum())
    x = centres[cluster] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return (x * rng.lognormal(0.0, 0.3, size=(n, 1))).astype(np.float32)


def exact_topk(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """``(Q, k)`` exact top-k by inner product: the evaluation's ranker, 256 queries a time."""
    import torch

    from recsys.eval.ranking import iter_topk
    from recsys.models.base import dot_scores

    score = dot_scores(torch.from_numpy(queries), torch.from_numpy(items))
    rows = iter_topk(score, np.arange(len(queries)), k, None, batch_size=256)
    return np.concatenate([top.numpy() for _, top, _ in rows])


def single(args) -> dict:
    from recsys.index.faiss_index import IndexConfig, ItemIndex

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((1000, args.dim)).astype(np.float32)
    items = vectors(args.items, args.dim, centres, rng)
    calibration = vectors(args.calibration, args.dim, centres, rng)
    queries = vectors(args.queries, args.dim, centres, rng)
    start = time.perf_counter()
    index = ItemIndex.build(items, IndexConfig(kind=args.single), "", calibration)
    seconds = time.perf_counter() - start
    truth = exact_topk(items, queries, 10)
    start = time.perf_counter()
    found, _ = index.search(queries, 10)
    per_query_ms = (time.perf_counter() - start) / len(queries) * 1000
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    return {
        "kind": args.single, "items": args.items, "dim": args.dim,
        "build_and_calibrate_seconds": round(seconds, 1),
        "build_seconds": index.meta.build_seconds,
        "index_mb": round(index.meta.index_bytes / 2**20, 1),
        "calibration": index.meta.calibration, "params": index.meta.params,
        "recall@10": round(float(recall), 4), "ms_per_query": round(per_query_ms, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--kinds", default="ivf,hnsw")
    parser.add_argument("--calibration", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single", help=argparse.SUPPRESS)  # one kind, in this process
    args = parser.parse_args()
    if args.single:
        print(json.dumps(single(args)))
        return
    results = []
    for kind in args.kinds.split(","):
        cmd = [sys.executable, __file__, "--single", kind, "--items", str(args.items),
               "--dim", str(args.dim), "--calibration", str(args.calibration),
               "--queries", str(args.queries), "--seed", str(args.seed)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"items": args.items, "dim": args.dim, "kinds": results}, indent=2))


if __name__ == "__main__":
    main()
