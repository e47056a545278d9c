"""A sampled step's users' pooled histories (``history_fanout``): each long history
estimated from a few of its items, drawn by their recency weights, so that the items a
step seeds its sampled neighbourhood with stay few (:meth:`DualAlignedSemanticIDs.batch_items`).
Apart from :mod:`recsys.models.das.inputs`, which serving's item encoder imports, because
this needs the sampler (torch-geometric)."""

from __future__ import annotations

import torch
from torch import Tensor

from recsys.models.sampling import expand_ranges


def history_ranges(keys: Tensor, users: Tensor, n_items: int) -> tuple[Tensor, Tensor]:
    """``users (n,)`` → where each one's entries start in a pool's ascending
    ``user·I + item`` ``keys``, and how many there are."""
    start = torch.searchsorted(keys, users * n_items)
    return start, torch.searchsorted(keys, (users + 1) * n_items) - start


def draw_history(
    pool: Tensor, keys: Tensor, start: Tensor, count: Tensor, fanout: int, n_items: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The rows of a coalesced pool (:func:`~recsys.models.das.inputs.history_pooling`;
    entries ``keys``) of the users whose entries are ``start``, ``count``, as ``(row, item,
    weight)`` entries (row: the user's position): a history of at most ``fanout`` items
    whole, with its weights; a longer one as ``fanout`` items drawn with replacement by
    their weights, ``1 / fanout`` each, so that every user's estimate has the pool's row as
    its mean (as the neighbour sampler's draws have the propagation's)."""
    whole = count <= fanout
    positions = torch.arange(len(start), device=start.device)
    at_whole = expand_ranges(start[whole], count[whole])
    row_whole = torch.repeat_interleave(positions[whole], count[whole])
    # inverse CDF over each drawing user's entries: cumulative[j] = Σ weights before j
    cumulative = _cumulative_weights(pool)
    first, end = start[~whole], start[~whole] + count[~whole]
    low, mass = cumulative[first], cumulative[end] - cumulative[first]
    draws = torch.rand(len(first), fanout, dtype=mass.dtype, device=mass.device)
    at_drawn = torch.searchsorted(cumulative, low[:, None] + draws * mass[:, None], right=True) - 1
    at_drawn = torch.minimum(torch.maximum(at_drawn, first[:, None]), end[:, None] - 1)
    weights = pool.values()
    at = torch.cat([at_whole, at_drawn.flatten()])
    row = torch.cat([row_whole, positions[~whole].repeat_interleave(fanout)])
    weight = torch.cat([weights[at_whole], weights.new_full((at_drawn.numel(),), 1 / fanout)])
    return row, keys[at] % n_items, weight


def _cumulative_weights(pool: Tensor) -> Tensor:
    """``(E + 1,)`` float64: the running sum of a pool's weights in entry order, built once
    and kept on the pool tensor (a new pool is a new tensor)."""
    cumulative = pool.__dict__.get("_cumulative")
    if cumulative is None:
        values = pool.values().to(torch.float64)
        cumulative = torch.cat([values.new_zeros(1), torch.cumsum(values, 0)])
        pool.__dict__["_cumulative"] = cumulative
    return cumulative
