"""A synthetic interaction log at any size, shaped like real ones (``bench/scale.py``).

    python bench/synthetic.py --items 100000 --out /tmp/synthetic-100k

Writes ``interactions.parquet`` (user_id, item_id, timestamp) and ``items.parquet``
(item_id, c0 .. c{dim-1}) into ``--out``: ``--users`` users (default: as many as items),
about ``--per-item`` interactions per item (10: the 1M-item case has 10M), and

* **power-law item popularity**: item ``i``'s draw weight is ``rank_i^-popularity_exponent``
  over a random order of ranks (Zipf-like; a few head items, a long tail that is seldom or
  never drawn);
* **power-law user activity**: a user's number of draws is Pareto (``activity_exponent``,
  at least ``min_per_user``, at most ``max_per_user``), scaled so the log has its size;
* **content that correlates with the interactions**: every item belongs to one of
  ``topics`` topics (≈ √items) and its content vector is its topic's centre plus noise
  (``content_noise`` × a unit-variance draw); every user has a main topic and a second
  one, and draws ``main_share`` of their items from the main topic, ``second_share`` from
  the second, the rest from the whole catalogue, each by popularity. So items that share
  users share content, and the semantic side has signal to find.

A repeated draw of a pair is dropped (the first kept, the protocol's rule), the draws
scaled up until the log has its size after that. Timestamps are a user's draw order.
Deterministic given ``--seed``; vectorised.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd


@dataclasses.dataclass
class SyntheticSpec:
    items: int
    users: int | None = None  # None: as many as items
    per_item: float = 10.0  # interactions drawn per item
    dim: int = 32  # content vector width
    topics: int | None = None  # None: round(sqrt(items)), at least 4
    popularity_exponent: float = 0.8  # Zipf exponent of item popularity
    activity_exponent: float = 1.5  # Pareto shape of user activity
    min_per_user: int = 3  # every user can be split leave-one-out
    max_per_user: int = 2000
    main_share: float = 0.7  # of a user's draws from their main topic
    second_share: float = 0.15  # ... from their second topic (the rest: the catalogue)
    content_noise: float = 0.7  # an item's content: topic centre + noise × N(0, I)
    seed: int = 0

    @property
    def n_users(self) -> int:
        return self.users if self.users is not None else self.items

    @property
    def n_topics(self) -> int:
        return self.topics if self.topics is not None else max(4, round(math.sqrt(self.items)))


def user_activity(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """``(U,)`` draws per user: Pareto-shaped, clipped to [min, max], scaled so that the
    total is ``per_item × items``."""
    raw = (1 - rng.random(spec.n_users)) ** (-1 / spec.activity_exponent)  # Pareto, ≥ 1
    target = spec.per_item * spec.items
    counts = np.clip(raw * (target / raw.sum()), spec.min_per_user, spec.max_per_user)
    # the clip moved the total: rescale the part above the floor once
    above = counts - spec.min_per_user
    room = target - spec.min_per_user * spec.n_users
    if room > 0 and above.sum() > 0:
        counts = spec.min_per_user + above * (room / above.sum())
    return np.maximum(np.round(counts), spec.min_per_user).astype(np.int64)


def generate(spec: SyntheticSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(interactions, items)`` as the ``table`` dataset reads them (integer ids), at least
    ``per_item × items`` distinct pairs."""
    target, scale = spec.per_item * spec.items, 1.0
    for _ in range(4):  # repeat draws are dropped: draw more until the log has its size
        drawn = dataclasses.replace(spec, per_item=spec.per_item * scale)
        interactions, items = _generate(drawn)
        if len(interactions) >= target:
            break
        scale *= 1.02 * target / len(interactions)
    return interactions, items


def _generate(spec: SyntheticSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(spec.seed)
    n_items, n_users, n_topics = spec.items, spec.n_users, spec.n_topics
    popularity = rng.permutation(np.arange(1, n_items + 1, dtype=np.float64))
    popularity **= -spec.popularity_exponent
    topic = rng.integers(0, n_topics, n_items)
    # Items grouped by topic, with the cumulative popularity of that order: a draw within
    # topic t is a uniform value in t's slice of the cumulative mass, found by bisection.
    order = np.argsort(topic, kind="stable")
    cum = np.cumsum(popularity[order])
    bounds = np.searchsorted(topic[order], np.arange(n_topics + 1))
    start = np.concatenate([[0.0], cum])[bounds[:-1]]
    mass = np.concatenate([[0.0], cum])[bounds[1:]] - start
    main = rng.choice(n_topics, n_users, p=mass / mass.sum())
    second = rng.choice(n_topics, n_users, p=mass / mass.sum())

    counts = user_activity(spec, rng)
    users = np.repeat(np.arange(n_users), counts)
    kind = rng.random(len(users))
    chosen = np.where(kind < spec.main_share, main[users], second[users])
    lo, width = start[chosen], mass[chosen]
    anywhere = kind >= spec.main_share + spec.second_share
    lo[anywhere], width[anywhere] = 0.0, cum[-1]
    at = np.searchsorted(cum, lo + rng.random(len(users)) * width, side="right")
    items = order[np.minimum(at, n_items - 1)]
    # a user's draws in order: timestamps 0, 1, ... after a per-user offset
    first = np.repeat(np.cumsum(counts) - counts, counts)
    timestamp = np.arange(len(users)) - first + np.repeat(rng.integers(0, 10**6, n_users), counts)
    interactions = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": timestamp})
    interactions = interactions.drop_duplicates(["user_id", "item_id"], ignore_index=True)

    centres = rng.standard_normal((n_topics, spec.dim))
    content = centres[topic] + spec.content_noise * rng.standard_normal((n_items, spec.dim))
    table = pd.DataFrame(content.astype(np.float32), columns=content_columns(spec.dim))
    table.insert(0, "item_id", np.arange(n_items))
    return interactions, table


def content_columns(dim: int) -> list[str]:
    return [f"c{j}" for j in range(dim)]


def write(spec: SyntheticSpec, out: Path) -> dict[str, object]:
    """Write the two tables into ``out`` (skipped when ``out/spec.json`` says they are this
    spec's already) → the spec and the drawn counts."""
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "spec.json"
    wanted = dataclasses.asdict(spec)
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("spec") == wanted:
            return meta
    interactions, items = generate(spec)
    for name, frame in (("interactions", interactions), ("items", items)):
        tmp = out / f".{name}.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        tmp.replace(out / f"{name}.parquet")  # whole files only: a kill leaves none half-written
    meta = {
        "spec": wanted,
        "interactions": len(interactions),
        "users": spec.n_users,
        "items": spec.items,
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--users", type=int)
    parser.add_argument("--per-item", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    spec = SyntheticSpec(args.items, args.users, args.per_item, seed=args.seed)
    print(json.dumps(write(spec, args.out)))


if __name__ == "__main__":
    main()
