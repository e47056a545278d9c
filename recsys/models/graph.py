"""The user–item bipartite graph for LightGCN-style propagation (torch-geometric)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch_geometric.nn import LGConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import to_torch_csr_tensor


def bipartite_edge_index(train_users: np.ndarray, train_items: np.ndarray, n_users: int) -> Tensor:
    """Undirected edges between user nodes ``0..U-1`` and item nodes ``U..U+I-1``.

    Returns ``(2, 2E)`` int64.
    """
    u = torch.as_tensor(train_users, dtype=torch.long)
    i = torch.as_tensor(train_items, dtype=torch.long) + n_users
    return torch.stack([torch.cat([u, i]), torch.cat([i, u])])


def normalized_adjacency(
    train_users: np.ndarray, train_items: np.ndarray, n_users: int, n_items: int
) -> Tensor:
    """Symmetric-normalised adjacency ``D^-1/2 A D^-1/2`` without self loops, as a
    sparse CSR tensor of shape ``(U+I, U+I)``: computed once, reused every step."""
    n = n_users + n_items
    edge_index = bipartite_edge_index(train_users, train_items, n_users)
    edge_index, weight = gcn_norm(edge_index, None, n, add_self_loops=False)
    return to_torch_csr_tensor(edge_index, weight, size=(n, n))


class _SymmetricSpmm(torch.autograd.Function):
    """``A @ X`` for a symmetric sparse ``A``: the backward is ``A @ grad`` again.

    torch's generic backward builds ``Aᵀ`` as a new CSR tensor (a sort of every edge) at
    each step, which costs more than the products themselves on CPU.
    """

    @staticmethod
    def forward(ctx, adj: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return None, ctx.adj @ grad


def symmetric_spmm(adj: Tensor, x: Tensor) -> Tensor:
    """adj: sparse ``(N, N)`` symmetric; x: ``(N, D)`` → ``(N, D)``."""
    return _SymmetricSpmm.apply(adj, x)


class SymmetricLGConv(LGConv):
    """``LGConv`` over a precomputed symmetric normalised adjacency."""

    def __init__(self) -> None:
        super().__init__(normalize=False)

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        return symmetric_spmm(adj_t, x)


def layer_mean_propagation(x: Tensor, adj: Tensor, convs: torch.nn.ModuleList) -> Tensor:
    """LightGCN's readout: the mean of ``x, Âx, Â²x, ...`` (one ``LGConv`` per layer).

    x: ``(U+I, D)`` node embeddings → ``(U+I, D)``.
    """
    out = x
    h = x
    for conv in convs:
        h = conv(h, adj)
        out = out + h
    return out / (len(convs) + 1)
