"""Losses, graph propagation, models and training batches, against hand-computed values
and dense-matrix reimplementations written here."""

from __future__ import annotations

import math
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import synthetic_interactions

from recsys.config import StrictModel
from recsys.data.idmap import IdMap
from recsys.errors import ConfigError
from recsys.models import MODEL_REGISTRY, TrainingGraph, build_model, model_kinds, model_spec
from recsys.models.graph import normalized_adjacency, symmetric_spmm
from recsys.models.lightgcn import LightGCN, LightGCNConfig
from recsys.models.losses import bpr_loss, in_batch_softmax_loss, l2_penalty
from recsys.models.mf import MatrixFactorization, MFConfig
from recsys.models.popularity import Popularity, PopularityConfig
from recsys.train.datamodule import NegativeSampler, PairBatches, SamplingConfig


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# -- losses -----------------------------------------------------------------------------


def test_bpr_loss_hand_values():
    # -log σ(2 - 0) = log(1 + e^-2)
    got = bpr_loss(torch.tensor([2.0]), torch.tensor([0.0]))
    assert got.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    assert got.item() == pytest.approx(0.126928011, rel=1e-6)
    got = bpr_loss(torch.tensor([2.0, -1.0]), torch.tensor([0.0, 1.0]))
    assert got.item() == pytest.approx((softplus(-2) + softplus(2)) / 2, rel=1e-6)


def test_bpr_loss_two_dimensional_negatives():
    pos = torch.tensor([1.0, 0.0])
    neg = torch.tensor([[0.0, 2.0, 1.0], [-1.0, 0.5, 3.0]])
    expected = [
        softplus(n - p) for p, row in zip([1.0, 0.0], neg.tolist(), strict=True) for n in row
    ]
    assert bpr_loss(pos, neg).item() == pytest.approx(sum(expected) / 6, rel=1e-6)


def test_l2_penalty_hand_value():
    a = torch.tensor([[1.0, 2.0], [3.0, 0.0]])  # squares sum to 14
    b = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # 3
    assert l2_penalty(a, b).item() == pytest.approx(17 / (2 * 2))
    assert l2_penalty(a).item() == pytest.approx(14 / 4)


def test_in_batch_softmax_loss_two_by_two():
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    item = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    # logits = [[2, 1], [0, 3]]; targets are the diagonal
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1)))
    row1 = -math.log(math.exp(3) / (math.exp(0) + math.exp(3)))
    assert in_batch_softmax_loss(user, item).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # temperature 0.5 doubles the logits: [[4, 2], [0, 6]]
    row0 = softplus(2 - 4)
    row1 = softplus(0 - 6)
    got = in_batch_softmax_loss(user, item, temperature=0.5).item()
    assert got == pytest.approx((row0 + row1) / 2, rel=1e-6)


# -- graph ------------------------------------------------------------------------------


def dense_norm_adj(users, items, n_users: int, n_items: int) -> np.ndarray:
    n = n_users + n_items
    a = np.zeros((n, n))
    for u, i in zip(users, items, strict=True):
        a[u, n_users + i] = a[n_users + i, u] = 1.0
    deg = a.sum(1)
    inv = np.zeros(n)
    inv[deg > 0] = deg[deg > 0] ** -0.5
    return inv[:, None] * a * inv[None, :]


# 4 users, 5 items; user 3 and item 4 have no edge.
TINY_USERS = np.array([0, 0, 1, 2, 2, 2])
TINY_ITEMS = np.array([0, 1, 1, 1, 2, 3])


def test_normalized_adjacency_against_dense():
    adj = normalized_adjacency(TINY_USERS, TINY_ITEMS, 4, 5)
    assert adj.layout == torch.sparse_csr and adj.shape == (9, 9)
    dense = adj.to_dense().double().numpy()
    expected = dense_norm_adj(TINY_USERS, TINY_ITEMS, 4, 5)
    np.testing.assert_allclose(dense, expected, rtol=1e-6, atol=1e-7)
    # hand check of one entry: user 0 has degree 2, item 1 has degree 3
    assert dense[0, 4 + 1] == pytest.approx(1 / math.sqrt(6))
    assert not dense[3].any() and not dense[4 + 4].any()  # isolated user and item
    np.testing.assert_allclose(dense, dense.T)


def test_symmetric_spmm_forward_and_gradient():
    adj = normalized_adjacency(TINY_USERS, TINY_ITEMS, 4, 5)
    dense = torch.tensor(dense_norm_adj(TINY_USERS, TINY_ITEMS, 4, 5), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(9, 3, generator=gen)
    w = torch.randn(9, 3, generator=gen)
    x = x0.clone().requires_grad_(True)
    y = symmetric_spmm(adj, x)
    (y * w).sum().backward()
    xd = x0.clone().requires_grad_(True)
    yd = dense @ xd
    (yd * w).sum().backward()
    torch.testing.assert_close(y, yd)
    torch.testing.assert_close(x.grad, xd.grad)
    # two layers deep, as LightGCN uses it
    x.grad = None
    xd.grad = None
    (symmetric_spmm(adj, symmetric_spmm(adj, x)) * w).sum().backward()
    (dense @ (dense @ xd) * w).sum().backward()
    torch.testing.assert_close(x.grad, xd.grad)


# -- models -----------------------------------------------------------------------------


def synthetic_graph(n_users=24, n_items=16, per_user=6, seed=0) -> TrainingGraph:
    frame = synthetic_interactions(n_users, n_items, per_user, seed)
    users, items = IdMap.from_values(frame["user_id"]), IdMap.from_values(frame["item_id"])
    return TrainingGraph(
        len(users), len(items), users.to_index(frame["user_id"]), items.to_index(frame["item_id"])
    )


def simple_negatives(graph: TrainingGraph, num: int, seed: int) -> np.ndarray:
    """One row of ``num`` non-positive items per training pair, by plain rejection."""
    rng = np.random.default_rng(seed)
    positives = set(zip(graph.train_users.tolist(), graph.train_items.tolist(), strict=True))
    out = []
    for u in graph.train_users.tolist():
        row = []
        while len(row) < num:
            i = int(rng.integers(graph.n_items))
            if (u, i) not in positives:
                row.append(i)
        out.append(row)
    return np.array(out)


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_lightgcn_embeddings_are_mean_of_dense_propagation(layers):
    torch.manual_seed(0)
    graph = synthetic_graph()
    model = LightGCN(LightGCNConfig(dim=5, layers=layers), graph)
    e = model.gcn.embedding.weight.detach().double().numpy()
    a = dense_norm_adj(graph.train_users, graph.train_items, graph.n_users, graph.n_items)
    layer, total = e, e.copy()
    for _ in range(layers):
        layer = a @ layer
        total = total + layer
    expected = total / (layers + 1)
    user, item = model.embeddings()
    assert user.shape == (graph.n_users, 5) and item.shape == (graph.n_items, 5)
    got = torch.cat([user, item]).detach().double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_lightgcn_bpr_loss_value_against_dense_reference():
    torch.manual_seed(1)
    graph = synthetic_graph()
    config = LightGCNConfig(dim=4, layers=2, reg=0.1)
    model = LightGCN(config, graph)
    users, pos = graph.train_users[:7], graph.train_items[:7]
    neg = simple_negatives(graph, 2, seed=0)[:7]
    batch = {
        "users": torch.as_tensor(users),
        "pos_items": torch.as_tensor(pos),
        "neg_items": torch.as_tensor(neg),
    }
    out = model.loss(batch)
    e = model.gcn.embedding.weight.detach().double().numpy()
    a = dense_norm_adj(graph.train_users, graph.train_items, graph.n_users, graph.n_items)
    final = (e + a @ e + a @ a @ e) / 3
    fu, fi = final[: graph.n_users], final[graph.n_users :]
    eu, ei = e[: graph.n_users], e[graph.n_users :]
    terms = [
        softplus(fu[u] @ fi[n] - fu[u] @ fi[p])
        for u, p, row in zip(users, pos, neg, strict=True)
        for n in row
    ]
    rec = sum(terms) / len(terms)
    reg = 0.1 * ((eu[users] ** 2).sum() + (ei[pos] ** 2).sum() + (ei[neg] ** 2).sum()) / (2 * 7)
    assert out["rec_loss"].item() == pytest.approx(rec, rel=1e-5)
    assert out["reg_loss"].item() == pytest.approx(reg, rel=1e-5)
    assert out["loss"].item() == pytest.approx(rec + reg, rel=1e-5)


@pytest.mark.parametrize("loss", ["bpr", "softmax"])
def test_lightgcn_loss_decreases_with_adam(loss):
    torch.manual_seed(0)
    graph = synthetic_graph()
    model = LightGCN(LightGCNConfig(dim=8, layers=2, loss=loss), graph)
    batch = {
        "users": torch.as_tensor(graph.train_users),
        "pos_items": torch.as_tensor(graph.train_items),
    }
    if loss == "bpr":
        batch["neg_items"] = torch.as_tensor(simple_negatives(graph, 1, seed=0))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = model.loss(batch)["loss"].item()
    for _ in range(15):
        opt.zero_grad()
        out = model.loss(batch)
        out["loss"].backward()
        opt.step()
    last = model.loss(batch)["loss"].item()
    assert math.isfinite(last) and last < 0.9 * first, (first, last)


def test_popularity_scores_are_train_counts():
    graph = synthetic_graph()
    model = build_model(PopularityConfig(), graph)
    assert isinstance(model, Popularity) and not model.trainable
    user, item = model.embeddings()
    scores = (user @ item.T).numpy()
    counts = Counter(graph.train_items.tolist())
    expected = np.array([counts.get(i, 0) for i in range(graph.n_items)], dtype=np.float32)
    assert scores.shape == (graph.n_users, graph.n_items)
    for row in scores:
        np.testing.assert_array_equal(row, expected)


def test_popularity_counts_item_without_training_pairs():
    graph = TrainingGraph(2, 3, np.array([0, 1, 1]), np.array([2, 2, 0]))
    user, item = build_model(PopularityConfig(), graph).embeddings()
    assert (user @ item.T).tolist() == [[1.0, 0.0, 2.0], [1.0, 0.0, 2.0]]


def test_mf_bpr_with_sampled_negatives_against_manual():
    torch.manual_seed(0)
    graph = synthetic_graph()
    model = build_model(MFConfig(dim=6, reg=0.01), graph)
    assert isinstance(model, MatrixFactorization)
    users, pos = graph.train_users[:5], graph.train_items[:5]
    neg = simple_negatives(graph, 3, seed=1)[:5]
    out = model.loss(
        {
            "users": torch.as_tensor(users),
            "pos_items": torch.as_tensor(pos),
            "neg_items": torch.as_tensor(neg),
        }
    )
    eu = model.user.weight.detach().double().numpy()
    ei = model.item.weight.detach().double().numpy()
    terms = [
        softplus(eu[u] @ ei[n] - eu[u] @ ei[p])
        for u, p, row in zip(users, pos, neg, strict=True)
        for n in row
    ]
    reg = 0.01 * ((eu[users] ** 2).sum() + (ei[pos] ** 2).sum() + (ei[neg] ** 2).sum()) / 10
    assert out["rec_loss"].item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert out["reg_loss"].item() == pytest.approx(reg, rel=1e-5)


def test_mf_in_batch_softmax_against_manual_cross_entropy():
    torch.manual_seed(0)
    graph = synthetic_graph()
    model = MatrixFactorization(MFConfig(dim=6, loss="softmax", temperature=0.5, reg=0.0), graph)
    users, pos = graph.train_users[:4], graph.train_items[:4]
    out = model.loss({"users": torch.as_tensor(users), "pos_items": torch.as_tensor(pos)})
    u = model.user.weight.detach().double().numpy()[users]
    p = model.item.weight.detach().double().numpy()[pos]
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    logits = u @ p.T / 0.5
    ce = [-(logits[b, b] - math.log(np.exp(logits[b]).sum())) for b in range(4)]
    assert out["loss"].item() == pytest.approx(sum(ce) / 4, rel=1e-5)
    out["loss"].backward()
    assert model.user.weight.grad is not None


def test_bpr_without_negatives_is_a_clear_error():
    graph = synthetic_graph()
    batch = {
        "users": torch.as_tensor(graph.train_users[:4]),
        "pos_items": torch.as_tensor(graph.train_items[:4]),
    }
    for model in (
        MatrixFactorization(MFConfig(dim=4), graph),
        LightGCN(LightGCNConfig(dim=4, layers=1), graph),
    ):
        with pytest.raises(
            ValueError, match=r"needs sampled negatives.*trainer\.sampling\.negatives"
        ):
            model.loss(batch)


def test_build_model_unknown_kind():
    class NopeConfig(StrictModel):
        kind: str = "nope"

    with pytest.raises(ConfigError, match=r"unknown model kind 'nope'; known: \[.*lightgcn"):
        build_model(NopeConfig(), synthetic_graph())
    with pytest.raises(ConfigError):
        model_spec("nope")


def test_registry_imports_builtins_lazily(monkeypatch):
    assert {"popularity", "mf", "lightgcn"} <= set(model_kinds())
    # Forget the built-in popularity module: asking for the kind imports it again.
    monkeypatch.delitem(MODEL_REGISTRY, "popularity")
    monkeypatch.delitem(sys.modules, "recsys.models.popularity")
    assert "popularity" in model_kinds()  # listed before its module is imported
    spec = model_spec("popularity")
    assert "recsys.models.popularity" in sys.modules
    assert spec.config_cls.__name__ == "PopularityConfig"
    assert MODEL_REGISTRY["popularity"] is spec


# -- training batches -------------------------------------------------------------------


def dense_positives(n_users: int, n_items: int, share: float, seed: int):
    rng = np.random.default_rng(seed)
    k = int(round(share * n_items))
    users = np.repeat(np.arange(n_users), k)
    items = np.concatenate([rng.choice(n_items, size=k, replace=False) for _ in range(n_users)])
    return users, items


def _collisions(users, items, batch_users, neg) -> int:
    positives = set(zip(users.tolist(), items.tolist(), strict=True))
    return sum(
        (u, i) in positives
        for u, row in zip(batch_users.tolist(), neg.tolist(), strict=True)
        for i in row
    )


def test_negative_sampler_sparse_users():
    users, items = dense_positives(30, 40, 0.25, seed=0)
    sampler = NegativeSampler(users, items, 40)
    batch_users = np.repeat(np.arange(30), 10)
    neg = sampler.sample(batch_users, 4, np.random.default_rng(0))
    assert neg.shape == (300, 4) and neg.min() >= 0 and neg.max() < 40
    assert _collisions(users, items, batch_users, neg) == 0


def test_negative_sampler_never_returns_a_positive_on_dense_users():
    users, items = dense_positives(50, 40, 0.8, seed=0)  # every user has 32 of 40 items
    sampler = NegativeSampler(users, items, 40)
    batch_users = np.repeat(np.arange(50), 20)
    neg = sampler.sample(batch_users, 5, np.random.default_rng(1))
    assert _collisions(users, items, batch_users, neg) == 0


def test_negative_sampler_is_deterministic_per_seed():
    users, items = dense_positives(20, 30, 0.5, seed=2)
    sampler = NegativeSampler(users, items, 30)
    batch_users = np.arange(20).repeat(3)
    a = sampler.sample(batch_users, 2, np.random.default_rng(7))
    b = sampler.sample(batch_users, 2, np.random.default_rng(7))
    c = sampler.sample(batch_users, 2, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("negatives", ["sampled", "in_batch"])
def test_pair_batches_cover_each_pair_once_per_epoch(negatives):
    users, items = dense_positives(13, 20, 0.3, seed=3)  # 78 pairs
    sampler = NegativeSampler(users, items, 20)
    config = SamplingConfig(batch_size=16, negatives=negatives, num_negatives=2)
    data = PairBatches(users, items, sampler, config, seed=5)
    batches = list(data)
    assert len(batches) == len(data) == 5  # ceil(78 / 16)
    assert [len(b["users"]) for b in batches] == [16, 16, 16, 16, 14]
    seen = Counter(
        (int(u), int(i))
        for b in batches
        for u, i in zip(b["users"].tolist(), b["pos_items"].tolist(), strict=True)
    )
    assert seen == Counter(zip(users.tolist(), items.tolist(), strict=True))
    if negatives == "sampled":
        assert all(b["neg_items"].shape == (len(b["users"]), 2) for b in batches)
    else:
        assert all("neg_items" not in b for b in batches)
    # the same seed replays the same epoch; the order is shuffled
    again = list(PairBatches(users, items, sampler, config, seed=5))
    assert all(torch.equal(x["users"], y["users"]) for x, y in zip(batches, again, strict=True))
    order = torch.cat([b["users"] for b in batches]).numpy()
    assert not np.array_equal(order, users)
