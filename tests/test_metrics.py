"""Tests for recsys.eval.metrics and recsys.eval.ranking (hand-computed + reference checks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.eval import ranking
from recsys.eval.metrics import first_hit_rank, metrics_from_hits, reciprocal_rank
from recsys.eval.ranking import evaluate, iter_topk, per_user_metrics

L3 = 1.0 / math.log2(3)  # discount of rank 2
L4 = 1.0 / math.log2(4)  # discount of rank 3 (= 0.5)


def csr(rows: list[set[int]], n_items: int) -> sp.csr_matrix:
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in sorted(items)]
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), n_items))


def table_fn(scores: torch.Tensor):
    return lambda users: scores[users]


# ---------------------------------------------------------------- metrics_from_hits


def test_metrics_from_hits_hand_computed():
    # user 0: relevant {2, 5}, ranked list [5, 1, 2, ...] -> hits [T, F, T]
    # user 1: 3 relevant, hits [F, T, F]
    # user 2: 1 relevant, hits [F, F, T]
    hits = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    n_rel = torch.tensor([2, 3, 1])
    m = metrics_from_hits(hits, n_rel, [1, 2, 3])
    # recall@1: [1/2, 0, 0]; recall@2: [1/2, 1/3, 0]; recall@3: [2/2, 1/3, 1/1]
    torch.testing.assert_close(m["recall@1"], torch.tensor([0.5, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(m["recall@2"], torch.tensor([0.5, 1 / 3, 0], dtype=torch.float64))
    torch.testing.assert_close(m["recall@3"], torch.tensor([1.0, 1 / 3, 1], dtype=torch.float64))
    # ndcg@2 user 0: DCG = 1/log2(2) = 1; IDCG = 1 + 1/log2(3) -> 1 / (1 + 1/log2(3)) = 0.6131
    # ndcg@2 user 1: DCG = 1/log2(3); IDCG over min(3, 2) = 2 -> (1/log2 3) / (1 + 1/log2 3)
    # ndcg@3 user 0: DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3) -> 1.5 / 1.6309 = 0.9197
    # ndcg@3 user 1: DCG = 1/log2(3); IDCG = 1 + 1/log2(3) + 1/log2(4)
    # ndcg@3 user 2: DCG = 1/log2(4) = 0.5; IDCG over min(1, 3) = 1 -> 1.0 -> 0.5
    exp2 = [1 / (1 + L3), L3 / (1 + L3), 0.0]
    exp3 = [1.5 / (1 + L3), L3 / (1 + L3 + L4), 0.5]
    torch.testing.assert_close(m["ndcg@2"], torch.tensor(exp2, dtype=torch.float64))
    torch.testing.assert_close(m["ndcg@3"], torch.tensor(exp3, dtype=torch.float64))
    assert m["ndcg@2"][0].item() == pytest.approx(0.61315, abs=1e-5)
    assert m["ndcg@3"][0].item() == pytest.approx(0.91972, abs=1e-5)
    torch.testing.assert_close(m["hr@1"], torch.tensor([1.0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(m["hr@2"], torch.tensor([1.0, 1, 0], dtype=torch.float64))
    torch.testing.assert_close(m["hr@3"], torch.tensor([1.0, 1, 1], dtype=torch.float64))


def test_metrics_from_hits_validation():
    hits = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="n_relevant"):
        metrics_from_hits(hits, torch.tensor([1, 0]), [1])
    with pytest.raises(ValueError, match="k=4"):
        metrics_from_hits(hits, torch.tensor([1, 1]), [4])


def test_reciprocal_and_first_hit_rank():
    hits = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert first_hit_rank(hits).tolist() == [3, 0, 1]
    rr = reciprocal_rank(torch.tensor([3, 0, 1]))
    torch.testing.assert_close(rr, torch.tensor([1 / 3, 0.0, 1.0], dtype=torch.float64))


# ---------------------------------------------------------------- iter_topk / evaluate

# One user, 6 items. Order by score: 3 (.9), 5 (.8), 1 (.5), 2 (.4), 4 (.2), 0 (.1).
S1 = torch.tensor([[0.1, 0.5, 0.4, 0.9, 0.2, 0.8]])


def test_evaluate_hand_computed_with_exclusion():
    # exclude {3} -> list [5, 1, 2, 4, 0]; relevant {2, 5} -> hits [T, F, T, F, F]
    res = evaluate(table_fn(S1), csr([{2, 5}], 6), csr([{3}], 6), ks=(2, 5))
    assert res["n_users"] == 1
    assert res["recall@2"] == pytest.approx(0.5)  # 1 of 2 relevant in top 2
    assert res["ndcg@2"] == pytest.approx(1 / (1 + L3))  # DCG 1, IDCG 1 + 1/log2 3
    assert res["recall@5"] == pytest.approx(1.0)
    assert res["ndcg@5"] == pytest.approx((1 + L4) / (1 + L3))  # hits at ranks 1 and 3
    assert res["hr@2"] == 1.0
    assert res["mrr"] == pytest.approx(1.0)  # item 5 is the best valid item
    assert res["coverage@2"] == pytest.approx(2 / 6)  # {5, 1}
    assert res["coverage@5"] == pytest.approx(5 / 6)  # everything but the excluded 3


def test_excluded_relevant_item_is_never_a_hit():
    # relevant {3, 2}, exclude {3}: list [5, 1, 2, 4, 0] -> only item 2 hits, at rank 3.
    # |relevant| stays 2 (the split's items), so recall@5 = 1/2; MRR = 1/3.
    res = evaluate(table_fn(S1), csr([{2, 3}], 6), csr([{3}], 6), ks=(1, 5))
    assert res["recall@1"] == 0.0
    assert res["recall@5"] == pytest.approx(0.5)
    assert res["ndcg@5"] == pytest.approx(L4 / (1 + L3))  # IDCG over min(2, 5) = 2
    assert res["mrr"] == pytest.approx(1 / 3)
    # all relevant excluded: the user still counts, and scores 0 everywhere
    res = evaluate(table_fn(S1), csr([{3}], 6), csr([{3}], 6), ks=(5,))
    assert res["n_users"] == 1
    assert res["recall@5"] == 0.0 and res["hr@5"] == 0.0 and res["mrr"] == 0.0


def test_candidates_restriction():
    cand = np.array([0, 2, 4, 5])
    # relevant {2, 3}: 3 is not a candidate -> relevant {2}; exclude {5}
    # candidate list: 2 (.4), 4 (.2), 0 (.1) -> hit at rank 1
    res = evaluate(table_fn(S1), csr([{2, 3}], 6), csr([{5}], 6), ks=(1, 3), candidates=cand)
    assert res["n_users"] == 1
    assert res["recall@1"] == 1.0 and res["ndcg@1"] == 1.0 and res["mrr"] == 1.0
    assert res["coverage@1"] == pytest.approx(1 / 4)  # {2} of 4 candidates
    assert res["coverage@3"] == pytest.approx(3 / 4)
    ((users, items, scores),) = iter_topk(table_fn(S1), np.array([0]), 4, csr([{5}], 6), cand)
    assert items.tolist() == [[2, 4, 0, -1]]  # global ids; the 4th slot is invalid
    # a user whose only relevant item is not a candidate is not evaluated
    res = evaluate(table_fn(S1), csr([{3}], 6), None, ks=(1,), candidates=cand)
    assert res["n_users"] == 0 and math.isnan(res["recall@1"])


def test_fewer_valid_items_than_k():
    scores = torch.tensor([[0.3, 0.1, 0.2, 0.4], [0.0, float("-inf"), 0.0, 0.0]])
    excl = csr([{3, 0}, set()], 4)
    out = list(iter_topk(table_fn(scores), np.array([0, 1]), 6, excl))
    assert len(out) == 1
    users, items, vals = out[0]
    assert users.tolist() == [0, 1]
    # user 0: items 2 (.2), 1 (.1), then invalid; k=6 > 4 items pads too
    # user 1: item 1 scored -inf by the model is invalid; ties 0, 2, 3 in index order
    assert items.tolist() == [[2, 1, -1, -1, -1, -1], [0, 2, 3, -1, -1, -1]]
    assert vals.dtype == torch.float32
    assert torch.isinf(vals[0, 2:]).all() and (vals[0, 2:] < 0).all()
    assert vals[0, :2].tolist() == pytest.approx([0.2, 0.1])
    assert torch.isinf(vals[1, 3:]).all()


def test_tie_break_is_lower_index_and_deterministic():
    n = 5000  # large rows, where torch.topk has no stable tie order
    scores = torch.zeros(3, n)
    scores[1, 4000:] = 1.0  # 1000 tied winners
    scores[2] = torch.arange(n) % 7 == 3  # ties at the top-k boundary
    scores[2, 10] = 2.0
    for bs in (1, 2, 3):
        out = list(iter_topk(table_fn(scores), np.arange(3), 5, None, batch_size=bs))
        items = torch.cat([o[1] for o in out])
        assert items[0].tolist() == [0, 1, 2, 3, 4]
        assert items[1].tolist() == [4000, 4001, 4002, 4003, 4004]
        assert items[2].tolist() == [10, 3, 17, 24, 31]
    # boundary ties with distinct scores above: [1, 2, 2, 2, 0] top-2 = items 1, 2
    small = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]])
    ((_, items, _),) = iter_topk(table_fn(small), np.array([0]), 2, None)
    assert items.tolist() == [[1, 2]]


def test_score_fn_tensor_not_mutated_and_integer_scores():
    table = torch.tensor([[3, 1, 2, 5]])
    before = table.clone()
    ((_, items, vals),) = iter_topk(table_fn(table), np.array([0]), 2, csr([{3}], 4))
    assert torch.equal(table, before)
    assert items.tolist() == [[0, 2]]
    assert vals.dtype == torch.float64 and vals.tolist() == [[3.0, 2.0]]


def test_mrr_ties_follow_the_list_order():
    # a constant scorer: the list is [0, 1, 2, 3]; relevant {2} sits at rank 3, not 1
    constant = torch.zeros(1, 4)
    assert evaluate(table_fn(constant), csr([{2}], 4), None, ks=(1,))["mrr"] == pytest.approx(1 / 3)
    # relevant {1, 3} tied with item 0 at the top: item 1 comes second
    scores = torch.tensor([[0.5, 0.5, 0.1, 0.5]])
    assert evaluate(table_fn(scores), csr([{1, 3}], 4), None, ks=(1,))["mrr"] == pytest.approx(
        1 / 2
    )


def test_nan_scores_rejected():
    scores = torch.tensor([[0.1, float("nan")]])
    with pytest.raises(ValueError, match="NaN"):
        list(iter_topk(table_fn(scores), np.array([0]), 1, None))


# ---------------------------------------------------------------- reference comparison


def reference_evaluate(scores, truth, exclude, ks, candidates=None):
    """Slow, obvious implementation of the protocol, with loops and sorted()."""
    n_users, n_items = len(scores), len(scores[0])
    cand = list(range(n_items)) if candidates is None else [int(i) for i in candidates]
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "hr")}
    rr, n_eval = 0.0, 0
    seen = {k: set() for k in ks}
    lists = {}
    per_user = {key: {} for key in [*sums, "rr"]}  # metric → {evaluated user: value}
    for u in range(n_users):
        rel = truth[u] & set(cand)
        valid = [i for i in cand if i not in exclude[u] and scores[u][i] != -math.inf]
        ranked = sorted(valid, key=lambda i: (-scores[u][i], i))
        lists[u] = ranked
        if not rel:
            continue
        n_eval += 1
        for k in ks:
            top = ranked[:k]
            seen[k].update(top)
            h = [i in rel for i in top]
            dcg = sum(1 / math.log2(r + 2) for r, x in enumerate(h) if x)
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(rel), k)))
            per_user[f"recall@{k}"][u] = sum(h) / len(rel)
            per_user[f"ndcg@{k}"][u] = dcg / idcg
            per_user[f"hr@{k}"][u] = 1.0 if any(h) else 0.0
            for m in ("recall", "ndcg", "hr"):
                sums[f"{m}@{k}"] += per_user[f"{m}@{k}"][u]
        first_hit = next((pos for pos, i in enumerate(ranked) if i in rel), None)
        # the full ranked list, ties by index like the top-k
        per_user["rr"][u] = 0.0 if first_hit is None else 1 / (1 + first_hit)
        rr += per_user["rr"][u]
    out = {key: v / n_eval for key, v in sums.items()}
    out.update({f"coverage@{k}": len(seen[k]) / len(cand) for k in ks})
    out["mrr"] = rr / n_eval
    out["n_users"] = n_eval
    return out, lists, per_user


def random_case(seed: int, n_users=50, n_items=40, ties=False):
    rng = np.random.default_rng(seed)
    s = rng.random((n_users, n_items)).astype(np.float32)
    if ties:
        s = np.round(s * 4) / 4  # 5 distinct values: lots of ties everywhere
    s[rng.random((n_users, n_items)) < 0.03] = -np.inf  # model-side invalid items
    truth = [set(np.flatnonzero(rng.random(n_items) < 0.08).tolist()) for _ in range(n_users)]
    excl = [set(np.flatnonzero(rng.random(n_items) < 0.3).tolist()) for _ in range(n_users)]
    excl[0] = set(range(n_items - 3))  # fewer than k valid items
    excl[1] |= truth[1]  # every relevant item excluded
    truth[2] = set()  # not evaluated
    return s, truth, excl


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("use_candidates", [False, True])
def test_against_reference(ties, use_candidates):
    s, truth, excl = random_case(7 + ties + 2 * use_candidates, ties=ties)
    n_users, n_items = s.shape
    cand = np.arange(0, n_items, 3) if use_candidates else None
    ks = (1, 5, 10, 20)
    exp, lists, _ = reference_evaluate(s.tolist(), truth, excl, ks, cand)
    fn = table_fn(torch.from_numpy(s))
    got = evaluate(fn, csr(truth, n_items), csr(excl, n_items), ks, cand, batch_size=16)
    assert set(got) == set(exp)
    assert got["n_users"] == exp["n_users"]
    for key, v in exp.items():
        assert got[key] == pytest.approx(v, abs=1e-6), key
    # the exported lists are the reference's lists, padded with -1
    k = 20
    for users, items, vals in iter_topk(fn, np.arange(n_users), k, csr(excl, n_items), cand, 13):
        for u, row, vrow in zip(users.tolist(), items.tolist(), vals.tolist(), strict=True):
            want = lists[u][:k]
            assert row == want + [-1] * (k - len(want)), u
            assert vrow[: len(want)] == pytest.approx([float(s[u, i]) for i in want])


@pytest.mark.parametrize("use_candidates", [False, True])
def test_per_user_metrics_against_reference(use_candidates):
    s, truth, excl = random_case(11 + use_candidates, ties=True)
    n_users, n_items = s.shape
    cand = np.arange(0, n_items, 3) if use_candidates else None
    ks = (1, 5, 20)
    _, _, want = reference_evaluate(s.tolist(), truth, excl, ks, cand)
    fn = table_fn(torch.from_numpy(s))
    users, got = per_user_metrics(fn, csr(truth, n_items), csr(excl, n_items), ks, cand, 16)
    assert users.tolist() == sorted(want["rr"])  # the evaluated users, ascending
    assert set(got) == set(want)
    for key, values in want.items():
        np.testing.assert_allclose(got[key], [values[u] for u in users.tolist()], atol=1e-9)
    # their means are evaluate()'s metrics
    summary = evaluate(fn, csr(truth, n_items), csr(excl, n_items), ks, cand, 16)
    assert got["rr"].mean() == pytest.approx(summary["mrr"], abs=1e-12)
    assert got["ndcg@5"].mean() == pytest.approx(summary["ndcg@5"], abs=1e-12)


def test_batch_size_invariance():
    s, truth, excl = random_case(3, ties=True)
    n_items = s.shape[1]
    fn = table_fn(torch.from_numpy(s))
    a = evaluate(fn, csr(truth, n_items), csr(excl, n_items), batch_size=7)
    b = evaluate(fn, csr(truth, n_items), csr(excl, n_items), batch_size=1000, progress=True)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key
    lists_a = [x[1] for x in iter_topk(fn, np.arange(50), 10, csr(excl, n_items), batch_size=7)]
    lists_b = [x[1] for x in iter_topk(fn, np.arange(50), 10, csr(excl, n_items))]
    assert torch.equal(torch.cat(lists_a), torch.cat(lists_b))


def test_evaluation_chunks_hold_at_most_max_chunk_scores(monkeypatch):
    """A big catalogue is ranked in fewer users a chunk (the score matrix stays bounded),
    to the same metrics."""
    s, truth, excl = random_case(4, ties=True)
    n_items = s.shape[1]
    scores = torch.from_numpy(s)
    seen: list[int] = []

    def fn(users: torch.Tensor) -> torch.Tensor:
        seen.append(len(users))
        return scores[users]

    whole = evaluate(fn, csr(truth, n_items), csr(excl, n_items), batch_size=1000)
    assert max(seen) > 3
    monkeypatch.setattr(ranking, "MAX_CHUNK_SCORES", 3 * n_items + n_items // 2)
    seen.clear()
    bounded = evaluate(fn, csr(truth, n_items), csr(excl, n_items), batch_size=1000)
    assert max(seen) == 3 and sum(seen) == whole["n_users"]
    assert bounded.keys() == whole.keys()
    for key in whole:  # sums taken over other chunks: equal up to rounding
        assert bounded[key] == pytest.approx(whole[key], rel=1e-12, abs=1e-12), key


def test_topk_matches_stable_sort_on_tie_heavy_scores():
    # integer scores in [0, 30) over 600 items: every row has ties at the top-k boundary
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 30, (40, 600), generator=gen).float()
    for users, items, vals in iter_topk(table_fn(scores), np.arange(40), 25, None, batch_size=16):
        want_vals, want = torch.sort(scores[users], dim=1, descending=True, stable=True)
        assert torch.equal(items, want[:, :25])
        assert torch.equal(vals, want_vals[:, :25])


def test_sample_users_keeps_whole_rows_of_a_seeded_sample():
    import scipy.sparse as sp

    from recsys.eval.ranking import sample_users

    rng = np.random.default_rng(0)
    truth = sp.random(50, 30, density=0.1, format="csr", random_state=rng)
    with_items = np.flatnonzero(truth.getnnz(axis=1) > 0)
    assert (
        sample_users(truth, None, 0) is not None
        and (sample_users(truth, None, 0) != truth).nnz == 0
    )
    assert (sample_users(truth, 10_000, 0) != truth).nnz == 0  # enough: every user
    got = sample_users(truth, 7, seed=3)
    kept = np.flatnonzero(got.getnnz(axis=1) > 0)
    assert len(kept) == 7 and set(kept) <= set(with_items)
    for u in kept:  # a sampled user keeps every relevant item
        assert got[u].toarray().tolist() == truth[u].toarray().tolist()
    assert (sample_users(truth, 7, seed=3) != got).nnz == 0  # the same users for the seed
    assert not np.array_equal(np.flatnonzero(sample_users(truth, 7, 4).getnnz(axis=1)), kept)
