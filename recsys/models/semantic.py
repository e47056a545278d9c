"""Pieces shared by the semantic-ID models (two-stage and DAS)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from recsys.models.base import TrainingGraph
from recsys.models.graph import (
    SymmetricLGConv,
    fold_in_item_rows,
    layer_mean_propagation,
    normalized_adjacency,
)
from recsys.models.quantizer import assign_semantic_ids, codebook_stats
from recsys.models.sampling import sampled_readout

RowsOf = Callable[[Tensor], Tensor]  # indices (n,) → their rows (n, D)


class GraphPropagation(nn.Module):
    """LightGCN propagation over the training graph for externally built node embeddings
    (users first, then items)."""

    def __init__(self, graph: TrainingGraph, layers: int) -> None:
        super().__init__()
        self.n_users = graph.n_users
        self.convs = nn.ModuleList(SymmetricLGConv() for _ in range(layers))
        self.adj = normalized_adjacency(
            graph.train_users, graph.train_items, graph.n_users, graph.n_items
        )
        self.item_degree = graph.item_counts()

    def _apply(self, fn, recurse=True):  # the derived adjacency follows the module's device
        super()._apply(fn, recurse)
        self.adj = fn(self.adj)
        return self

    def forward(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """users ``(U, D)``, items ``(I, D)`` → propagated ``(U, D)``, ``(I, D)``."""
        out = layer_mean_propagation(torch.cat([users, items]), self.adj, self.convs)
        # split, not two slices: its backward concatenates the two gradients, where each
        # slice's would fill a zero (U+I, D) table and copy its part in
        users_out, items_out = out.split([self.n_users, len(out) - self.n_users])
        return users_out, items_out

    def sampled(
        self,
        user_rows: RowsOf,
        item_rows: RowsOf,
        seed_users: Tensor,
        seed_items: Tensor,
        fanouts: list[int],
    ) -> tuple[Tensor, Tensor]:
        """The readout rows of ``seed_users (u,)`` and ``seed_items (i,)`` (ascending,
        distinct) over their sampled neighbourhood (:mod:`recsys.models.sampling`):
        ``(u, D)``, ``(i, D)``. ``user_rows``, ``item_rows``: user / item indices → their
        layer-0 rows, asked for the sampled nodes only."""

        def layer0(nodes: Tensor) -> Tensor:  # global ids (users, then items + U) → rows
            is_item = nodes >= self.n_users
            at_user, at_item = torch.nonzero(~is_item)[:, 0], torch.nonzero(is_item)[:, 0]
            x = torch.cat([user_rows(nodes[at_user]), item_rows(nodes[at_item] - self.n_users)])
            back = torch.empty_like(nodes)
            back[torch.cat([at_user, at_item])] = torch.arange(len(nodes), device=nodes.device)
            return x.index_select(0, back)

        seeds = torch.cat([seed_users, seed_items + self.n_users])
        out = sampled_readout(layer0, self.adj, seeds, fanouts)
        return out[: len(seed_users)], out[len(seed_users) :]

    def fold_in_rows(self, users: Tensor, items: Tensor) -> Tensor:
        """``(I, D)``: :func:`fold_in_item_rows` for these layer-0 embeddings."""
        x = torch.cat([users, items])
        return fold_in_item_rows(x, self.adj, self.convs, self.n_users, self.item_degree)


def semantic_id_table(codes: Tensor, codebook_size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """codes ``(N, L)`` → (semantic IDs ``(N, L+1)`` with TIGER's suffix, stats)."""
    stats = codebook_stats(codes, codebook_size)
    sids = assign_semantic_ids(codes).cpu().numpy()
    stats["codebook_size"] = codebook_size
    stats["levels"] = int(codes.shape[1])
    stats["max_suffix"] = int(sids[:, -1].max()) if len(sids) else 0
    return sids, stats
