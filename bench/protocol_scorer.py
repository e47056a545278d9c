#!/usr/bin/env python
"""Independent reference scorer for ``BENCHMARK_PROTOCOL.md``.

Written from the protocol text alone, with plain dicts and sets, to cross-check the numbers
the project prints. It deliberately does NOT import ``recsys``: it reads the raw dataset
files, rebuilds the split and scores a recommendation export (Parquet or CSV with columns
``user_id, item_id, rank, score``) on the test part of the split.

Usage:
    python bench/protocol_scorer.py --dataset ml-100k --path shared/data/ml-100k \\
        --split loo --recs recs.parquet [--k 5 10 20]

Prints one JSON object (recall@k, ndcg@k, hr@k for each k, n_users, n_users_with_recs) on
stdout; warnings about the recommendation file go to stderr.

Reading of the protocol used here:
  * Interactions: ratings ignored; duplicate (user, item) pairs keep the earliest occurrence
    in chronological order. ml-100k order: (timestamp, int(item id)); Amazon P5: line order.
  * loo / ratio-811: split by chronological position; users with fewer than 3 interactions
    stay whole in train (and are not scored). ratio-811 uses k = max(1, floor(0.1 n + 0.5)),
    computed exactly as (n + 5) // 10.
  * cold-10: an item is cold when int(md5(item_id).hexdigest(), 16) % 10 == 0; every
    interaction with a cold item is test, the rest train, no valid. The split is by item, not
    by position, so the "fewer than 3 interactions" rule is not applied (the protocol says
    cold items have no training interaction). Users with no train interaction are dropped.
    Ranking is over the cold items only.
  * Relevant = the user's test items; users with >= 1 relevant item are averaged; a user
    without recommendations scores 0. Rank r (1-based, as given in the file) is discounted by
    1 / log2(r + 1); IDCG over min(|relevant|, k) items.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import sys
from collections import defaultdict

SPLITS = ("loo", "ratio-811", "cold-10")


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def info(msg: str) -> None:
    print(f"info: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- datasets


def _resolve(path: str, filename: str) -> str:
    return os.path.join(path, filename) if os.path.isdir(path) else path


def _dedup(items: list[str]) -> list[str]:
    """Keep the first (earliest) occurrence of each item."""
    seen: set[str] = set()
    out = []
    for it in items:
        if it not in seen:
            seen.add(it)
            out.append(it)
    return out


def load_ml100k(path: str) -> dict[str, list[str]]:
    """user id -> chronological item ids, from ``u.data`` (user, item, rating, ts; tabs)."""
    events: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    with open(_resolve(path, "u.data"), encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 4:
                sys.exit(f"error: {path}: line {line_no}: expected 4 tab-separated fields")
            user, item, _rating, ts = parts[:4]
            events[user].append((int(ts), int(item), item))
    return {u: _dedup([it for _, _, it in sorted(ev)]) for u, ev in events.items()}


def load_amazon_p5(path: str) -> dict[str, list[str]]:
    """user id -> item ids in line order, from ``sequential_data.txt`` (``user item ...``)."""
    seqs: dict[str, list[str]] = {}
    with open(_resolve(path, "sequential_data.txt"), encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            user, items = parts[0], parts[1:]
            if user in seqs:
                warn(f"user {user} appears on several lines; concatenating in file order")
                seqs[user].extend(items)
            else:
                seqs[user] = items
    return {u: _dedup(items) for u, items in seqs.items()}


def is_cold(item: str) -> bool:
    return int(hashlib.md5(item.encode("utf-8")).hexdigest(), 16) % 10 == 0


def build_split(seqs: dict[str, list[str]], split: str):
    """Return ({user: (train, valid, test)} as sets, candidate items)."""
    catalogue = {it for items in seqs.values() for it in items}
    parts: dict[str, tuple[set[str], set[str], set[str]]] = {}
    if split == "cold-10":
        candidates = {it for it in catalogue if is_cold(it)}
        for user, items in seqs.items():
            train = {it for it in items if not is_cold(it)}
            test = {it for it in items if is_cold(it)}
            if not train:
                continue  # dropped: nothing known about this user at training time
            parts[user] = (train, set(), test)
        return parts, candidates
    for user, items in seqs.items():
        n = len(items)
        if n < 3:
            parts[user] = (set(items), set(), set())
            continue
        k = 1 if split == "loo" else max(1, (n + 5) // 10)  # floor(0.1 n + 0.5), exactly
        train, valid, test = items[: n - 2 * k], items[n - 2 * k : n - k], items[n - k :]
        parts[user] = (set(train), set(valid), set(test))
    return parts, catalogue


# ----------------------------------------------------------------------------- recs


def read_recs(path: str) -> list[tuple[str, str, int, float]]:
    """Rows (user_id, item_id, rank, score) in file order, from Parquet or CSV."""
    with open(path, "rb") as f:
        magic = f.read(4)
    cols = ("user_id", "item_id", "rank", "score")
    if magic == b"PAR1":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            sys.exit(f"error: {path}: missing columns {missing}")
        for c in ("user_id", "item_id"):
            if str(table.schema.field(c).type) not in ("string", "large_string"):
                warn(f"{c} is {table.schema.field(c).type}, the export format says string")
        data = {c: table.column(c).to_pylist() for c in cols}
        return [
            (str(u), str(i), int(r), float(s))
            for u, i, r, s in zip(
                data["user_id"], data["item_id"], data["rank"], data["score"], strict=True
            )
        ]
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in cols if c not in (reader.fieldnames or [])]
        if missing:
            sys.exit(f"error: {path}: missing columns {missing}")
        return [
            (row["user_id"], row["item_id"], int(row["rank"]), float(row["score"]))
            for row in reader
        ]


def _example(examples: list, n: int = 3) -> str:
    return ", ".join(str(e) for e in examples[:n])


def clean_recs(rows, parts, candidates) -> dict[str, list[tuple[int, str]]]:
    """user -> [(rank, item)] sorted by rank, after sanity checks (warnings on stderr)."""
    by_user: dict[str, dict[int, tuple[str, float]]] = defaultdict(dict)
    dup_rank, bad_rank = [], []
    for user, item, rank, score in rows:
        if rank < 1:
            bad_rank.append((user, rank))
            continue
        if rank in by_user[user]:
            dup_rank.append((user, rank))
            continue  # keep the first row in file order
        by_user[user][rank] = (item, score)
    if bad_rank:
        warn(f"{len(bad_rank)} rows with rank < 1 ignored, e.g. {_example(bad_rank)}")
    if dup_rank:
        warn(
            f"{len(dup_rank)} duplicate (user, rank) rows; kept the first, e.g. "
            f"{_example(dup_rank)}"
        )

    masked, not_cand, dup_item, gaps, unsorted, unknown_users = [], [], [], [], [], []
    out: dict[str, list[tuple[int, str]]] = {}
    for user, ranked in by_user.items():
        if user not in parts:
            unknown_users.append(user)
            continue
        train, valid, _test = parts[user]
        seen: set[str] = set()
        lst = []
        prev_score = math.inf
        for rank in sorted(ranked):
            item, score = ranked[rank]
            if score > prev_score:
                unsorted.append(user)
            prev_score = score
            if item in seen:
                dup_item.append((user, item))
                continue  # count an item once, at its best rank
            seen.add(item)
            if item in train or item in valid:
                masked.append((user, item))
            if item not in candidates:
                not_cand.append((user, item))
            lst.append((rank, item))
        if sorted(ranked) != list(range(1, len(ranked) + 1)):
            gaps.append(user)
        out[user] = lst
    if masked:
        warn(
            f"{len(masked)} recommended items are in the user's train/valid and should have "
            f"been masked, e.g. {_example(masked)}"
        )
    if not_cand:
        warn(
            f"{len(not_cand)} recommended items are not ranking candidates (unknown item, or "
            f"not cold for cold-10), e.g. {_example(not_cand)}"
        )
    if dup_item:
        warn(
            f"{len(dup_item)} duplicate (user, item) rows; counted once at the best rank, "
            f"e.g. {_example(dup_item)}"
        )
    if gaps:
        warn(f"{len(gaps)} users have ranks that are not 1..n, e.g. {_example(gaps)}")
    if unsorted:
        warn(
            f"{len(set(unsorted))} users have scores increasing with rank, e.g. "
            f"{_example(sorted(set(unsorted)))}"
        )
    if unknown_users:
        warn(
            f"{len(unknown_users)} users in the recs are not in the split (unknown, or "
            f"dropped by cold-10), e.g. {_example(unknown_users)}"
        )
    return out


# ----------------------------------------------------------------------------- scoring


def score(parts, recs, ks: list[int]) -> dict[str, float]:
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "hr")}
    n_users = n_with_recs = 0
    for user, (_train, _valid, test) in parts.items():
        if not test:
            continue
        n_users += 1
        lst = recs.get(user, [])
        if lst:
            n_with_recs += 1
        hit_ranks = [rank for rank, item in lst if item in test]
        for k in ks:
            hits = [r for r in hit_ranks if r <= k]
            dcg = sum(1.0 / math.log2(r + 1) for r in hits)
            idcg = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(test), k) + 1))
            sums[f"recall@{k}"] += len(hits) / len(test)
            sums[f"ndcg@{k}"] += dcg / idcg
            sums[f"hr@{k}"] += 1.0 if hits else 0.0
    with_test_no_recs = n_users - n_with_recs
    if with_test_no_recs:
        info(f"{with_test_no_recs} of {n_users} scored users have no recommendations (score 0)")
    out: dict[str, float] = {}
    for k in ks:
        for m in ("recall", "ndcg", "hr"):
            key = f"{m}@{k}"
            out[key] = sums[key] / n_users if n_users else math.nan
    out["n_users"] = n_users
    out["n_users_with_recs"] = n_with_recs
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, choices=("ml-100k", "amazon-p5"))
    ap.add_argument("--path", required=True, help="dataset folder, or u.data / sequential_data.txt")
    ap.add_argument("--split", required=True, choices=SPLITS)
    ap.add_argument("--recs", required=True, help="Parquet or CSV: user_id,item_id,rank,score")
    ap.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    args = ap.parse_args(argv)
    if any(k < 1 for k in args.k):
        ap.error("--k values must be >= 1")

    seqs = load_ml100k(args.path) if args.dataset == "ml-100k" else load_amazon_p5(args.path)
    parts, candidates = build_split(seqs, args.split)
    recs = clean_recs(read_recs(args.recs), parts, candidates)
    result = {"dataset": args.dataset, "split": args.split}
    result.update(score(parts, recs, sorted(set(args.k))))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
