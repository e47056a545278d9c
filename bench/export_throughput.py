"""Batch export throughput next to the bound dense matrix multiplication sets.

    python bench/export_throughput.py RUN --split all --k 20 --chunk-users 4096 --threads 1

1. Times torch's dense ``(B x D) @ (D x I)`` float32 product at the export's shapes
   (B = chunk users, D = embedding dim, I = items), repeated for >= ``--min-seconds``,
   and reports GFLOP/s (2·B·D·I flops per product). Scoring one user costs 2·D·I flops,
   so ``matmul_bound_users_per_second = GFLOP/s · 1e9 / (2·D·I)``: no export that scores
   the whole catalogue per user can go faster on this machine.
2. Runs the partitioned export (``recsys export --partitioned``) of the same run into a
   temporary folder and reports its users/s; ``fraction_of_bound`` is the ratio. The
   rest of the time goes to masking seen items, the top-k and writing Parquet.

Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.artifacts import RunFolder  # noqa: E402
from recsys.export.topk import export_partitioned, select_users  # noqa: E402


def matmul_gflops(b: int, d: int, n: int, min_seconds: float) -> float:
    """GFLOP/s of ``(b, d) @ (d, n)`` float32 products, best of repeated timings."""
    gen = torch.Generator().manual_seed(0)
    users = torch.randn(b, d, generator=gen)
    items_t = torch.randn(n, d, generator=gen).T  # the export's layout: item_emb.T
    users @ items_t  # warm-up (allocator, thread pool)
    best, spent = float("inf"), 0.0
    while spent < min_seconds:
        start = time.perf_counter()
        users @ items_t
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return 2.0 * b * d * n / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--split", default="all", choices=["test", "valid", "all"])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--chunk-users", type=int, default=4096)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--min-seconds", type=float, default=2.0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = RunFolder(Path(args.run))
    _, items_emb = run.embeddings()
    n_users = len(select_users(run, args.split, None))
    d, n_items = items_emb.shape[1], items_emb.shape[0]
    b = min(args.chunk_users, n_users)
    gflops = matmul_gflops(b, d, n_items, args.min_seconds)
    bound = gflops * 1e9 / (2.0 * d * n_items)
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        summary = export_partitioned(
            run.root,
            Path(tmp) / "recs",
            split=args.split,
            k=args.k,
            chunk_users=args.chunk_users,
            progress=False,
        )
    result = {
        "run": str(run.root),
        "split": args.split,
        "k": args.k,
        "users": n_users,
        "items": n_items,
        "dim": d,
        "chunk_users": args.chunk_users,
        "torch_threads": torch.get_num_threads(),
        "matmul_shape": f"({b} x {d}) @ ({d} x {n_items})",
        "matmul_gflops": round(gflops, 2),
        "matmul_bound_users_per_second": round(bound, 1),
        "export_users_per_second": summary["users_per_second"],
        "export_seconds": summary["seconds"],
        "fraction_of_bound": round(summary["users_per_second"] / bound, 3),
        "rows": summary["rows"],
        "parts": summary["parts"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
