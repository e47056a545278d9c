"""Per-user ranking metrics computed from hit matrices (pure torch, no I/O).

Conventions follow ``BENCHMARK_PROTOCOL.md``: binary relevance, rank ``r`` (1-based) is
discounted by ``1 / log2(r + 1)``, and the ideal DCG places ``min(n_relevant, k)`` hits at the
top. Every function returns one value per user so that callers can average over whichever
user set the protocol asks for (and sum across batches without storing all users).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def rank_discounts(k: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """DCG discounts ``1 / log2(r + 1)`` for ranks ``r = 1..k``; shape ``(k,)``."""
    ranks = torch.arange(1, k + 1, dtype=dtype, device=device)
    return 1.0 / torch.log2(ranks + 1.0)


def _check_ks(ks: Sequence[int], max_k: int) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("ks must name at least one cut-off")
    for k in ks:
        if k < 1 or k > max_k:
            raise ValueError(f"cut-off k={k} must satisfy 1 <= k <= {max_k} (columns of hits)")
    return ks


def metrics_from_hits(hits: Tensor, n_relevant: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Recall, NDCG and hit rate at each cut-off, per user.

    Args:
        hits: ``(B, K)`` bool; ``hits[b, j]`` is True when the item at rank ``j + 1`` of user
            ``b``'s list is relevant. Padding slots (no item) must be False.
        n_relevant: ``(B,)`` long, number of relevant items per user; every entry must be >= 1
            (users without relevant items are not part of the protocol's average).
        ks: cut-offs, each ``1 <= k <= K``.

    Returns:
        ``{"recall@k", "ndcg@k", "hr@k"}`` for each ``k``, each a ``(B,)`` float64 tensor:
        recall = hits in top-k / n_relevant; ndcg = DCG@k / IDCG@k with IDCG over
        ``min(n_relevant, k)`` ideal hits; hr = 1.0 when any of the top-k is a hit.
    """
    if hits.dim() != 2:
        raise ValueError(f"hits must be 2-D (B, K), got shape {tuple(hits.shape)}")
    n_users, max_k = hits.shape
    if n_relevant.shape != (n_users,):
        raise ValueError(f"n_relevant must have shape ({n_users},), got {tuple(n_relevant.shape)}")
    ks = _check_ks(ks, max_k)
    if n_users and bool((n_relevant < 1).any()):
        raise ValueError("every user needs n_relevant >= 1; drop users with no relevant item")

    # float64 so that averaging tens of thousands of users does not drift.
    h = hits.to(torch.float64)
    n_rel = n_relevant.to(device=h.device, dtype=torch.float64)
    disc = rank_discounts(max_k, device=h.device)
    n_hits = torch.cumsum(h, dim=1)  # (B, K): hits within the top j+1
    dcg = torch.cumsum(h * disc, dim=1)  # (B, K)
    ideal = torch.cumsum(disc, dim=0)  # (K,): IDCG when j+1 items are relevant

    out: dict[str, Tensor] = {}
    for k in ks:
        hits_k = n_hits[:, k - 1]
        n_ideal = torch.clamp(n_relevant.to(h.device), max=k)  # min(n_relevant, k) >= 1
        out[f"recall@{k}"] = hits_k / n_rel
        out[f"ndcg@{k}"] = dcg[:, k - 1] / ideal[n_ideal - 1]
        out[f"hr@{k}"] = (hits_k > 0).to(torch.float64)
    return out


def reciprocal_rank(rank: Tensor) -> Tensor:
    """``1 / rank`` per user, 0 where no relevant item was ranked.

    Args:
        rank: ``(B,)`` integer, the 1-based rank of the first relevant item; ``0`` (or any
            value < 1) means the user has no rankable relevant item.

    Returns:
        ``(B,)`` float64.
    """
    r = rank.to(torch.float64)
    # Guard the division: ranks < 1 encode "no relevant item" and must score 0, not inf.
    return torch.where(r >= 1, 1.0 / torch.clamp(r, min=1.0), torch.zeros_like(r))


def first_hit_rank(hits: Tensor) -> Tensor:
    """1-based rank of the first hit in each row of ``hits`` ``(B, K)``; 0 if none. ``(B,)``.

    This is the truncated (top-K) rank; full-ranking MRR needs all scores, see
    ``recsys.eval.ranking.evaluate``.
    """
    if hits.dim() != 2:
        raise ValueError(f"hits must be 2-D (B, K), got shape {tuple(hits.shape)}")
    any_hit = hits.any(dim=1)
    # argmax of an int tensor returns the first maximal index, i.e. the first True.
    first = hits.to(torch.int8).argmax(dim=1) + 1
    return torch.where(any_hit, first, torch.zeros_like(first))
