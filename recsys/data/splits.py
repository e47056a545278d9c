"""The benchmark protocol's splits (``../shared/BENCHMARK_PROTOCOL.md``).

Each function takes interactions in per-user chronological order and returns an int8
label per row: 0 train, 1 valid, 2 test, -1 dropped.  No randomness enters a split.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

TRAIN, VALID, TEST, DROPPED = 0, 1, 2, -1
SPLITS = ("loo", "ratio-811", "cold-10")


def _position_and_count(users: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Per row: 0-based chronological position within its user, and the user's count."""
    position = users.groupby(users, sort=False).cumcount().to_numpy()
    count = users.map(users.value_counts()).to_numpy()
    return position, count


def split_loo(interactions: pd.DataFrame) -> np.ndarray:
    """Last → test, second-to-last → valid, rest → train; users with < 3 stay in train."""
    pos, n = _position_and_count(interactions["user_id"])
    labels = np.full(len(pos), TRAIN, dtype=np.int8)
    eligible = n >= 3
    labels[eligible & (pos == n - 1)] = TEST
    labels[eligible & (pos == n - 2)] = VALID
    return labels


def split_ratio_811(interactions: pd.DataFrame) -> np.ndarray:
    """k = max(1, floor(0.1·n + 0.5)): last k → test, the k before → valid."""
    pos, n = _position_and_count(interactions["user_id"])
    k = np.maximum(1, np.floor(0.1 * n + 0.5)).astype(np.int64)
    labels = np.full(len(pos), TRAIN, dtype=np.int8)
    eligible = n >= 3
    labels[eligible & (pos >= n - k)] = TEST
    labels[eligible & (pos >= n - 2 * k) & (pos < n - k)] = VALID
    return labels


def item_bucket(item_id: str) -> int:
    """``int(md5(item id string), 16) % 10``: the protocol's cold-item hash."""
    return int(hashlib.md5(item_id.encode("utf-8")).hexdigest(), 16) % 10


def is_cold_item(item_id: str) -> bool:
    """Protocol cold-10: an item is cold when its bucket is 0."""
    return item_bucket(item_id) == 0


def is_valid_cold_item(item_id: str) -> bool:
    """Our validation stand-in for cold items (bucket 1): never part of the test."""
    return item_bucket(item_id) == 1


def split_cold_10(interactions: pd.DataFrame) -> np.ndarray:
    """Interactions with cold items → test, the others → train; users left with no
    train interaction are dropped entirely.

    The protocol has no valid split.  To validate the way the test scores (items never
    seen in training), the interactions of a second hash bucket of items (bucket 1, ~10%
    of the warm items) move from train to valid.
    """
    buckets = interactions["item_id"].map(item_bucket).to_numpy()
    labels = np.where(buckets == 0, TEST, TRAIN).astype(np.int8)
    has_train = (
        pd.Series(buckets != 0)
        .groupby(interactions["user_id"].to_numpy(), sort=False)
        .transform("any")
        .to_numpy()
    )
    labels[~has_train] = DROPPED
    labels[(labels == TRAIN) & (buckets == 1)] = VALID
    return labels


def split_labels(interactions: pd.DataFrame, protocol: str) -> np.ndarray:
    if protocol == "loo":
        return split_loo(interactions)
    if protocol == "ratio-811":
        return split_ratio_811(interactions)
    if protocol == "cold-10":
        return split_cold_10(interactions)
    raise ValueError(f"unknown split {protocol!r}; expected one of {SPLITS} or 'preset'")
