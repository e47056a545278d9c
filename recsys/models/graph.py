"""The user–item bipartite graph for LightGCN-style propagation (torch-geometric)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from torch_geometric.nn import LGConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import to_torch_csr_tensor

from recsys.models.base import scipy_kernels


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


def _scipy_twin(matrix: Tensor, transpose: bool) -> sp.csr_matrix:
    """The scipy CSR copy of a fixed sparse ``matrix`` (or of its transpose), built once and
    kept on the tensor object itself: a moved or rebuilt matrix is a new tensor, so its
    twin can never be stale."""
    key = "_scipy_csr_t" if transpose else "_scipy_csr"
    twin = matrix.__dict__.get(key)
    if twin is None:
        if matrix.layout == torch.sparse_csr:
            # copies: scipy may reorder its arrays in place, and these share the tensor's
            twin = sp.csr_matrix(
                (
                    matrix.values().numpy().copy(),
                    matrix.col_indices().numpy().copy(),
                    matrix.crow_indices().numpy().copy(),
                ),
                shape=tuple(matrix.shape),
            )
        else:
            coo = matrix.coalesce()
            rows, cols = coo.indices().numpy()
            twin = sp.csr_matrix((coo.values().numpy(), (rows, cols)), shape=tuple(coo.shape))
        if transpose:
            twin = twin.T.tocsr()
        matrix.__dict__[key] = twin
    return twin


def _matmul(matrix: Tensor, x: Tensor, transpose: bool) -> Tensor:
    """``matrix @ x`` (or ``matrixᵀ @ x``) for a fixed sparse ``matrix`` and dense ``x``."""
    if x.device.type == "cpu" and scipy_kernels():
        twin = _scipy_twin(matrix, transpose)
        return torch.from_numpy(twin @ x.detach().contiguous().numpy())
    if transpose:
        return torch.sparse.mm(matrix.t(), x)
    return torch.sparse.mm(matrix, x)


class _SparseMatmul(torch.autograd.Function):
    """``A @ X`` for a fixed sparse ``A`` (no gradient): the backward is ``Aᵀ @ grad``, with
    ``Aᵀ`` built once (torch's generic backward re-sorts every edge into a new ``Aᵀ`` at each
    step, which costs more than the products themselves on CPU)."""

    @staticmethod
    def forward(ctx, matrix: Tensor, x: Tensor, symmetric: bool) -> Tensor:  # type: ignore[override]
        ctx.matrix, ctx.symmetric = matrix, symmetric
        return _matmul(matrix, x, transpose=False)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return None, _matmul(ctx.matrix, grad, transpose=not ctx.symmetric), None


def sparse_matmul(matrix: Tensor, x: Tensor) -> Tensor:
    """matrix: fixed sparse ``(N, M)`` (CSR or COO, no gradient); x: ``(M, D)`` → ``(N, D)``."""
    return _SparseMatmul.apply(matrix, x, False)


class _SparseRowsMatmul(torch.autograd.Function):
    """``A[rows] @ X`` (or ``A[rows][:, columns] @ X``) through scipy: only the wanted rows'
    entries are multiplied, and the backward ``A[rows]ᵀ @ grad`` sums each column's entries
    in the same order as the whole ``Aᵀ @ grad`` would (the other rows' gradient is zero),
    so without ``columns`` the results are bitwise those of ``(A @ X)[rows]``."""

    @staticmethod
    def forward(ctx, matrix: Tensor, index: Tensor, x: Tensor, columns: Tensor | None) -> Tensor:  # type: ignore[override]
        sliced = _scipy_twin(matrix, transpose=False)[index.numpy()]
        ctx.sliced = sliced if columns is None else sliced[:, columns.numpy()]
        return torch.from_numpy(ctx.sliced @ x.detach().contiguous().numpy())

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        product = ctx.sliced.T.tocsr() @ grad.contiguous().numpy()
        return None, None, torch.from_numpy(product), None


def sparse_rows_matmul(
    matrix: Tensor, index: Tensor, x: Tensor, columns: Tensor | None = None
) -> Tensor:
    """``(matrix @ x)[index]`` for a fixed sparse ``matrix (N, M)``, ``index (n,)`` ascending
    distinct rows and ``x (M, D)`` → ``(n, D)``, costing the rows' entries only (a training
    batch's users' history pools: a few percent of all users' at small batches). With
    ``columns (m,)`` (ascending, distinct, holding every column of those rows' entries),
    ``x (m, D)`` holds the rows of those columns only."""
    if x.device.type == "cpu" and scipy_kernels():
        return _SparseRowsMatmul.apply(matrix, index, x, columns)
    if columns is None:
        return sparse_matmul(matrix, x).index_select(0, index)
    block = matrix.to_sparse_coo().index_select(0, index).index_select(1, columns)
    return torch.sparse.mm(block, x)


def symmetric_spmm(adj: Tensor, x: Tensor) -> Tensor:
    """adj: fixed sparse ``(N, N)`` symmetric; x: ``(N, D)`` → ``(N, D)``."""
    return _SparseMatmul.apply(adj, x, True)


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
        # after the first sum ``out`` is ours: summed and divided in place (no new
        # (U+I, D) table per layer; neither op's backward reads it)
        out = out + h if out is x else out.add_(h)
    return out / (len(convs) + 1) if out is x else out.div_(len(convs) + 1)


def fold_in_item_rows(
    x: Tensor, adj: Tensor, convs: torch.nn.ModuleList, n_users: int, item_degree: np.ndarray
) -> Tensor:
    """Per-item rows ``T (I, D)`` that fold a user outside the graph into the layer-mean
    readout of :func:`layer_mean_propagation`: with no embedding of their own (layer 0 is
    zero), the user's layer ``l`` is ``Σ_{i∈H} e_i^(l-1) / sqrt(|H| d_i)`` over their
    items ``H``, so their readout is ``|H|^(-1/2) Σ_{i∈H} T_i`` with
    ``T_i = Σ_{l<L} e_i^(l) / ((L+1) sqrt(d_i))``, zero for an item without training
    interactions (``d_i = 0``).  A training user queried with exactly their training
    items gets their own readout minus ``e_u^(0) / (L+1)``; a new user's items' degrees
    are taken as trained (the usual fold-in approximation).

    x: ``(U+I, D)`` layer-0 node embeddings (users first); item_degree: ``(I,)``.
    """
    h, total = x, torch.zeros_like(x)
    for conv in convs:
        total = total + h
        h = conv(h, adj)
    degree = torch.as_tensor(item_degree, dtype=x.dtype, device=x.device)
    scale = torch.where(degree > 0, degree.clamp(min=1).rsqrt(), torch.zeros_like(degree))
    return total[n_users:] * scale[:, None] / (len(convs) + 1)


def fold_in_segment(rows: Tensor) -> tuple[dict, dict[str, np.ndarray]]:
    """The propagated columns ``[0, D)`` of an anonymous user's query
    (``RUN/history_query/``, :mod:`recsys.serve.history`): ``|H|^(-1/2) Σ_{i∈H} T_i``
    over the rows of :func:`fold_in_item_rows` (a uniform mean times ``|H|^(1/2)``)."""
    segment = {
        "columns": [0, int(rows.shape[1])],
        "pool": "table",
        "table": "fold_in",
        "decay": 1.0,
        "window": None,
        "count_power": 0.5,
    }
    return segment, {"fold_in": rows.detach().cpu().numpy()}
