"""Recall of what the API serves against exact search, for every known user of a run.

    python bench/served_recall.py RUN --index hnsw --k 20

Loads the run as ``recsys serve`` does (``ServingState``: the index kind or saved index,
calibrated when built here, every interaction of the user excluded), asks for each user's
top-``k`` and compares it with the brute-force top-``k`` over every unseen item. Prints
JSON: mean and minimum recall, how many users fall below 0.95, recall of the users with
more than 800 seen items and of the heaviest user, and milliseconds per served query.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.serve.config import ServeConfig  # noqa: E402
from recsys.serve.state import ServingState  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--index", default="auto", help="as recsys serve --index")
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    state = ServingState.load(
        args.run, ServeConfig(index=args.index, adds_journal=None), encoder=None
    )
    users, items = state.user_vectors, state.snapshot.index.vectors
    names = state.snapshot.items.base.ids
    recall, n_seen, seconds = [], [], 0.0
    for u, user_id in enumerate(state.user_map.ids):
        seen = state.seen.indices[state.seen.indptr[u] : state.seen.indptr[u + 1]]
        start = time.perf_counter()
        served = {item for item, _ in state.recommend_user(str(user_id), args.k)}
        seconds += time.perf_counter() - start
        scores = items.astype(np.float64) @ users[u].astype(np.float64)
        scores[seen] = -np.inf
        exact = {str(names[i]) for i in np.argsort(-scores, kind="stable")[: args.k]}
        recall.append(len(exact & served) / len(exact))
        n_seen.append(len(seen))
    recall_arr, seen_arr = np.array(recall), np.array(n_seen)
    heavy = seen_arr > 800
    meta = state.snapshot.index.meta
    print(
        json.dumps(
            {
                "run": args.run,
                "index": meta.name,
                "factory": meta.factory,
                "mips_to_l2": meta.mips_to_l2,
                "params": meta.params,
                "users": len(recall_arr),
                f"recall@{args.k}_mean": round(float(recall_arr.mean()), 4),
                f"recall@{args.k}_min": round(float(recall_arr.min()), 4),
                "users_below_0.95": int((recall_arr < 0.95).sum()),
                "users_over_800_seen": int(heavy.sum()),
                "recall_over_800_seen": round(float(recall_arr[heavy].mean()), 4)
                if heavy.any()
                else None,
                "heaviest_user_seen": int(seen_arr.max()),
                "heaviest_user_recall": float(recall_arr[seen_arr.argmax()]),
                "ms_per_query": round(1000 * seconds / len(recall_arr), 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
