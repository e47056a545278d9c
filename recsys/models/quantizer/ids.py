"""Semantic IDs from codes: collision disambiguation, the item <-> ID map, codebook stats."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def _as_codes(codes: Tensor | np.ndarray) -> Tensor:
    t = torch.as_tensor(codes)
    if t.dim() != 2 or t.shape[1] == 0:
        raise ValueError(f"codes must be a 2-D (N, L) integer array, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"codes must be integers, got {t.dtype}")
    return t.to("cpu", torch.long)


def assign_semantic_ids(codes: Tensor | np.ndarray, *, max_suffix: int | None = None) -> Tensor:
    """Append a disambiguating column: codes (N, L) -> semantic IDs (N, L+1).

    Items sharing the same code tuple get 0, 1, 2, ... in increasing item-index order (as
    in TIGER); an item whose tuple is unique gets 0, so the column is all zeros when
    nothing collides. The rows of the result are pairwise distinct. With ``max_suffix``,
    a ``ValueError`` is raised if a suffix would reach it (e.g. the token vocabulary size
    reserved for the last position).
    """
    c = _as_codes(codes)
    n = c.shape[0]
    if n == 0:
        return torch.zeros(0, c.shape[1] + 1, dtype=torch.long)
    _, inverse, counts = torch.unique(c, dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)  # groups, item-index order within each
    starts = torch.cumsum(counts, 0) - counts
    suffix = torch.empty(n, dtype=torch.long)
    suffix[order] = torch.arange(n) - starts[inverse[order]]
    if max_suffix is not None and int(suffix.max()) >= max_suffix:
        raise ValueError(
            f"{int(counts.max())} items share one code tuple; the disambiguating code would "
            f"need {int(suffix.max()) + 1} values but max_suffix is {max_suffix}"
        )
    return torch.cat([c, suffix[:, None]], dim=1)


@dataclass(frozen=True)
class SemanticIDMap:
    """A bijection between items and semantic-ID tuples."""

    item_to_sid: dict[Hashable, tuple[int, ...]]
    sid_to_item: dict[tuple[int, ...], Hashable]

    def __len__(self) -> int:
        return len(self.item_to_sid)

    def sid(self, item: Hashable) -> tuple[int, ...]:
        return self.item_to_sid[item]

    def item(self, sid: Sequence[int]) -> Hashable:
        return self.sid_to_item[tuple(int(v) for v in sid)]


def build_id_maps(
    semantic_ids: Tensor | np.ndarray, item_ids: Sequence[Hashable] | None = None
) -> SemanticIDMap:
    """Both directions of the item <-> semantic-ID map.

    ``semantic_ids`` (N, L+1) from :func:`assign_semantic_ids`; ``item_ids`` names row i
    (default: the row index i). Raises ``ValueError`` if the map would not be a bijection
    (two rows with the same ID, repeated or miscounted item ids).
    """
    s = _as_codes(semantic_ids)
    items: Sequence[Hashable] = range(s.shape[0]) if item_ids is None else list(item_ids)
    if len(items) != s.shape[0]:
        raise ValueError(f"{len(items)} item ids for {s.shape[0]} semantic IDs")
    tuples = [tuple(row) for row in s.tolist()]
    item_to_sid = dict(zip(items, tuples, strict=True))
    if len(item_to_sid) != len(tuples):
        raise ValueError("item ids are not unique")
    sid_to_item = {t: i for i, t in zip(items, tuples, strict=True)}
    if len(sid_to_item) != len(tuples):
        dup = len(tuples) - len(sid_to_item)
        raise ValueError(
            f"{dup} semantic IDs are repeated; run assign_semantic_ids on the codes first"
        )
    return SemanticIDMap(item_to_sid=item_to_sid, sid_to_item=sid_to_item)


def codebook_stats(codes: Tensor | np.ndarray, codebook_size: int) -> dict[str, float]:
    """Flat scalar stats of codes (N, L), ready for a CSV/Lightning logger.

    Per level ``l`` (0-based): ``utilization_l{l}`` (fraction of the K codes used at least
    once) and ``perplexity_l{l}`` (exp of the entropy of the code distribution, 1..K).
    Over full tuples: ``n_unique_ids``, ``collision_rate`` (fraction of items whose tuple
    is shared with another item, before disambiguation) and ``max_items_per_id``.
    """
    c = _as_codes(codes)
    n, levels = c.shape
    if n == 0:
        raise ValueError("codebook_stats needs at least one item")
    if c.min() < 0 or c.max() >= codebook_size:
        raise ValueError(f"codes must lie in [0, {codebook_size})")
    out: dict[str, float] = {"n_items": float(n)}
    utils = []
    for level in range(levels):
        counts = torch.bincount(c[:, level], minlength=codebook_size).double()
        p = counts[counts > 0] / n
        util = float((counts > 0).sum()) / codebook_size
        utils.append(util)
        out[f"utilization_l{level}"] = util
        out[f"perplexity_l{level}"] = math.exp(float(-(p * p.log()).sum()))
    out["utilization_mean"] = sum(utils) / levels
    _, tuple_counts = torch.unique(c, dim=0, return_counts=True)
    out["n_unique_ids"] = float(tuple_counts.numel())
    out["collision_rate"] = float(tuple_counts[tuple_counts > 1].sum()) / n
    out["max_items_per_id"] = float(tuple_counts.max())
    return out
