"""Pieces of DAS's scored vectors: concat mode's representations kept in parts
(collaborative ; semantic), and the popularity prior's extra column."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor


@dataclasses.dataclass
class ConcatVectors:
    """concat mode's representations, kept in parts: a final user row is ``[collab_users ;
    semantic_users]`` (``(U, D)``, ``(U, d_s)``: γ-weighted), a final item row
    ``[collab_items ; semantic_items]``; ``item_ego (I, D)``: the layer-0 collaborative item
    rows; ``collab_history (U, D)``: each user's pooled history of propagated item rows
    (None without user_history_weight). Training gathers the batch's rows part by part
    and scores them so (concatenating whole tables was ~7% of a Beauty step, the batch's
    rows ~5% more); scoring takes the whole tables."""

    collab_users: Tensor
    semantic_users: Tensor
    collab_items: Tensor
    semantic_items: Tensor
    item_ego: Tensor
    collab_history: Tensor | None

    @property
    def users(self) -> Tensor:
        return torch.cat([self.collab_users, self.semantic_users], 1)  # (U, D + d_s)

    @property
    def items(self) -> Tensor:
        return torch.cat([self.collab_items, self.semantic_items], 1)  # (I, D + d_s)


def append_column(vectors: Tensor, column: Tensor) -> Tensor:
    """``(N, D)``, ``(N,)`` → ``(N, D + 1)``, the column cast to the vectors' dtype/device."""
    return torch.cat([vectors, column.to(vectors)[:, None]], 1)
