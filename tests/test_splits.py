"""The benchmark protocol's splits, against hand-computed labels and slow reimplementations
(``../shared/BENCHMARK_PROTOCOL.md``)."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.data.dataset import DataConfig, build_split_dataset, load_dataset
from recsys.data.readers import RawData, read_amazon_p5
from recsys.data.splits import (
    DROPPED,
    TEST,
    TRAIN,
    VALID,
    split_cold_10,
    split_labels,
    split_loo,
    split_ratio_811,
)

# n -> (train, valid, test) sizes, worked out by hand from the protocol:
# fewer than 3 interactions: all train; k = max(1, floor(0.1 n + 0.5)).
RATIO_811_BY_HAND = {
    1: (1, 0, 0),
    2: (2, 0, 0),
    3: (1, 1, 1),  # 0.8 -> 0 -> k = 1
    4: (2, 1, 1),  # 0.9 -> 0 -> 1
    9: (7, 1, 1),  # 1.4 -> 1
    10: (8, 1, 1),  # 1.5 -> 1
    14: (12, 1, 1),  # 1.9 -> 1
    15: (11, 2, 2),  # 2.0 -> 2
    25: (19, 3, 3),  # 3.0 -> 3
}
LOO_BY_HAND = {
    1: (1, 0, 0),
    2: (2, 0, 0),
    3: (1, 1, 1),
    4: (2, 1, 1),
    9: (7, 1, 1),
    10: (8, 1, 1),
    14: (12, 1, 1),
    15: (13, 1, 1),
    25: (23, 1, 1),
}


def md5_bucket(item_id: str) -> int:
    return int(hashlib.md5(item_id.encode("utf-8")).hexdigest(), 16) % 10


def interleaved_users(sizes: list[int]) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """Users u<n> with n interactions each, rows interleaved round-robin across users
    (so that a user's rows are not contiguous).  Returns the frame and, per user, its row
    positions in chronological order."""
    rows, where = [], {f"u{n}": [] for n in sizes}
    for t in range(max(sizes)):
        for n in sizes:
            if t < n:
                where[f"u{n}"].append(len(rows))
                rows.append((f"u{n}", f"i{n}_{t}", t))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]), where


def expected_labels(frame: pd.DataFrame, where: dict[str, list[int]], table) -> np.ndarray:
    out = np.full(len(frame), -9, dtype=np.int8)
    for positions in where.values():
        n_train, n_valid, n_test = table[len(positions)]
        labels = [TRAIN] * n_train + [VALID] * n_valid + [TEST] * n_test
        out[positions] = labels
    return out


@pytest.mark.parametrize(
    "split, table",
    [(split_loo, LOO_BY_HAND), (split_ratio_811, RATIO_811_BY_HAND)],
    ids=["loo", "ratio-811"],
)
def test_positional_splits_match_hand_computed_labels(split, table):
    frame, where = interleaved_users(sorted(table))
    got = split(frame)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, expected_labels(frame, where, table))


def test_ratio_811_k_against_integer_rounding_for_many_n():
    # floor(0.1 n + 0.5) in exact integer arithmetic is (n + 5) // 10: no float surprise.
    sizes = list(range(3, 230))
    frame, where = interleaved_users(sizes)
    got = split_ratio_811(frame)
    for user, positions in where.items():
        n = len(positions)
        k = max(1, (n + 5) // 10)
        assert list(got[positions]) == [TRAIN] * (n - 2 * k) + [VALID] * k + [TEST] * k, user


def test_split_labels_dispatch_and_unknown_protocol():
    frame, _ = interleaved_users([5, 12])
    np.testing.assert_array_equal(split_labels(frame, "loo"), split_loo(frame))
    np.testing.assert_array_equal(split_labels(frame, "ratio-811"), split_ratio_811(frame))
    with pytest.raises(ValueError, match="unknown split 'random'"):
        split_labels(frame, "random")


def _items_in_bucket(bucket: int, count: int, prefix: str) -> list[str]:
    out, n = [], 0
    while len(out) < count:
        name = f"{prefix}{n}"
        if md5_bucket(name) == bucket:
            out.append(name)
        n += 1
    return out


@pytest.fixture(scope="module")
def cold_frame() -> tuple[pd.DataFrame, dict[str, str]]:
    cold = _items_in_bucket(0, 4, "c")
    vcold = _items_in_bucket(1, 2, "v")
    warm = _items_in_bucket(5, 3, "w") + _items_in_bucket(7, 1, "w")
    assert all(md5_bucket(i) == 0 for i in cold)  # sanity of the test's own hash
    interactions = [
        ("alice", warm[0]),
        ("alice", cold[0]),
        ("alice", vcold[0]),
        ("alice", warm[1]),
        ("alice", cold[1]),
        ("bob", cold[2]),  # every item cold: bob has no train interaction -> dropped
        ("bob", cold[3]),
        ("carol", vcold[1]),  # only a bucket-1 warm item besides a cold one
        ("carol", cold[0]),
        ("dave", warm[2]),
        ("dave", warm[3]),
    ]
    frame = pd.DataFrame(interactions, columns=["user_id", "item_id"])
    frame["timestamp"] = np.arange(len(frame))
    kinds = {**{i: "cold" for i in cold}, **{i: "vcold" for i in vcold}}
    kinds.update({i: "warm" for i in warm})
    return frame, kinds


def test_cold_10_against_md5_by_hand(cold_frame):
    frame, kinds = cold_frame
    got = split_cold_10(frame)
    expected = []
    for user, item in frame[["user_id", "item_id"]].itertuples(index=False):
        if user == "bob":
            expected.append(DROPPED)
        elif kinds[item] == "cold":
            expected.append(TEST)
        elif kinds[item] == "vcold":
            expected.append(VALID)
        else:
            expected.append(TRAIN)
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.int8))


def test_cold_10_keeps_the_protocol_test_set(cold_frame):
    """The protocol (no valid split) drops a user only when every item is cold; moving
    bucket 1 to valid must not change who is tested on what."""
    frame, _ = cold_frame
    got = split_cold_10(frame)
    buckets = np.array([md5_bucket(i) for i in frame["item_id"]])
    has_warm = frame.assign(w=buckets != 0).groupby("user_id")["w"].transform("any").to_numpy()
    protocol_test = (buckets == 0) & has_warm
    np.testing.assert_array_equal(got == TEST, protocol_test)
    np.testing.assert_array_equal(got == DROPPED, ~has_warm)
    # Carol's only warm item is in bucket 1: she keeps her test row (and has no train row).
    carol = frame["user_id"].to_numpy() == "carol"
    assert sorted(got[carol].tolist()) == [VALID, TEST]


def test_cold_10_dataset_candidates_and_dropped_users(cold_frame):
    frame, kinds = cold_frame
    ds = build_split_dataset(RawData("t", frame), "cold-10")
    assert "bob" not in ds.user_map
    assert sorted(ds.user_map.ids) == ["alice", "carol", "dave"]
    ids = ds.item_map.ids
    assert sorted(ids[ds.candidates["test"]]) == sorted(i for i in ids if md5_bucket(i) == 0)
    assert sorted(ids[ds.candidates["valid"]]) == sorted(i for i in ids if md5_bucket(i) == 1)
    # The catalogue is every item of the data, those only bob had included.
    assert set(ids) == set(kinds)
    truth, exclude = ds.eval_matrices("test")
    tested = {(ds.user_map.ids[u], ids[i]) for u, i in zip(*truth.nonzero(), strict=True)}
    expected = {
        (u, i) for u, i, _ in frame.itertuples(index=False) if kinds[i] == "cold" and u != "bob"
    }
    assert tested == expected


# -- the real datasets ------------------------------------------------------------------


def _read_u_data(folder: Path) -> pd.DataFrame:
    rows = [line.split("\t") for line in (folder / "u.data").read_text().splitlines()]
    return pd.DataFrame(
        {
            "user": [r[0] for r in rows],
            "item": [r[1] for r in rows],
            "ts": [int(r[3]) for r in rows],
        }
    )


@pytest.fixture(scope="module")
def ml100k_loo(shared_data):
    return load_dataset(
        DataConfig(dataset="ml-100k", path=str(shared_data / "ml-100k"), split="loo")
    )


def test_ml100k_loo_counts(ml100k_loo):
    counts = Counter(ml100k_loo.labels.tolist())
    assert counts[VALID] == 943
    assert counts[TEST] == 943
    assert counts[TRAIN] == 98_114
    assert ml100k_loo.n_users == 943
    assert ml100k_loo.n_items == 1682


def test_ml100k_order_user_1_test_item(ml100k_loo, shared_data):
    raw = _read_u_data(shared_data / "ml-100k")
    mine = raw[raw["user"] == "1"]
    rows = sorted(zip(mine["ts"], mine["item"].astype(int), strict=True))
    last_item, second_item = str(rows[-1][1]), str(rows[-2][1])
    ds = ml100k_loo
    user = ds.user_map.index("1")
    for label, item in ((TEST, last_item), (VALID, second_item)):
        mask = (ds.users == user) & (ds.labels == label)
        assert ds.item_map.to_ids(ds.items[mask]).tolist() == [item]


def test_ml100k_cold_10_items_by_md5(shared_data):
    ds = load_dataset(
        DataConfig(dataset="ml-100k", path=str(shared_data / "ml-100k"), split="cold-10")
    )
    ids = ds.item_map.ids
    test_items = set(ids[ds.items[ds.labels == TEST]])
    train_items = set(ids[ds.items[ds.labels == TRAIN]])
    valid_items = set(ids[ds.items[ds.labels == VALID]])
    assert test_items and train_items and valid_items
    assert all(md5_bucket(i) == 0 for i in test_items)
    assert not any(md5_bucket(i) == 0 for i in train_items)
    assert all(md5_bucket(i) == 1 for i in valid_items)
    raw = _read_u_data(shared_data / "ml-100k")
    cold_rows = int(sum(md5_bucket(i) == 0 for i in raw["item"]))
    assert int((ds.labels == TEST).sum()) == cold_rows  # every ml-100k user keeps a warm item


def test_beauty_ratio_811_against_slow_reimplementation(shared_data):
    folder = shared_data / "amazon-p5" / "beauty"
    expected: list[int] = []
    for line in (folder / "sequential_data.txt").read_text().splitlines():
        items = line.split()[1:]
        seen: list[str] = []
        for i in items:
            if i not in seen:
                seen.append(i)
        n = len(seen)
        if n < 3:
            expected += [TRAIN] * n
            continue
        k = max(1, (n + 5) // 10)
        expected += [TRAIN] * (n - 2 * k) + [VALID] * k + [TEST] * k
    raw = read_amazon_p5(folder)
    got = split_ratio_811(raw.interactions)
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.int8))
    counts = Counter(expected)
    assert counts[TRAIN] + counts[VALID] + counts[TEST] == 198_502
    ds = build_split_dataset(raw, "ratio-811")
    assert Counter(ds.labels.tolist()) == counts
    assert ds.n_users == 22_363
