"""LightGCN (He et al., 2020) on torch-geometric's ``LightGCN`` / ``LGConv``."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.nn.models import LightGCN as PygLightGCN

from recsys.models.base import Recommender, TrainingGraph, register_model, rows
from recsys.models.fanouts import FanoutFields
from recsys.models.graph import (
    SymmetricLGConv,
    fold_in_item_rows,
    fold_in_segment,
    layer_mean_propagation,
    normalized_adjacency,
)
from recsys.models.mf import PairwiseConfig, pairwise_loss
from recsys.models.sampling import sampled_readout
from recsys.models.transition import (
    TransitionFields,
    add_transition_segment,
    batch_with_transition,
    transition_block,
    transition_history,
    with_transition,
)


class LightGCNConfig(PairwiseConfig, TransitionFields, FanoutFields):
    kind: Literal["lightgcn"] = "lightgcn"
    layers: int = 2


@register_model("lightgcn", LightGCNConfig)
class LightGCN(Recommender):
    """Users and items share one node table; the final embedding is the mean of the
    layer outputs.  The normalised adjacency is precomputed (``normalize=False`` in the
    convolutions), so a step costs two sparse-dense products per layer."""

    def __init__(self, config: LightGCNConfig, graph: TrainingGraph) -> None:
        super().__init__()
        self.config = config
        self.n_users = graph.n_users
        self.gcn = PygLightGCN(
            graph.n_users + graph.n_items, config.dim, config.layers, normalize=False
        )
        # Swap in convolutions whose backward reuses the symmetric adjacency.
        self.gcn.convs = nn.ModuleList(SymmetricLGConv() for _ in range(config.layers))
        adj = normalized_adjacency(
            graph.train_users, graph.train_items, graph.n_users, graph.n_items
        )
        # Not a buffer: it is derived from the data, and sparse CSR does not serialise.
        self.adj = adj
        self.item_degree = graph.item_counts()
        self.transition = transition_block(config, graph, sparse=config.sparse_updates)

    def _apply(self, fn, recurse=True):  # keep the adjacency on the model's device
        super()._apply(fn, recurse)
        self.adj = fn(self.adj)
        return self

    def propagate(self) -> tuple[Tensor, Tensor]:
        out = self._readout()
        return out[: self.n_users], out[self.n_users :]

    def _readout(self) -> Tensor:
        """``(U+I, D)``: the layer mean, as PyG's ``get_embedding`` with its uniform
        weights but summed before one division (three fewer full-table products a step)."""
        return layer_mean_propagation(self.gcn.embedding.weight, self.adj, self.gcn.convs)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return with_transition(self.transition, *self.propagate())

    def use_history(self, users: np.ndarray, items: np.ndarray) -> bool:
        return transition_history(self.transition, users, items)

    def history_query(self) -> tuple[list[dict], dict[str, np.ndarray]]:
        """An anonymous user's query (``RUN/history_query/``): the propagated columns
        folded in from their items (:func:`fold_in_item_rows`; PyG's readout is the
        same layer mean) and the block's columns as trained."""
        rows = fold_in_item_rows(
            self.gcn.embedding.weight, self.adj, self.gcn.convs, self.n_users, self.item_degree
        )
        segment, arrays = fold_in_segment(rows)
        segments = [segment]
        add_transition_segment(segments, arrays, self.transition, self.config.dim)
        return segments, arrays

    def sparse_parameters(self) -> list[nn.Parameter]:
        if not self.config.sparse_updates:
            return []
        block = [] if self.transition is None else list(self.transition.parameters())
        return [self.gcn.embedding.weight, *block]

    def _batch_readout(self, nodes: Tensor) -> Tensor:
        """``(len(nodes), D)``: the readout rows of ``nodes`` (global ids, repeats allowed),
        from the whole graph or, with ``fanouts``, from their sampled neighbourhood."""
        if self.config.fanouts is None:
            return rows(self._readout(), nodes)  # (U+I, D) → (n, D)
        seeds, at = torch.unique(nodes, return_inverse=True)
        x, fanouts = self.gcn.embedding.weight, self.config.fanouts
        if self.config.sparse_updates:  # the sampled rows only, with a sparse gradient
            weight = x
            x = lambda ids: rows(weight, ids, sparse=True)  # noqa: E731
        return rows(sampled_readout(x, self.adj, seeds, fanouts), at)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        ego = self.gcn.embedding.weight
        users, pos = batch["users"], batch["pos_items"]
        neg = batch.get("neg_items")  # (B, N) or None
        # One gather of every node the batch touches (users, positives, negatives), from
        # the readout and from layer 0: one scatter each in the backward instead of one
        # per part (full-table zeros and adds were a third of a Beauty step).
        parts = [users, pos + self.n_users]
        if neg is not None:
            parts.append(neg.flatten() + self.n_users)
        nodes = torch.cat(parts)
        sizes = [len(x) for x in parts]
        final = self._batch_readout(nodes).split(sizes)
        reg_terms = list(rows(ego, nodes, self.config.sparse_updates).split(sizes))
        u, p = final[0], final[1]
        n = final[2].view(*neg.shape, -1) if neg is not None else None
        u, p, n, reg = batch_with_transition(self.transition, batch, u, p, n)
        return pairwise_loss(self.config, u, p, n, reg_terms + reg)  # type: ignore[arg-type]
