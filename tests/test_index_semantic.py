"""Semantic-ID candidates from a hand-made semantic_ids/items.parquet."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from recsys.artifacts import RunFolder
from recsys.errors import ArtifactError, RecsysError
from recsys.index.faiss_index import IndexConfig, ItemIndex
from recsys.index.semantic import SemanticCandidatesConfig, SemanticIds, semantic_ids_path

# Ten items i0..i9 (and i10, i11 without an ID): codes (c0, c1), suffix.
TABLE = pd.DataFrame(
    {
        "item_id": ["i0", "i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8", "i9"],
        "c0": [0, 0, 0, 0, 1, 1, 1, 2, 2, 3],
        "c1": [0, 0, 1, 1, 0, 0, 1, 0, 0, 0],
        "suffix": [0, 1, 0, 1, 0, 1, 0, 0, 1, 0],
    }
).astype({"c0": "int32", "c1": "int32", "suffix": "int32"})


class _Ids:
    """A stand-in for IdMap: the tests' items are i0..i11 at indices 0..11."""

    ids = np.array([f"i{n}" for n in range(12)], dtype=object)

    def __contains__(self, x):
        return x in set(self.ids)

    def __len__(self):
        return 12

    def to_index(self, values):
        return np.array([int(v[1:]) for v in values])


@pytest.fixture
def sids(tmp_path) -> SemanticIds:
    run = RunFolder(tmp_path)
    semantic_ids_path(run).parent.mkdir(parents=True)
    TABLE.to_parquet(semantic_ids_path(run))
    out = SemanticIds.load(run, _Ids())
    assert out is not None
    return out


def test_load_aligns_with_the_item_map(sids, tmp_path):
    assert sids.levels == 2 and len(sids) == 12
    assert sids.get(3) == (0, 1, 1) and sids.get(9) == (3, 0, 0)
    assert sids.get(10) is None and sids.get(11) is None and sids.get(99) is None
    assert SemanticIds.load(RunFolder(tmp_path / "none"), _Ids()) is None

    def bad(frame, match):
        root = tmp_path / f"bad-{match}"
        path = semantic_ids_path(RunFolder(root))
        path.parent.mkdir(parents=True)
        frame.to_parquet(path)
        with pytest.raises(ArtifactError, match=match):
            SemanticIds.load(RunFolder(root), _Ids())

    bad(TABLE.drop(columns="suffix"), "needs columns")
    bad(TABLE.rename(columns={"c1": "c2"}), "c0..c1")
    bad(TABLE.assign(c0=TABLE.c0.astype(float)), "must be integer")
    bad(TABLE.assign(item_id=["ghost"] + TABLE.item_id[1:].tolist()), "ghost")
    bad(TABLE.assign(item_id=["i1"] + TABLE.item_id[1:].tolist()), "repeats")


def test_candidates_follow_the_most_frequent_prefixes(sids):
    cfg = SemanticCandidatesConfig(prefix_len=1, n_prefixes=1)
    # History: two items with c0 = 1, one with c0 = 0 → the c0 = 1 bucket.
    assert sids.candidates(np.array([4, 6, 0]), cfg).tolist() == [4, 5, 6]
    cfg2 = cfg.model_copy(update={"n_prefixes": 2})
    assert sids.candidates(np.array([4, 6, 0]), cfg2).tolist() == [4, 5, 6, 0, 1, 2, 3]
    # Ties: first seen in the history wins; max_candidates truncates.
    cfg3 = SemanticCandidatesConfig(prefix_len=1, n_prefixes=1, max_candidates=2)
    assert sids.candidates(np.array([7, 0]), cfg3).tolist() == [7, 8]
    # Finer prefix: (0, 1) → items 2, 3.
    two = SemanticCandidatesConfig(prefix_len=2, n_prefixes=1)
    assert sids.candidates(np.array([3]), two).tolist() == [2, 3]
    # Items without an ID, out-of-range ids and a disabled config give nothing.
    assert sids.candidates(np.array([10, 11, 50]), cfg).size == 0
    off = SemanticCandidatesConfig(enabled=False)
    assert sids.candidates(np.array([4]), off).size == 0
    # Default prefix length: the longest with >= min_bucket items per bucket on average.
    assert sids.prefix_len(SemanticCandidatesConfig(min_bucket=2.5)) == 1  # 10 items / 4
    assert sids.prefix_len(SemanticCandidatesConfig(min_bucket=1.6)) == 2  # 10 / 6 = 1.67


def test_added_items_get_unique_ids_and_join_buckets(sids):
    cfg = SemanticCandidatesConfig(prefix_len=1, n_prefixes=1)
    sids.candidates(np.array([4]), cfg)  # warm the bucket cache: it must be carried over
    new, sid = sids.with_added(np.array([1, 0, 0]))  # (1, 0, 0) is i4's: suffix moves on
    assert sid == (1, 0, 2) and new.get(12) == (1, 0, 2)
    assert new.candidates(np.array([4]), cfg).tolist() == [4, 5, 6, 12]
    assert sids.candidates(np.array([4]), cfg).tolist() == [4, 5, 6]  # the original: as was
    newer, sid2 = new.with_added(np.array([5, 5, 7]))  # unused codes keep their suffix
    assert sid2 == (5, 5, 7) and newer.candidates(np.array([13]), cfg).tolist() == [13]
    with pytest.raises(RecsysError, match="2 codes"):
        sids.with_added(np.array([1, 2, 3, 4]))


def test_candidates_merge_with_ann_hits_and_are_rescored(sids):
    """ANN ∪ semantic-ID bucket, deduplicated, ranked by exact dot product, against an
    independent reference computed from FAISS' raw hits and the table."""
    rng = np.random.default_rng(3)
    n = 2000
    items = rng.normal(size=(n, 16)).astype(np.float32)
    # The ten table items get big vectors: the bucket's items are strong candidates.
    index = ItemIndex.build(items, IndexConfig(kind="ivf", nlist=40, nprobe=1))
    big = SemanticIds(
        np.concatenate([sids.codes, np.zeros((n - 12, 2), np.int64)]),
        np.concatenate([sids.suffix, np.arange(n - 12)]),
        np.concatenate([sids.present, np.zeros(n - 12, bool)]),
    )
    cfg = SemanticCandidatesConfig(prefix_len=1, n_prefixes=2)
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    history = [np.array([4, 6, 0]), np.array([9]), np.array([7, 8])] * 6 + [np.array([11])] * 2
    extra = [big.candidates(h, cfg) for h in history]
    k = 10
    ids, scores = index.search(queries, k, extra=extra)

    # Reference: FAISS' own k + 1 hits (what search fetches first) ∪ the bucket by pandas.
    q_aug = np.zeros((len(queries), index.meta.index_dim), np.float32)
    q_aug[:, :16] = queries
    _, hits = index.search_index.search(q_aug, k + 1)
    codes = TABLE.assign(idx=TABLE.item_id.str[1:].astype(int))
    from_bucket = 0
    for row, hist in enumerate(history):
        hist_c0 = codes.set_index("idx").c0.reindex(hist).dropna().astype(int)
        top = hist_c0.value_counts(sort=False).sort_values(ascending=False, kind="stable")
        bucket = set(codes[codes.c0.isin(top.index[:2])].idx)
        pool = np.array(sorted(set(hits[row][hits[row] >= 0].tolist()) | bucket))
        s = items[pool].astype(np.float64) @ queries[row].astype(np.float64)
        order = np.lexsort((pool, -s))[:k]
        assert ids[row].tolist() == pool[order].tolist()
        np.testing.assert_allclose(scores[row], s[order], rtol=1e-5)
        from_bucket += len(set(ids[row].tolist()) & (bucket - set(hits[row].tolist())))
    assert from_bucket > 0  # the buckets contributed items the ANN probe missed


def test_run_folder_semantic_ids_roundtrip(tmp_path_factory, tmp_path):
    """RunFolder.write_semantic_ids (what the semantic-ID models write) loads here."""
    from test_index import tiny_run

    run = tiny_run(tmp_path_factory)
    root = tmp_path / "run"
    shutil.copytree(run.root, root)
    copy = RunFolder(root)
    item_map = copy.item_map()
    n = len(item_map)
    sid = np.stack([np.arange(n) % 3, np.arange(n) % 2, np.arange(n) // 6], axis=1)
    copy.write_semantic_ids("items", item_map.ids, sid, {"levels": 2})
    loaded = SemanticIds.load(copy, item_map)
    assert loaded is not None and loaded.present.all()
    assert [loaded.get(i) for i in range(n)] == [tuple(r) for r in sid.tolist()]
