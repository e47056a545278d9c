"""The training fast paths against plain torch references: fixed-sparse products (scipy on
few threads, torch otherwise), row gathers, and the ranker's cheaper checks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.eval.ranking import _has_nan, evaluate
from recsys.models import base as base_ops
from recsys.models.base import dot_scores, rows, weighted_bag_sum
from recsys.models.graph import (
    normalized_adjacency,
    sparse_matmul,
    sparse_rows_matmul,
    symmetric_spmm,
)


def random_pairs(seed: int = 0, n_users: int = 30, n_items: int = 20, n: int = 150):
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, n_users * n_items, n))
    return keys // n_items, keys % n_items, n_users, n_items


@pytest.fixture(params=["scipy", "torch"])
def kernel(request, monkeypatch):
    if request.param == "torch":  # more threads than scipy takes
        monkeypatch.setattr(base_ops, "SCIPY_MAX_THREADS", 0)
    return request.param


@pytest.mark.parametrize("layout", ["csr", "coo"])
def test_sparse_matmul_matches_the_dense_product_and_its_gradient(kernel, layout):
    users, items, n_users, n_items = random_pairs()
    values = torch.rand(len(users))
    dense = torch.zeros(n_users, n_items)
    dense[users, items] = values
    matrix = dense.to_sparse_csr() if layout == "csr" else dense.to_sparse_coo()
    x = torch.randn(n_items, 5, requires_grad=True)
    upstream = torch.randn(n_users, 5)
    (sparse_matmul(matrix, x) * upstream).sum().backward()
    got_grad = x.grad.clone()
    x.grad = None
    want = dense @ x
    (want * upstream).sum().backward()
    torch.testing.assert_close(sparse_matmul(matrix, x).detach(), want.detach())
    torch.testing.assert_close(got_grad, x.grad)


@pytest.mark.parametrize("layout", ["csr", "coo"])
def test_a_row_slice_product_is_the_whole_products_rows_bit_for_bit(kernel, layout):
    users, items, n_users, n_items = random_pairs(3, 300, 200, 4000)
    values = torch.rand(len(users))
    dense = torch.zeros(n_users, n_items)
    dense[users, items] = values
    matrix = dense.to_sparse_csr() if layout == "csr" else dense.to_sparse_coo()
    index = torch.tensor([0, 4, 5, 17, 120, 299])  # ascending, distinct; row 0 may be empty
    x = torch.randn(n_items, 8, requires_grad=True)
    upstream = torch.randn(len(index), 8)
    sliced = sparse_rows_matmul(matrix, index, x)
    (sliced * upstream).sum().backward()
    got_grad = x.grad.clone()
    x.grad = None
    whole = sparse_matmul(matrix, x)  # the reference: every row, then the wanted ones
    (rows(whole, index) * upstream).sum().backward()
    assert torch.equal(sliced, whole[index])
    assert torch.equal(got_grad, x.grad)
    torch.testing.assert_close(sliced, (dense @ x)[index])
    # with the columns those rows use, x holds only those rows
    columns = torch.nonzero(dense[index].abs().sum(0)).flatten()
    x_cols = x.detach()[columns].requires_grad_()
    block = sparse_rows_matmul(matrix, index, x_cols, columns)
    (block * upstream).sum().backward()
    torch.testing.assert_close(block, sliced)
    torch.testing.assert_close(x_cols.grad, got_grad[columns])


def test_symmetric_spmm_matches_the_dense_product_and_its_gradient(kernel):
    users, items, n_users, n_items = random_pairs(1)
    adj = normalized_adjacency(users, items, n_users, n_items)
    dense = adj.to_dense()
    assert torch.equal(dense, dense.T)
    x = torch.randn(n_users + n_items, 4, requires_grad=True)
    upstream = torch.randn_like(x)
    (symmetric_spmm(adj, x) * upstream).sum().backward()
    got_grad = x.grad.clone()
    x.grad = None
    ((dense @ x) * upstream).sum().backward()
    torch.testing.assert_close(symmetric_spmm(adj, x).detach(), (dense @ x).detach())
    torch.testing.assert_close(got_grad, x.grad)


def test_the_scipy_kernel_gives_torchs_products_bit_for_bit(monkeypatch):
    users, items, n_users, n_items = random_pairs(2, 200, 150, 3000)
    adj = normalized_adjacency(users, items, n_users, n_items)
    x = torch.randn(n_users + n_items, 16)
    fast = symmetric_spmm(adj, x)
    monkeypatch.setattr(base_ops, "SCIPY_MAX_THREADS", 0)
    assert torch.equal(fast, symmetric_spmm(adj, x))


def test_a_moved_matrix_never_reuses_a_stale_scipy_copy():
    dense = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    first = dense.to_sparse_csr()
    x = torch.ones(2, 1)
    assert sparse_matmul(first, x).flatten().tolist() == [1.0, 2.0]
    second = (dense * 3).to_sparse_csr()  # a rebuilt matrix is a new tensor: a new copy
    assert sparse_matmul(second, x).flatten().tolist() == [3.0, 6.0]


def test_rows_gathers_like_indexing_with_the_same_gradient():
    table = torch.randn(7, 3, requires_grad=True)
    index = torch.tensor([[0, 6], [6, 2], [3, 3]])
    upstream = torch.randn(3, 2, 3)
    (rows(table, index) * upstream).sum().backward()
    got = table.grad.clone()
    table.grad = None
    (table[index] * upstream).sum().backward()
    assert torch.equal(rows(table, index), table[index])
    torch.testing.assert_close(got, table.grad)


def test_rows_scatters_its_gradient_as_index_add_and_embedding_do_bit_for_bit(kernel):
    """Many repeats of few rows (as a codebook's rows are read): the gradient through
    ``rows`` (scipy's scatter on few threads) is bitwise torch's ``index_select``
    backward and ``F.embedding``'s, sums in the same order; no graph when no gradient."""
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(13, 5, generator=gen, requires_grad=True)
    index = torch.randint(0, 12, (400, 3), generator=gen)  # row 12 never read
    upstream = torch.randn(400, 3, 5, generator=gen)
    (rows(table, index) * upstream).sum().backward()
    got, table.grad = table.grad.clone(), None
    picked = table.index_select(0, index.flatten()).view(400, 3, 5)
    (picked * upstream).sum().backward()
    assert torch.equal(got, table.grad)
    table.grad = None
    (torch.nn.functional.embedding(index, table) * upstream).sum().backward()
    assert torch.equal(got, table.grad)
    assert not got[12].any() and got.is_contiguous()
    assert torch.equal(rows(table, index), table[index])
    with torch.no_grad():
        assert not rows(table, index).requires_grad


def test_a_weighted_bag_sum_is_the_masked_gather_sum_with_its_gradient(kernel):
    """Bags with repeated rows, zero weights and a padding row, against gather × weight ×
    sum: the same forward values, the same table gradient up to rounding; the sparse
    variant's gradient holds the rows read only."""
    gen = torch.Generator().manual_seed(0)
    n_rows, n_bags, width = 11, 40, 6
    items = torch.randint(0, n_rows, (n_bags, width), generator=gen)
    items[:5, 3:] = n_rows - 1  # a padding row ...
    items[7] = 2  # ... and a bag reading one row six times
    weights = torch.rand(n_bags, width, generator=gen)
    weights[:5, 3:] = 0.0
    upstream = torch.randn(n_bags, 3, generator=gen)
    table = torch.randn(n_rows, 3, generator=gen, requires_grad=True)
    want = (table[items] * weights[..., None]).sum(1)
    (want * upstream).sum().backward()
    want_grad, table.grad = table.grad.clone(), None
    got = weighted_bag_sum(items, table, weights)
    (got * upstream).sum().backward()
    torch.testing.assert_close(got.detach(), want.detach())
    torch.testing.assert_close(table.grad, want_grad)
    assert table.grad.is_contiguous() and table.grad.dtype == torch.float32
    table.grad = None
    (weighted_bag_sum(items, table, weights, sparse=True) * upstream).sum().backward()
    assert table.grad.is_sparse
    torch.testing.assert_close(table.grad.to_dense(), want_grad)
    assert set(table.grad.coalesce().indices()[0].tolist()) == set(items.unique().tolist())
    with torch.no_grad():  # scoring: no graph kept
        assert not weighted_bag_sum(items, table, weights).requires_grad


def test_nan_check_accepts_both_infinities_and_finds_a_nan():
    inf = float("inf")
    assert not _has_nan(torch.tensor([[inf, -inf, 0.0], [1.0, 2.0, 3.0]]))
    assert _has_nan(torch.tensor([[inf, -inf, 0.0], [1.0, float("nan"), 3.0]]))
    assert _has_nan(torch.tensor([[float("nan"), inf, -inf]]))


def test_fresh_scores_and_skipping_mrr_change_no_metric():
    rng = np.random.default_rng(3)
    user = torch.from_numpy(rng.integers(-2, 3, (40, 4)).astype(np.float32))  # many ties
    item = torch.from_numpy(rng.integers(-2, 3, (25, 4)).astype(np.float32))
    truth = sp.random(40, 25, density=0.1, random_state=4, format="csr")
    exclude = sp.random(40, 25, density=0.2, random_state=5, format="csr")

    def copying(users: torch.Tensor) -> torch.Tensor:  # not marked fresh: the ranker copies
        return user[users] @ item.T

    want = evaluate(copying, truth, exclude, ks=(1, 5, 10), batch_size=7)
    fast = dot_scores(user, item)
    assert fast.fresh_scores
    assert evaluate(fast, truth, exclude, ks=(1, 5, 10), batch_size=7) == want
    without = evaluate(fast, truth, exclude, ks=(1, 5, 10), batch_size=7, with_mrr=False)
    assert without == {k: v for k, v in want.items() if k != "mrr"}
