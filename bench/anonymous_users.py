#!/usr/bin/env python
"""How well does serving answer a user it only knows by their items?

    python bench/anonymous_users.py runs/A [runs/B ...] [--section anonymous-users]

For every test user of each run, the history is their train + valid items, oldest first,
and three queries are ranked against the run's item vectors exactly as test is scored
(seen items masked, the run's candidates): the model's own saved user vector (a ceiling:
it knows the user's ID embedding), the run's ``history_query/`` (what POST
/v1/recommendations uses now) and the plain mean of the history's item vectors (what it
used before, and still uses for runs without the folder). Prints JSON and writes the
section of the research history (the file of docs/research/ holding it, or --doc FILE).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from runs_table import doc_for, update

from recsys.artifacts import RunFolder
from recsys.data.splits import TEST, TRAIN, VALID
from recsys.eval.ranking import evaluate
from recsys.serve.history import HistoryQuery

ROOT = Path(__file__).resolve().parents[1]


def queries(run: RunFolder) -> dict[str, np.ndarray]:
    """``{variant: (n_users, D)}``: each user's query from their train + valid history."""
    users, items = run.embeddings()
    table = run.interactions()  # chronological order
    known = table[table["label"].isin([TRAIN, VALID])]
    history = HistoryQuery.load(run, items.shape[1])
    out = {"model": users, "mean": np.zeros_like(users)}
    if history is not None:
        out["history_query"] = np.zeros_like(users)
    for u, group in known.groupby("user_idx", sort=False):
        seq = group["item_idx"].to_numpy()
        out["mean"][u] = items[seq].mean(axis=0)
        if history is not None:
            out["history_query"][u] = history.query(items[seq], seq)
    return out


def measure(run: RunFolder) -> dict[str, dict[str, float]]:
    _, items = run.embeddings()
    truth, exclude = run.matrix(TEST), run.matrix(TRAIN, VALID)
    item_t = torch.as_tensor(items)
    out = {}
    for name, users in queries(run).items():
        user_t = torch.as_tensor(users)
        metrics = evaluate(
            lambda b, u=user_t: u[torch.as_tensor(b)] @ item_t.T,
            truth,
            exclude,
            candidates=run.candidates("test"),
        )
        out[name] = {k: round(metrics[k], 4) for k in ("ndcg@10", "recall@20")}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--section", default="anonymous-users")
    parser.add_argument(
        "--doc", type=Path, help="default: the docs/research/ file holding the section"
    )
    args = parser.parse_args()
    if args.doc is None:
        args.doc = doc_for(args.section)
    torch.set_num_threads(1)
    results = {str(path.name): measure(RunFolder(path)) for path in args.runs}
    json.dump(results, sys.stdout, indent=2)
    print()
    command = "python bench/anonymous_users.py " + " ".join(shlex.quote(str(p)) for p in args.runs)
    lines = [
        "Test N@10 / R@20 when each test user is queried from their train + valid items only"
        " (oldest first), against the run's own saved user vector.",
        "",
        "| run | saved user (ceiling) | `history_query/` (served now) | mean of items (before) |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        cells = [
            f"{r[v]['ndcg@10']:.4f} / {r[v]['recall@20']:.4f}" if v in r else "—"
            for v in ("model", "history_query", "mean")
        ]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{command}`", ""]
    update(args.doc, args.section, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
