"""Full-ranking top-k and protocol evaluation over the whole (or a candidate) catalogue.

One code path does the masking and the top-k: ``iter_topk`` (used by exporters) and
``evaluate`` both go through ``_iter_masked_scores`` and ``_topk_masked``, so a list that is
scored is exactly the list that is exported.

Conventions:
  * Invalid items are those excluded for the user (stored non-zeros of ``exclude``), outside
    ``candidates``, or scored ``-inf`` by the model. They are never returned: when fewer than
    ``k`` valid items remain, the trailing slots hold item ``-1`` and score ``-inf``.
  * Ties: the top-k list is ordered by score descending, then item index ascending (in the
    global item index space), independent of batch size and of ``torch.topk``'s tie order.
  * MRR is over the full ranking, with the same tie order as the top-k lists: the first
    relevant item is the best-scoring one (lowest index among equals), and its rank is 1 +
    the number of valid items scoring higher, or scoring the same with a lower index (so a
    constant scorer gets no credit from ties). A user whose relevant items are all
    excluded gets reciprocal rank 0.
  * Relevant items that are also excluded stay in ``|relevant|`` (the protocol's relevant set
    is the split's items) but can never be hits. Under the protocol this cannot happen,
    since duplicate (user, item) pairs are dropped before splitting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from recsys.eval.metrics import metrics_from_hits, reciprocal_rank

ScoreFn = Callable[[torch.LongTensor], torch.Tensor]
"""Given user indices ``(B,)``, return scores over the full catalogue ``(B, n_items)``."""

NEG_INF = float("-inf")
# scores a chunk holds at most: its users shrink as the catalogue grows (a 1,024-user chunk
# of a 1M-item catalogue would be 4 GB of float32 scores, and its masked copy 4 GB more)
MAX_CHUNK_SCORES = 2**27


def _as_csr(m, name: str) -> sp.csr_matrix:
    if not sp.issparse(m):
        raise TypeError(f"{name} must be a scipy.sparse matrix, got {type(m).__name__}")
    return sp.csr_matrix(m)


def _check_users(users: np.ndarray) -> np.ndarray:
    users = np.asarray(users)
    if users.ndim != 1:
        raise ValueError(f"users must be 1-D, got shape {users.shape}")
    if users.size and not np.issubdtype(users.dtype, np.integer):
        raise TypeError(f"users must be integer indices, got dtype {users.dtype}")
    return users.astype(np.int64, copy=False)


def _check_candidates(candidates: np.ndarray | None, n_items: int | None) -> np.ndarray | None:
    if candidates is None:
        return None
    cand = np.asarray(candidates)
    if cand.ndim != 1 or cand.size == 0:
        raise ValueError("candidates must be a non-empty 1-D array of item indices")
    if not np.issubdtype(cand.dtype, np.integer):
        raise TypeError(f"candidates must be integer item indices, got dtype {cand.dtype}")
    cand = cand.astype(np.int64, copy=False)
    # Strictly increasing = sorted and unique: needed for the index tie-break and mapping.
    if np.any(np.diff(cand) <= 0):
        raise ValueError("candidates must be sorted ascending without duplicates")
    if cand[0] < 0 or (n_items is not None and cand[-1] >= n_items):
        raise ValueError(f"candidates must lie in [0, {n_items})")
    return cand


def _iter_masked_scores(
    score_fn: ScoreFn,
    users: np.ndarray,
    exclude: sp.csr_matrix | None,
    candidates: np.ndarray | None,
    batch_size: int,
) -> Iterator[tuple[np.ndarray, Tensor]]:
    """Yield ``(users_chunk (B,), scores (B, n_cand))`` with invalid entries set to ``-inf``.

    Columns are candidate positions (``candidates[j]`` is column ``j``) or, without
    candidates, item indices. The yielded tensor is a private copy: callers may mutate it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cand_pos: np.ndarray | None = None  # global item -> candidate column, -1 if not a candidate
    cand_t: Tensor | None = None
    for start in range(0, len(users), batch_size):
        chunk = users[start : start + batch_size]
        # no_grad per batch, not around the generator: a suspended generator would otherwise
        # leave grad disabled in the caller's code between yields.
        with torch.no_grad():
            scores = score_fn(torch.from_numpy(chunk))
            if not isinstance(scores, Tensor) or scores.dim() != 2 or scores.shape[0] != len(chunk):
                shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores)
                raise ValueError(
                    f"score_fn must return ({len(chunk)}, n_items) scores, got {shape}"
                )
            n_items = scores.shape[1]
            if exclude is not None and exclude.shape[1] != n_items:
                raise ValueError(
                    f"score_fn returned {n_items} items but exclude has {exclude.shape[1]} columns"
                )
            scores = scores.detach()
            fresh = getattr(score_fn, "fresh_scores", False)
            if not scores.is_floating_point():
                # -inf needs a float; float64 keeps large integer scores (counts) exact.
                scores, fresh = scores.to(torch.float64), True
            if _has_nan(scores):
                raise ValueError("score_fn returned NaN scores; the ranking would be undefined")
            if candidates is not None:
                if cand_t is None:
                    if candidates[-1] >= n_items:
                        raise ValueError(f"candidates exceed the {n_items} scored items")
                    cand_t = torch.from_numpy(candidates).to(scores.device)
                    cand_pos = np.full(n_items, -1, dtype=np.int64)
                    cand_pos[candidates] = np.arange(len(candidates))
                scores = scores.index_select(1, cand_t)  # copy
            elif not fresh:
                scores = scores.clone()  # never mutate the model's tensor
            if exclude is not None:
                sub = exclude[chunk]
                rows = np.repeat(np.arange(len(chunk)), np.diff(sub.indptr))
                cols = sub.indices.astype(np.int64, copy=False)
                keep = sub.data != 0  # explicitly stored zeros are not exclusions
                rows, cols = rows[keep], cols[keep]
                if cand_pos is not None:
                    cols = cand_pos[cols]
                    rows, cols = rows[cols >= 0], cols[cols >= 0]
                if len(rows):
                    r = torch.from_numpy(rows).to(scores.device)
                    c = torch.from_numpy(cols).to(scores.device)
                    scores[r, c] = NEG_INF
        yield chunk, scores


def _has_nan(scores: Tensor) -> bool:
    """Whether ``scores (B, n)`` holds a NaN: a row sum is NaN when the row holds one (or
    both infinities, which the exact check then clears): one read of the scores instead
    of a boolean copy and a second pass."""
    row_sums = scores.sum(dim=1)
    suspects = torch.isnan(row_sums)
    if not bool(suspects.any()):
        return False
    return bool(torch.isnan(scores[suspects]).any())


def _topk_masked(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Deterministic top-k of masked scores ``(B, n)``: ``(cols (B, k), values (B, k))``.

    Order: score descending, then column ascending. Slots holding ``-inf`` (invalid items)
    get column ``-1``; when ``k > n`` the extra slots are padded the same way.
    """
    n_rows, n_cols = scores.shape
    k_eff = min(k, n_cols)
    # One more than asked: an item outside the top k ties with the k-th value exactly when
    # the (k+1)-th value equals it (no second pass over the scores to count them).
    vals, cols = torch.topk(scores, min(k_eff + 1, n_cols), dim=1, sorted=True)
    if k_eff < n_cols:
        boundary_tie = vals[:, k_eff] == vals[:, k_eff - 1]
    else:  # every column is in the list: nothing outside it to tie with
        boundary_tie = torch.zeros(n_rows, dtype=torch.bool, device=scores.device)
    vals, cols = vals[:, :k_eff], cols[:, :k_eff]
    if k_eff > 0:
        # torch.topk picks an arbitrary subset of items tied with the k-th value. Where such
        # boundary ties exist, pick the tied items with the lowest columns instead. Rows whose
        # k-th value is -inf are skipped: those slots are invalid and blanked below anyway.
        kth = vals[:, -1:]  # (B, 1)
        tie_rows = torch.nonzero(boundary_tie & (kth[:, 0] != NEG_INF)).squeeze(1)
        if tie_rows.numel():
            sub, kth_s, top = scores[tie_rows], kth[tie_rows], cols[tie_rows]
            # topk's output is sorted, so its first n_above slots are the items strictly
            # above the k-th value; the remaining slots must be the lowest tied columns.
            n_above = (vals[tie_rows] > kth_s).sum(dim=1, keepdim=True)
            # Lowest tied columns via a top-k over (n - column) on tied entries: these keys
            # are distinct, so this top-k has no ties of its own.
            rev = torch.arange(n_cols, 0, -1, dtype=torch.int32, device=scores.device)
            key = torch.where(sub == kth_s, rev, torch.zeros_like(rev))
            lowest_tied = n_cols - torch.topk(key, k_eff, dim=1).values.long()  # ascending
            slot = torch.arange(k_eff, device=scores.device)[None, :]
            tied = torch.gather(lowest_tied, 1, (slot - n_above).clamp(min=0))
            cols[tie_rows] = torch.where(slot < n_above, top, tied)
        # Canonical order of the chosen set: sort by column, then a *stable* descending sort
        # by score keeps lower columns first among equal scores.
        cols, _ = torch.sort(cols, dim=1)
        vals = torch.gather(scores, 1, cols)
        vals, perm = torch.sort(vals, dim=1, descending=True, stable=True)
        cols = torch.gather(cols, 1, perm)
    cols = torch.where(vals == NEG_INF, torch.full_like(cols, -1), cols)
    if k_eff < k:
        pad = k - k_eff
        cols = torch.cat([cols, cols.new_full((n_rows, pad), -1)], dim=1)
        vals = torch.cat([vals, vals.new_full((n_rows, pad), NEG_INF)], dim=1)
    return cols, vals


def _to_global(cols: Tensor, cand_t: Tensor | None) -> Tensor:
    """Map candidate columns ``(B, k)`` to global item indices, keeping ``-1`` slots."""
    if cand_t is None:
        return cols
    mapped = cand_t[cols.clamp(min=0)]
    return torch.where(cols >= 0, mapped, cols)


def iter_topk(
    score_fn: ScoreFn,
    users: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None,
    candidates: np.ndarray | None = None,
    batch_size: int = 1024,
) -> Iterator[tuple[np.ndarray, torch.LongTensor, torch.Tensor]]:
    """Top-k recommendations per user, one chunk of users at a time.

    Args:
        score_fn: user indices ``(B,)`` -> scores ``(B, n_items)`` over the full catalogue.
        users: ``(U,)`` user row indices, in the order chunks should be produced.
        k: list length, >= 1.
        exclude: ``(n_users, n_items)``; stored non-zeros of row ``u`` are never recommended
            to ``u`` (train, and valid when scoring test). None = no exclusion.
        candidates: sorted unique item indices to rank among (e.g. cold items); None = all.
        batch_size: users scored per chunk; memory is ``O(batch_size * n_items)``.

    Yields:
        ``(users_chunk (B,), items (B, k) long, scores (B, k))`` on CPU, items in the global
        item index space, ordered by score descending then item index ascending. Slots with
        no valid item hold item ``-1`` and score ``-inf``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    users = _check_users(users)
    exclude = None if exclude is None else _as_csr(exclude, "exclude")
    n_items = None if exclude is None else exclude.shape[1]
    cand = _check_candidates(candidates, n_items)
    cand_t = None if cand is None else torch.from_numpy(cand)
    for chunk, scores in _iter_masked_scores(score_fn, users, exclude, cand, batch_size):
        cols, vals = _topk_masked(scores, k)
        yield chunk, _to_global(cols.cpu(), cand_t), vals.cpu()


def per_user_metrics(
    score_fn: ScoreFn,
    truth: sp.csr_matrix,
    exclude: sp.csr_matrix | None,
    ks: Sequence[int] = (5, 10, 20),
    candidates: np.ndarray | None = None,
    batch_size: int = 1024,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The per-user values that :func:`evaluate` averages (for paired comparisons).

    Returns ``users (N,)``, the evaluated user rows (those with a relevant item, ascending),
    and ``{"recall@k", "ndcg@k", "hr@k", "rr"}``, each ``(N,)`` float64 aligned with
    ``users``; ``rr`` is the reciprocal rank whose mean is ``mrr``.
    """
    return _evaluate(score_fn, truth, exclude, ks, candidates, batch_size, False)[1:]


def sample_users(truth: sp.csr_matrix, max_users: int | None, seed: int) -> sp.csr_matrix:
    """``truth`` with the relevant items of at most ``max_users`` of its users kept (a
    uniform draw, seeded, among the users with any); every user when None or enough."""
    truth = _as_csr(truth, "truth")
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    if max_users is None or len(users) <= max_users:
        return truth
    keep = np.random.default_rng(seed).choice(users, max_users, replace=False)
    mask = np.zeros(truth.shape[0], dtype=truth.dtype)
    mask[keep] = 1
    out = sp.diags(mask) @ truth
    out.eliminate_zeros()
    return out.tocsr()


def evaluate(
    score_fn: ScoreFn,
    truth: sp.csr_matrix,
    exclude: sp.csr_matrix | None,
    ks: Sequence[int] = (5, 10, 20),
    candidates: np.ndarray | None = None,
    batch_size: int = 1024,
    progress: bool = False,
    with_mrr: bool = True,
) -> dict[str, float]:
    """Full-ranking evaluation as in ``BENCHMARK_PROTOCOL.md``.

    Args:
        score_fn: user indices ``(B,)`` -> scores ``(B, n_items)``.
        truth: ``(n_users, n_items)``; stored non-zeros are the relevant items of the split
            being scored. Intersected with ``candidates`` when given.
        exclude: ``(n_users, n_items)`` items masked per user (train, plus valid for test).
        ks: cut-offs.
        candidates: sorted unique item indices ranked among (``cold-10``: the cold items).
        batch_size: users per chunk (fewer where ``batch_size x n_items`` would pass
            :data:`MAX_CHUNK_SCORES`); the score matrix is never materialised beyond one
            chunk.
        progress: show a tqdm progress bar.
        with_mrr: compute MRR, a second pass over every score (a third of the time with
            a cheap scorer); False leaves ``mrr`` out (training's validation, when it does
            not monitor it).

    Returns:
        ``recall@k``, ``ndcg@k``, ``hr@k``, ``coverage@k`` for each ``k``, ``mrr`` and
        ``n_users`` (users with >= 1 relevant item, the ones averaged over). Coverage is the
        number of distinct items in any evaluated user's top-k over the number of candidate
        items. With no evaluable user the metrics are NaN and ``n_users`` is 0.
    """
    return _evaluate(score_fn, truth, exclude, ks, candidates, batch_size, progress, with_mrr)[0]


def _evaluate(
    score_fn: ScoreFn,
    truth: sp.csr_matrix,
    exclude: sp.csr_matrix | None,
    ks: Sequence[int],
    candidates: np.ndarray | None,
    batch_size: int,
    progress: bool,
    with_mrr: bool = True,
) -> tuple[dict[str, float], np.ndarray, dict[str, np.ndarray]]:
    """:func:`evaluate`'s metrics, the evaluated users and their per-user values."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive cut-offs, got {ks}")
    max_k = ks[-1]
    truth = _as_csr(truth, "truth")
    n_items = truth.shape[1]
    if exclude is not None:
        exclude = _as_csr(exclude, "exclude")
        if exclude.shape != truth.shape:
            raise ValueError(f"exclude shape {exclude.shape} != truth shape {truth.shape}")
    cand = _check_candidates(candidates, n_items)
    n_cand = n_items if cand is None else len(cand)

    # Binary relevance from stored non-zeros, restricted to the candidates.
    truth = (truth != 0).astype(np.int8).tocsr()
    if cand is not None:
        is_cand = np.zeros(n_items, dtype=np.int8)
        is_cand[cand] = 1
        truth.data *= is_cand[truth.indices]  # drop relevant items outside the candidates
        truth.eliminate_zeros()
    truth.sort_indices()
    n_rel_all = np.diff(truth.indptr)
    users = np.flatnonzero(n_rel_all > 0).astype(np.int64)

    keys = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hr")]
    per_user: dict[str, list[np.ndarray]] = {key: [] for key in [*keys, "rr"]}
    if len(users) == 0:
        out = dict.fromkeys(keys, math.nan)
        out.update({f"coverage@{k}": math.nan for k in ks}, mrr=math.nan, n_users=0)
        return out, users, {key: np.zeros(0) for key in per_user}

    sums = dict.fromkeys(keys, 0.0)
    rr_sum = 0.0
    # Best (0-based) list position at which each item appeared for any user; coverage@k
    # counts items whose best position is < k. One int array instead of one set per k.
    best_pos = np.full(n_items, max_k, dtype=np.int64)
    cand_t = None if cand is None else torch.from_numpy(cand)
    cand_pos = None  # global item -> column of the (candidate-restricted) scores
    if cand is not None:
        cand_pos = np.full(n_items, -1, dtype=np.int64)
        cand_pos[cand] = np.arange(n_cand)

    # metrics do not depend on the chunking: bound its memory on big catalogues
    batch_size = max(1, min(batch_size, MAX_CHUNK_SCORES // max(n_items, 1)))
    batches = _iter_masked_scores(score_fn, users, exclude, cand, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=math.ceil(len(users) / batch_size), desc="evaluate")
    for chunk, scores in batches:
        cols, _ = _topk_masked(scores, max_k)
        items = _to_global(cols.cpu(), cand_t)  # (B, max_k)

        # Relevant (row, item) pairs of this chunk, kept sparse: a user has few of them.
        sub = truth[chunk]
        r = np.repeat(np.arange(len(chunk)), np.diff(sub.indptr))
        c = sub.indices.astype(np.int64, copy=False)  # global item ids, all candidates
        flat = items.numpy()
        # Membership via (row, item) keys; -1 slots map to keys no relevant pair has.
        top_keys = np.arange(len(chunk))[:, None] * (n_items + 1) + flat
        hits = np.isin(top_keys, r * (n_items + 1) + c) & (flat >= 0)
        n_rel = torch.from_numpy(n_rel_all[chunk])
        chunk_metrics = metrics_from_hits(torch.from_numpy(hits), n_rel, ks)
        for key in keys:
            sums[key] += float(chunk_metrics[key].sum())
            per_user[key].append(chunk_metrics[key].numpy())

        pos = np.broadcast_to(np.arange(max_k), flat.shape)
        valid = flat >= 0
        np.minimum.at(best_pos, flat[valid], pos[valid])
        if not with_mrr:
            continue
        # Full-ranking MRR: best relevant score per user; excluded/invalid items are -inf,
        # so they neither count as relevant nor as items ranked above it.
        c_s = c if cand_pos is None else cand_pos[c]
        r_t = torch.from_numpy(r).to(scores.device)
        rel_scores = scores[r_t, torch.from_numpy(c_s).to(scores.device)]
        best_rel = torch.full((len(chunk),), NEG_INF, dtype=scores.dtype, device=scores.device)
        best_rel = best_rel.scatter_reduce(0, r_t, rel_scores, reduce="amax")
        # Among relevant items tied at the best score, the lowest index comes first.
        c_t = torch.from_numpy(np.asarray(c_s, dtype=np.int64)).to(scores.device)
        width = scores.shape[1]
        at_best = rel_scores == best_rel[r_t]
        first = torch.full((len(chunk),), width, dtype=torch.long, device=scores.device)
        first = first.scatter_reduce(0, r_t[at_best], c_t[at_best], reduce="amin")
        column = torch.arange(width, device=scores.device)
        ahead = (scores > best_rel[:, None]) | (
            (scores == best_rel[:, None]) & (column[None, :] < first[:, None])
        )
        n_above = ahead.sum(dim=1, dtype=torch.int32).long()
        rank = torch.where(best_rel > NEG_INF, n_above + 1, torch.zeros_like(n_above))
        rr = reciprocal_rank(rank.cpu())
        rr_sum += float(rr.sum())
        per_user["rr"].append(rr.numpy())  # float64, like the other metrics

    n_users = len(users)
    out: dict[str, float] = {key: sums[key] / n_users for key in keys}
    for k in ks:
        out[f"coverage@{k}"] = float(np.count_nonzero(best_pos < k)) / n_cand
    if with_mrr:
        out["mrr"] = rr_sum / n_users
    else:
        per_user.pop("rr")
    out["n_users"] = n_users
    return out, users, {key: np.concatenate(parts) for key, parts in per_user.items()}
