"""How good and how fast an approximate index is, against exact search.

Queries are user embeddings (a seeded sample of at most ``max_queries`` users, drawn with
another seed than the build's calibration sample); the reference is brute force
``torch.topk(users @ items.T)``, independent of FAISS. No items are excluded: this
measures the index, not the serving policy.
"""

from __future__ import annotations

import time

import faiss
import numpy as np
import torch

from recsys.index.faiss_index import ItemIndex


def exact_topk(queries: np.ndarray, items: np.ndarray, k: int, batch: int = 1024) -> np.ndarray:
    """Brute-force top-``k`` item ids ``(B, k)`` of ``queries (B, D) @ items (N, D).T``."""
    item_t = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
    out = []
    for s in range(0, len(queries), batch):
        q = torch.from_numpy(np.ascontiguousarray(queries[s : s + batch], dtype=np.float32))
        out.append(torch.topk(q @ item_t.T, min(k, len(items)), dim=1).indices.numpy())
    return np.concatenate(out) if out else np.empty((0, k), np.int64)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of ``|found ∩ truth| / |truth|`` (``-1`` ids never match)."""
    hits = [
        len(set(f[f >= 0].tolist()) & set(t.tolist())) / len(t)
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits)) if hits else float("nan")


def evaluate_index(
    index: ItemIndex,
    users: np.ndarray,
    k: int = 10,
    max_queries: int = 5000,
    single_queries: int = 1000,
    seed: int = 1,
) -> dict[str, float | int]:
    """Recall@k against exact search, batched and single-query throughput.

    Args:
        index: the index under test (its own catalogue is the reference catalogue).
        users: ``(U, D)`` query vectors; a sample of ``min(U, max_queries)`` is used.
        single_queries: how many of them are also searched one at a time.

    Returns:
        ``recall@{k}``, ``queries``, ``qps_batch``, ``qps_single``, ``latency_ms_p50``,
        ``latency_ms_p99`` (single queries, one OpenMP thread, as served),
        ``exact_qps_batch`` (the torch reference), ``threads`` (FAISS threads, batched).
    """
    rng = np.random.default_rng(seed)
    n = min(len(users), max_queries)
    sample = np.sort(rng.choice(len(users), size=n, replace=False))
    queries = np.ascontiguousarray(users[sample], dtype=np.float32)

    start = time.perf_counter()
    truth = exact_topk(queries, index.vectors, k)
    exact_seconds = time.perf_counter() - start

    start = time.perf_counter()
    found, _ = index.search(queries, k)
    batch_seconds = time.perf_counter() - start

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # as served: one thread per request (ServeConfig)
    lat = []
    try:
        for row in queries[: min(single_queries, n)]:
            t0 = time.perf_counter()
            index.search(row[None], k)
            lat.append(time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(threads)
    lat_ms = np.asarray(lat) * 1e3
    return {
        f"recall@{k}": round(recall_at_k(found, truth), 4),
        "queries": n,
        "qps_batch": round(n / batch_seconds, 1),
        "qps_single": round(float(len(lat) / (lat_ms.sum() / 1e3)), 1) if lat else float("nan"),
        "latency_ms_p50": round(float(np.percentile(lat_ms, 50)), 3) if lat else float("nan"),
        "latency_ms_p99": round(float(np.percentile(lat_ms, 99)), 3) if lat else float("nan"),
        "exact_qps_batch": round(n / exact_seconds, 1),
        "threads": threads,
    }
