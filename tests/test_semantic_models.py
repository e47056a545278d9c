"""Content-only, two-stage and DAS models on tiny synthetic data with content."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.features.pipeline import ItemFeatures, ModalityFeatures
from recsys.models import TrainingGraph, build_model
from recsys.models.content import ContentConfig
from recsys.models.das import DASConfig
from recsys.models.losses import info_nce, orthogonality_loss
from recsys.models.quantizer import assign_semantic_ids, codebook_stats
from recsys.models.two_stage import TwoStageConfig
from recsys.train.optim import adam_for


def test_info_nce_closed_form_2x2():
    # cosines: a0·p0 = 1, a0·p1 = 0, a1·p0 = 0, a1·p1 = 1; τ = 0.5 → logits 2 / 0
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    assert info_nce(a, p, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)
    # a swapped positive: row 0's positive is orthogonal, a negative is parallel
    expected_bad = -math.log(math.exp(0) / (math.exp(0) + math.exp(2)))
    assert info_nce(a, p.flip(0), temperature=0.5).item() == pytest.approx(expected_bad, rel=1e-6)


def test_info_nce_leaves_false_negatives_out():
    # τ = 1; cosines row 0: [1, 0, 0], row 1: [0, 1, 1], row 2: [1, 0, 0]
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    e = math.e
    plain = (-math.log(e / (e + 2)) - math.log(e / (1 + 2 * e)) - math.log(1 / (e + 2))) / 3
    assert info_nce(a, p, 1.0).item() == pytest.approx(plain, rel=1e-6)
    distinct = torch.tensor([7, 8, 9])
    assert info_nce(a, p, 1.0, distinct, distinct).item() == pytest.approx(plain, rel=1e-6)
    # rows 0 and 2 hold the same positive entity: each leaves the other out; row 1 keeps all
    masked = (-math.log(e / (e + 1)) - math.log(e / (1 + 2 * e)) + math.log(2)) / 3
    same_item = torch.tensor([5, 6, 5])
    assert info_nce(a, p, 1.0, positive_ids=same_item).item() == pytest.approx(masked, rel=1e-6)
    # the same anchor entity (a user's two positives) masks the same cells
    assert info_nce(a, p, 1.0, anchor_ids=same_item).item() == pytest.approx(masked, rel=1e-6)


def test_orthogonality_loss():
    a = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    assert orthogonality_loss(a, torch.tensor([[0.0, 2.0], [5.0, 0.0]])).item() == 0.0
    assert orthogonality_loss(a, 2 * a).item() == pytest.approx(1.0)
    diag = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert orthogonality_loss(a, diag).item() == pytest.approx(0.5)  # cos² 45° = 1/2


def synthetic_content_graph(n_users=40, n_items=30, cold=(27, 28, 29), seed=0):
    """Items in 3 clusters with cluster-coded content; users prefer one cluster.
    Items in ``cold`` have no training interaction."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(n_items) % 3
    centers = rng.normal(size=(3, 16))
    text = centers[cluster] + 0.1 * rng.normal(size=(n_items, 16))
    tab = np.eye(3)[cluster].astype(np.float32)
    present = np.ones(n_items, bool)
    present[5] = False  # one item lacks text
    text[5] = 0
    feats = ItemFeatures(
        [f"i{i}" for i in range(n_items)],
        {
            "text": ModalityFeatures(text.astype(np.float32), present),
            "tabular": ModalityFeatures(tab, np.ones(n_items, bool)),
        },
    )
    users, items = [], []
    for u in range(n_users):
        pool = [i for i in range(n_items) if cluster[i] == u % 3 and i not in cold]
        for i in rng.choice(pool, size=5, replace=False):
            users.append(u)
            items.append(int(i))
    graph = TrainingGraph(n_users, n_items, np.array(users), np.array(items))
    graph.item_features = feats
    return graph, cluster


def test_content_model_user_is_recency_weighted_mean():
    graph, _ = synthetic_content_graph()
    model = build_model(ContentConfig(recency_decay=0.5), graph)
    user, item = model.embeddings()
    # user 0 by hand: weights 0.5^k from the most recent training item backwards
    rows = np.flatnonzero(graph.train_users == 0)
    weights = 0.5 ** np.arange(len(rows))[::-1]
    expected = (weights[:, None] * item.numpy()[graph.train_items[rows]]).sum(0)
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(user[0].numpy(), expected, atol=1e-5)
    assert torch.allclose(item.norm(dim=1), torch.ones(item.shape[0]), atol=1e-5)
    # the item without text is filled with the mean text vector, not zeros
    assert item[5, :16].abs().sum() > 0


def _train(model, graph, steps=30, lr=0.01, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(steps):
        idx = rng.integers(0, len(graph.train_users), size=64)
        batch = {
            "users": torch.as_tensor(graph.train_users[idx]),
            "pos_items": torch.as_tensor(graph.train_items[idx]),
            "neg_items": torch.as_tensor(rng.integers(0, graph.n_items, size=(64, 1))),
        }
        losses = model.loss(batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return pd.DataFrame(history)


def small_das(**overrides) -> DASConfig:
    quant = {"levels": 2, "codebook_size": 4, "dead_code_steps": 0, "sinkhorn_last_level": False}
    raw = {
        "dim": 16, "pop_dim": 4, "input_dim": 8, "align_batch_size": 32,
        "item_fusion": {"hidden_dim": 16, "dropout": 0.0},
        "user_fusion": {"hidden_dim": 16, "dropout": 0.0},
        "item_quantizer": quant, "user_quantizer": quant,
        "weights": {"align_dual": 1.0, "align_self": 1.0, "cooc": 1.0, "debias_pop": 1.0,
                    "debias_orth": 1.0},
        **overrides,
    }  # fmt: skip
    return DASConfig.model_validate(raw)


def test_das_history_means_are_the_pairwise_sums_without_per_pair_rows():
    """The users' recency-weighted history means: bit for bit the pair-by-pair float64
    sums (``np.add.at`` over ``w·x`` rows, the reference), with absent items left out and
    users without a present item empty; and no ``(pairs, D)`` temporary on the way (numpy's
    allocations are traced): those were 14 GB at a million users."""
    import tracemalloc

    from recsys.models.das import history_means

    rng = np.random.default_rng(3)
    n_users, n_items, dim, n_pairs = 300, 80, 64, 40_000
    users = np.sort(rng.integers(0, n_users - 5, n_pairs))  # the last users have no history
    items = rng.integers(0, n_items, n_pairs)  # repeats within a user included
    x = rng.standard_normal((n_items, dim)).astype(np.float32)
    present = rng.random(n_items) > 0.2
    graph = TrainingGraph(n_users, n_items, users, items)
    decay = 0.8
    tracemalloc.start()
    try:
        ((mean, has),) = history_means({"c": (x, present)}, graph, decay).values()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a few scalars a pair (ranks, weights, order: 5 MB), not a row a pair (20 MB at least)
    assert peak < n_pairs * 8 * 16
    w = decay ** graph.recency_rank().astype(np.float64)
    keep = present[items]
    total = np.zeros((n_users, dim))
    np.add.at(total, users[keep], w[keep, None] * x[items[keep]])
    mass = np.bincount(users[keep], weights=w[keep], minlength=n_users)
    expected = (total / np.maximum(mass, 1e-12)[:, None]).astype(np.float32)
    np.testing.assert_array_equal(mean, expected)
    np.testing.assert_array_equal(has, mass > 0)
    assert not has[-5:].any() and (mean[-5:] == 0).all()


def test_das_few_steps_reduce_every_loss_term():
    graph, _ = synthetic_content_graph()
    model = build_model(small_das(), graph)
    history = _train(model, graph, steps=60)
    first, last = history.iloc[:10].mean(), history.iloc[-10:].mean()
    for term in ["loss", "rec_loss", "align_dual_loss", "align_self_loss", "cooc_loss",
                 "debias_pop_loss", "debias_orth_loss"]:  # fmt: skip
        assert last[term] < first[term], (term, first[term], last[term])


def test_das_cold_item_uses_no_id_embedding():
    graph, _ = synthetic_content_graph()
    model = build_model(small_das(), graph)
    model.eval()
    _, items_before = model.embeddings()
    with torch.no_grad():
        model.item.weight[27:30] += 100.0  # the cold items' ID embeddings
        model.item.weight[0] += 100.0  # a warm item's
    _, items_after = model.embeddings()
    assert torch.equal(items_before[27:30], items_after[27:30])
    assert not torch.equal(items_before[0], items_after[0])
    assert items_after[27:30].abs().sum() > 0  # still represented: by its semantic ID


def test_das_semantic_ids_are_unique_and_stable_across_reload(tmp_path):
    graph, _ = synthetic_content_graph()
    model = build_model(small_das(), graph)
    _train(model, graph, steps=10)
    model.eval()
    sids = model.semantic_ids()
    assert set(sids) == {"items", "users"}
    items, stats = sids["items"]
    assert items.shape == (30, 3) and len({tuple(r) for r in items}) == 30
    assert 0 < stats["utilization_l0"] <= 1
    torch.save(model.state_dict(), tmp_path / "m.pt")
    clone = build_model(small_das(), graph)
    clone.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    clone.eval()
    np.testing.assert_array_equal(clone.semantic_ids()["items"][0], items)
    np.testing.assert_array_equal(clone.semantic_ids()["users"][0], sids["users"][0])
    u1, i1 = model.embeddings()
    u2, i2 = clone.embeddings()
    assert torch.equal(u1, u2) and torch.equal(i1, i2)


def test_das_ablation_switches():
    graph, _ = synthetic_content_graph()
    item_only = build_model(small_das(dual=False), graph)
    assert item_only.user_tower is None and set(item_only.semantic_ids()) == {"items"}
    no_align = small_das(weights={"align_dual": 0, "align_self": 0, "cooc": 0})
    history = _train(build_model(no_align, graph), graph, steps=3)
    assert np.isfinite(history["loss"]).all()


def test_das_leave_target_out_pools_the_history_without_the_pair_item():
    graph, _ = synthetic_content_graph()
    # user 0 keeps one item only: leaving it out empties their history
    one = np.flatnonzero(graph.train_users == 0)[1:]
    keep = np.setdiff1d(np.arange(len(graph.train_users)), one)
    graph = TrainingGraph(graph.n_users, graph.n_items, graph.train_users[keep],
                          graph.train_items[keep], item_features=graph.item_features)  # fmt: skip
    beta, decay, gamma = 2.0, 0.8, 1.5
    config = small_das(
        **CONTENT_CONCAT, user_semantic="history", user_history_weight=beta,
        history_decay=decay, semantic_weight=gamma, history_leave_target_out=True,
    )  # fmt: skip
    model = build_model(config, graph)
    model.eval()
    with torch.no_grad():
        vectors = model._concat_vectors(model.item_tower(None), None)
        users, items = torch.as_tensor(graph.train_users), torch.as_tensor(graph.train_items)
        collab, semantic = model._leave_target_out(vectors, users, items)
    d = config.dim
    c_i, s_i = vectors.items[:, :d].numpy(), vectors.items[:, d:].numpy()
    own = (vectors.collab_users - beta * vectors.collab_history).numpy()  # propagated ID rows
    weight = decay ** graph.recency_rank().astype(float)
    for row, (u, i) in enumerate(zip(graph.train_users, graph.train_items, strict=True)):
        others = (graph.train_users == u) & (graph.train_items != i)
        w = weight[others] / weight[others].sum() if others.any() else weight[others]
        rest = graph.train_items[others]
        want_c = own[u] + beta * (w @ c_i[rest] if others.any() else 0)
        want_s = gamma * (w @ s_i[rest]) if others.any() else np.zeros(s_i.shape[1])
        np.testing.assert_allclose(collab[row].numpy(), want_c, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(semantic[row].numpy(), want_s, rtol=1e-4, atol=1e-5)
    # scoring is unchanged: the held-out item is never in the history there
    plain = build_model(config.model_copy(update={"history_leave_target_out": False}), graph)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    with torch.no_grad():
        for got, want in zip(model.embeddings(), plain.embeddings(), strict=True):
            assert torch.equal(got, want)
        batch = {"users": users[:8], "pos_items": items[:8], "neg_items": items[8:16, None]}
        assert float(model.loss(batch)["rec_loss"]) != float(plain.loss(batch)["rec_loss"])


@pytest.mark.parametrize(
    "settings",
    [
        {"user_semantic": "history", "user_history_weight": 2.0, "history_leave_target_out": True},
        {"user_semantic": "history", "user_history_weight": 2.0},
        {"user_semantic": "sid"},
    ],
)
@pytest.mark.parametrize("frozen", [False, True])
def test_das_batch_user_tables_give_every_users_loss_and_gradients(monkeypatch, settings, frozen):
    """A training step builds user tables (propagated rows, history pools) for its batch's
    users only; the reference is the tables of every user, as scoring builds them."""
    from recsys.models.das import combination

    graph, _ = synthetic_content_graph()

    def fresh_model():  # a forward moves quantizer state: each path gets its own model
        torch.manual_seed(0)
        model = build_model(small_das(**CONTENT_CONCAT, **settings), graph)
        if frozen:
            model.on_train_epoch_start(0)
        return model

    rng = np.random.default_rng(1)
    idx = rng.integers(0, len(graph.train_users), size=48)  # repeated users
    batch = {
        "users": torch.as_tensor(graph.train_users[idx]),
        "pos_items": torch.as_tensor(graph.train_items[idx]),
        "neg_items": torch.as_tensor(rng.integers(0, graph.n_items, size=(48, 1))),
    }

    def step(model) -> tuple[dict, dict]:
        torch.manual_seed(0)  # the co-occurrence term samples neighbours
        model.zero_grad()
        losses = model.loss(batch)
        losses["loss"].backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        return {k: v.detach() for k, v in losses.items()}, grads

    assert len(batch["users"].unique()) < graph.n_users  # a real subset
    got_losses, got_grads = step(fresh_model())
    # None: every user's tables (the scoring path), a pair's row is its user's index
    monkeypatch.setattr(combination, "batch_user_rows", lambda users: (None, users))
    want_losses, want_grads = step(fresh_model())
    assert got_losses.keys() == want_losses.keys() and got_grads.keys() == want_grads.keys()
    for name, value in want_losses.items():
        assert torch.equal(got_losses[name], value), name
    for name, grad in want_grads.items():
        assert torch.equal(got_grads[name], grad), name


@pytest.mark.parametrize(
    "settings",
    [
        {"user_semantic": "history", "user_history_weight": 2.0, "history_leave_target_out": True},
        {"user_semantic": "sid", "transition_dim": 8},
        {"user_semantic": "history", "user_history_weight": 2.0, "transition_dim": 8,
         "code_embeddings": True, "sparse_updates": True},
        {"user_semantic": "history", "user_history_weight": 2.0, "history_leave_target_out": True,
         "history_fanout": 1000},
    ],
)  # fmt: skip
def test_das_with_covering_fanouts_has_the_whole_graphs_loss_and_gradients(settings):
    """Sampled propagation whose fanouts cover every degree draws every edge: the step's
    losses and gradients are the whole-graph step's (up to summation order); with
    sparse_updates the tables' gradients are those, held as sparse rows."""
    graph, _ = synthetic_content_graph()
    rng = np.random.default_rng(2)
    idx = rng.integers(0, len(graph.train_users), size=6)  # few: history items not in pairs
    batch = {
        "users": torch.as_tensor(graph.train_users[idx]),
        "pos_items": torch.as_tensor(graph.train_items[idx]),
        "neg_items": torch.as_tensor(rng.integers(0, graph.n_items, size=(6, 1))),
    }
    results = []
    for fanouts in (None, [1000, 1000]):
        torch.manual_seed(0)
        sparse = settings.get("sparse_updates", False) and fanouts is not None
        sampled_only = {"sparse_updates": sparse}
        if fanouts is None:  # the whole-graph step has no history draw
            sampled_only["history_fanout"] = None
        config = small_das(**CONTENT_CONCAT, **{**settings, **sampled_only},
                           fanouts=fanouts)  # fmt: skip
        model = build_model(config, graph)
        model.on_train_epoch_start(0)
        torch.manual_seed(1)  # the co-occurrence term samples neighbours
        losses = model.loss(batch)
        losses["loss"].backward()
        grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
        results.append(({k: v.detach() for k, v in losses.items()}, grads))
    (want_losses, want_grads), (got_losses, got_grads) = results
    assert got_losses.keys() == want_losses.keys() and got_grads.keys() == want_grads.keys()
    for name, value in want_losses.items():
        torch.testing.assert_close(got_losses[name], value, msg=name)
    for name, grad in want_grads.items():
        got = got_grads[name]
        assert got.is_sparse == (settings.get("sparse_updates", False) and grad.dim() == 2
                                 and name.split(".")[0] in ("user", "item", "item_suffix_emb",
                                                             "transition")), name  # fmt: skip
        torch.testing.assert_close(got.to_dense() if got.is_sparse else got, grad, msg=name)


def test_das_samples_its_steps_items_and_trains():
    graph, _ = synthetic_content_graph()
    config = small_das(
        **CONTENT_CONCAT, user_semantic="history", user_history_weight=2.0, fanouts=[2, 2]
    )
    model = build_model(config, graph)
    users, pos = torch.tensor([3, 7, 7]), torch.tensor([0, 4, 5])
    neg = torch.tensor([[1], [2], [26]])
    items, pos_at, neg_at, drawn = model.batch_items(users.unique(), pos, neg)
    assert drawn is None  # whole histories: history_pool's rows
    history = graph.train_items[np.isin(graph.train_users, [3, 7])]
    want = np.unique(np.concatenate([pos.numpy(), neg.numpy().ravel(), history]))
    assert items.tolist() == want.tolist()
    assert torch.equal(items[pos_at], pos) and torch.equal(items[neg_at], neg)
    torch.manual_seed(0)
    model = build_model(config, graph)
    history = _train(model, graph, steps=60)
    first, last = history.iloc[:10].mean(), history.iloc[-10:].mean()
    for term in ["loss", "rec_loss", "align_dual_loss", "align_self_loss", "cooc_loss"]:
        assert last[term] < first[term], (term, first[term], last[term])
    with pytest.raises(ValueError, match="fanouts needs semantic_combination: concat"):
        small_das(fanouts=[2, 2])
    ema = {**CONTENT_CONCAT, "freeze_sids_epoch": None}
    ema["item_quantizer"] = {**ema["item_quantizer"], "codebook_update": "ema"}
    with pytest.raises(ValueError, match="codebook_update: grad or freeze_sids_epoch: 0"):
        small_das(**ema, fanouts=[2, 2])


def test_das_drawn_histories_are_unbiased_estimates_of_the_pooled_ones():
    """history_fanout f: a user with at most f history items keeps them with their
    weights at every draw; a longer history is f items drawn by their recency weights,
    1/f each, whose mean over many draws is the pool's row (a draw ignoring the weights,
    or weighting them twice, fails it); the step's items are its pairs' and the drawn ones."""
    full, _ = synthetic_content_graph()
    rank = np.arange(len(full.train_users)) % 5  # each user's 5 items in a row
    keep = rank <= full.train_users % 5  # histories of 1 to 5 items
    graph = TrainingGraph(full.n_users, full.n_items, full.train_users[keep],
                          full.train_items[keep])  # fmt: skip
    graph.item_features = full.item_features
    fanout = 2
    config = small_das(**CONTENT_CONCAT, user_semantic="history", user_history_weight=2.0,
                       history_decay=0.6, fanouts=[2, 2], history_fanout=fanout)  # fmt: skip
    model = build_model(config, graph)
    users = torch.arange(graph.n_users)
    exact = model.history_pool.to_dense()  # (U, I)
    lengths = (exact > 0).sum(1)
    assert (lengths <= fanout).any() and (lengths >= fanout + 2).any()
    pos, neg = torch.tensor([0]), torch.tensor([[1]])
    torch.manual_seed(0)
    draws = []
    for _ in range(2000):
        items, _, _, pool = model.batch_items(users, pos, neg)
        dense = torch.zeros(graph.n_users, graph.n_items)
        index = pool.coalesce().indices()
        dense[index[0], items[index[1]]] = pool.coalesce().values()
        assert set(items.tolist()) == set(items[index[1]].tolist()) | {0, 1}
        draws.append(dense)
    draws = torch.stack(draws)  # (R, U, I)
    torch.testing.assert_close(draws.sum(2), exact.sum(1).expand(len(draws), -1))
    short = lengths <= fanout
    assert torch.equal(draws[:, short], exact[short].expand(len(draws), -1, -1))
    mean, se = draws.mean(0), draws.std(0) / len(draws) ** 0.5
    assert ((mean - exact).abs() <= 4.5 * se + 1e-6).all()
    with pytest.raises(ValueError, match="history_fanout needs fanouts"):
        small_das(**CONTENT_CONCAT, user_semantic="history", history_fanout=2)


def test_das_leave_target_out_needs_a_pooled_history():
    with pytest.raises(ValueError, match="history_leave_target_out"):
        small_das(**CONTENT_CONCAT, user_semantic="sid", history_leave_target_out=True)


def test_two_stage_codes_fixed_and_cold_items_represented():
    graph, cluster = synthetic_content_graph()
    config = TwoStageConfig(dim=8, quantizer={"kind": "rqkmeans", "levels": 2, "codebook_size": 3})
    model = build_model(config, graph)
    sids = model.semantic_ids()["items"][0]
    assert len({tuple(r) for r in sids}) == 30
    # first-level codes recover the content clusters (3 clean clusters, 3 codes)
    pairs = {(int(c), int(k)) for c, k in zip(cluster, sids[:, 0], strict=True)}
    assert len(pairs) == 3
    before = model.sids.clone()
    _train(model, graph, steps=5)
    assert torch.equal(before, model.sids)  # stage 1 stays frozen
    _, items = model.embeddings()
    assert items[27:30].abs().sum() > 0


def test_das_code_churn_metric():
    graph, _ = synthetic_content_graph()
    model = build_model(small_das(), graph)
    first = model.epoch_metrics()
    assert "sid_changed_frac" not in first  # nothing to compare with yet
    assert model.epoch_metrics()["sid_changed_frac"] == 0.0  # no step in between
    before = model.item_tower.codes()
    _train(model, graph, steps=20, lr=0.05)
    after = model.item_tower.codes()
    expected = float((before != after).any(dim=1).float().mean())
    assert model.epoch_metrics()["sid_changed_frac"] == pytest.approx(expected)


@pytest.mark.parametrize("revive", [False, True])
def test_das_revive_codes_after_an_epoch_uses_every_code(revive):
    graph, _ = synthetic_content_graph()
    quant = {"levels": 2, "codebook_size": 8, "dead_code_steps": 0, "sinkhorn_last_level": False}
    torch.manual_seed(0)
    config = small_das(
        item_fusion={"hidden_dim": 16, "dropout": 0.5, "modality_dropout": 0.5},
        item_quantizer=quant, user_quantizer=quant, revive_codes=revive,
    )  # fmt: skip
    model = build_model(config, graph)
    _train(model, graph, steps=30, lr=0.05)
    item_books = model.item_tower.quantizer.codebooks.clone()
    stats = codebook_stats(model.item_tower.codes(), 8)
    assert stats["utilization_mean"] < 1.0  # training left codes unused
    emb_before = [e.weight.detach().clone() for e in model.item_tower.code_emb]
    edited = model.after_epoch_steps()  # parameters set outside the optimiser
    if not revive:  # nothing moves
        assert edited == {}
    else:  # a revived code starts from its source code's embedding
        for level, emb in enumerate(model.item_tower.code_emb):
            before, after = emb_before[level], emb.weight.detach()
            assert torch.equal(edited[f"item_tower.code_emb.{level}.weight"], after != before)
            changed = torch.nonzero((after != before).any(1)).flatten().tolist()
            assert changed  # (a code a split at level 0 leaves dead is revived too)
            for code in changed:
                assert any(torch.equal(after[code], before[s]) for s in range(8) if s != code)
    for tower, n in ((model.item_tower, 8), (model.user_tower, 8)):
        used = codebook_stats(tower.codes(), n)["utilization_mean"]
        assert (used == 1.0) if revive else True
    if not revive:
        assert torch.equal(model.item_tower.quantizer.codebooks, item_books)
        assert "sid_revived_codes" not in model.epoch_metrics()
    else:
        assert model.epoch_metrics()["sid_revived_codes"] > 0


def test_das_frozen_ids_stop_moving_and_survive_reload(tmp_path):
    graph, _ = synthetic_content_graph()
    config = small_das(code_embeddings=True, freeze_sids_epoch=1)
    model = build_model(config, graph)
    model.on_train_epoch_start(0)
    assert not bool(model.item_tower.frozen)
    _train(model, graph, steps=10, lr=0.05)
    model.on_train_epoch_start(1)
    assert bool(model.item_tower.frozen) and bool(model.user_tower.frozen)
    codes, user_codes = model.item_tower.codes(), model.user_tower.codes()
    model.epoch_metrics()
    fusion = [p.detach().clone() for p in model.item_tower.fusion.parameters()]
    books = model.item_tower.quantizer.codebooks.detach().clone()
    tables = [e.weight.detach().clone() for e in model.item_tower.code_emb]
    history = _train(model, graph, steps=20, lr=0.05)
    assert torch.equal(model.item_tower.codes(), codes)
    assert torch.equal(model.user_tower.codes(), user_codes)
    assert model.epoch_metrics()["sid_changed_frac"] == 0.0
    assert (history["quant_loss"] == 0).all()
    for before, after in zip(fusion, model.item_tower.fusion.parameters(), strict=True):
        assert torch.equal(before, after)  # the tower no longer trains ...
    assert torch.equal(books, model.item_tower.quantizer.codebooks)
    # ... while the embeddings indexed by the frozen IDs do
    pairs = zip(tables, model.item_tower.code_emb, strict=True)
    assert any(not torch.equal(t, e.weight) for t, e in pairs)
    # the representation is the frozen codes' codeword sum plus their code embeddings
    expected = model.item_tower.quantizer.decode(codes) + sum(
        e(codes[:, level]) for level, e in enumerate(model.item_tower.code_emb)
    )
    torch.testing.assert_close(model.item_tower(None).quantized, expected)
    # a later epoch start does not refreeze (the codes would be the same anyway)
    model.on_train_epoch_start(2)
    assert torch.equal(model.item_tower.codes(), codes)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    clone = build_model(config, graph)
    clone.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert bool(clone.item_tower.frozen)
    np.testing.assert_array_equal(
        clone.semantic_ids()["items"][0], model.semantic_ids()["items"][0]
    )
    model.eval(), clone.eval()
    for a, b in zip(model.embeddings(), clone.embeddings(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("update", ["ema", "grad"])
def test_frozen_tower_codeword_sums_are_cached_only_while_nothing_moves(update):
    """Once frozen, EMA codebooks stop moving, so the item tower decodes its codes once
    and reuses the sums (bitwise the fresh decode); a codebook or code change is noticed;
    codebooks that train by gradient are decoded at every step (they need the graph)."""
    graph, _ = synthetic_content_graph()
    quant = {"levels": 2, "codebook_size": 4, "dead_code_steps": 0, "codebook_update": update}
    config = small_das(freeze_sids_epoch=0, code_embeddings=True, item_quantizer=quant)
    model = build_model(config, graph)
    model.on_train_epoch_start(0)
    tower = model.item_tower
    codes, quantizer = tower.frozen_codes, tower.quantizer

    def fresh() -> torch.Tensor:
        return quantizer.decode(codes) + sum(e(codes[:, i]) for i, e in enumerate(tower.code_emb))

    first, second = tower(None).quantized, tower(None).quantized
    assert torch.equal(first, fresh()) and torch.equal(second, first)
    cached = tower._decoded
    if update == "grad":
        assert cached is None and first.grad_fn is not None
        # the training optimiser's (fused) step moves the codebooks without bumping their
        # version counter: evaluation after it must see the moved codebooks, not a sum
        # kept from an earlier evaluation
        optimizer = adam_for(model, model.sparse_parameters(), 0.1, 0.0)
        with torch.no_grad():
            before = tower(None).quantized
        (first * torch.randn_like(first)).sum().backward()
        assert quantizer.codebooks.grad is not None  # the codebooks still train
        optimizer.step()
        with torch.no_grad():
            after = tower(None).quantized
        assert not torch.equal(after, before) and torch.equal(after, fresh())
        return
    assert cached is not None and torch.equal(cached[1], quantizer.decode(codes))
    with torch.no_grad():
        quantizer.codebooks[0, codes[0, 0]] += 1.0  # a codebook moved: decoded again
    assert torch.equal(tower(None).quantized, fresh()) and tower._decoded[1] is not cached[1]
    with torch.no_grad():
        codes[0, 0] = (codes[0, 0] + 1) % quantizer.codebook_size  # so did a code
    assert torch.equal(tower(None).quantized, fresh())


def test_das_freeze_refits_and_uses_every_code():
    graph, _ = synthetic_content_graph()
    config = small_das(freeze_sids_epoch=0, code_embeddings=True)
    model = build_model(config, graph)
    _train(model, graph, steps=10, lr=0.05)
    with torch.no_grad():
        for emb in model.item_tower.code_emb:
            emb.weight.fill_(1.0)
    model.on_train_epoch_start(0)
    codes = model.item_tower.codes()
    # 30 items, 4 codes per level: residual k-means leaves no code of a level empty
    for level in range(codes.shape[1]):
        assert set(codes[:, level].tolist()) == {0, 1, 2, 3}
    # the frozen codes are the re-fitted quantizer's nearest codes, and the code
    # embeddings restart from zero (they were indexed by the codes they replace)
    model.item_tower.eval()
    z = model.item_tower.fusion(model.item_tower.inputs(None))
    assert torch.equal(model.item_tower.quantizer.encode(z), codes)
    assert all(float(e.weight.detach().abs().sum()) == 0 for e in model.item_tower.code_emb)


CONTENT_CONCAT = {
    "semantic_input": "content", "semantic_combination": "concat", "freeze_sids_epoch": 0,
    "item_quantizer": {"levels": 2, "codebook_size": 4, "dead_code_steps": 0,
                       "codebook_update": "grad"},
}  # fmt: skip


@pytest.mark.parametrize("user_semantic", ["sid", "history"])
def test_das_content_concat_scores_collaborative_plus_semantic(user_semantic):
    graph, _ = synthetic_content_graph()
    model = build_model(small_das(**CONTENT_CONCAT, user_semantic=user_semantic), graph)
    model.on_train_epoch_start(0)
    history = _train(model, graph, steps=40)
    first, last = history.iloc[:10].mean(), history.iloc[-10:].mean()
    for term in ["loss", "rec_loss", "align_dual_loss", "align_self_loss"]:
        assert last[term] < first[term], (term, first[term], last[term])
    model.eval()
    with torch.no_grad():
        users, items = model.embeddings()
    content_dim = model.item_tower.quantizer.dim
    assert users.shape[1] == items.shape[1] == 16 + content_dim
    # the semantic half of an item is its semantic ID's codeword sum in content space
    codes = model.item_tower.codes()
    torch.testing.assert_close(items[:, 16:], model.item_tower.quantizer.decode(codes))
    if user_semantic == "history":
        # a user's: the recency-weighted (0.9^k) mean of their history items' halves
        u = int(graph.train_users[0])
        mine = graph.train_items[graph.train_users == u]  # chronological
        w = 0.9 ** np.arange(len(mine))[::-1]
        expected = (w[:, None] * items[mine, 16:].numpy()).sum(0) / w.sum()
        np.testing.assert_allclose(users[u, 16:].numpy(), expected, rtol=1e-4, atol=1e-6)
        # the valid item joins the history when test is scored
        extra = np.array([u]), np.array([29])
        assert model.use_history(
            np.concatenate([graph.train_users, extra[0]]),
            np.concatenate([graph.train_items, extra[1]]),
        )
        with torch.no_grad():
            moved, _ = model.embeddings()
        w2 = np.concatenate([w * 0.9, [1.0]])
        rows = np.concatenate([mine, [29]])
        expected = (w2[:, None] * items[rows, 16:].numpy()).sum(0) / w2.sum()
        np.testing.assert_allclose(moved[u, 16:].numpy(), expected, rtol=1e-4, atol=1e-6)
    # a cold item's collaborative half is its code embeddings only: ID weights unused
    before = model.embeddings()[1][27:30]
    with torch.no_grad():
        model.item.weight[27:30] += 100.0
    assert torch.equal(model.embeddings()[1][27:30], before)


def test_das_collaborative_ego_follows_the_codes_through_the_suffix_cache():
    """A concat-mode item's layer-0 collaborative row: ID row (warm) + code embeddings +
    the suffix embedding of its semantic ID's disambiguating column (warm), that column
    cached between steps but recomputed as soon as the codes move."""
    graph, _ = synthetic_content_graph()
    model = build_model(small_das(**CONTENT_CONCAT), graph)
    model.on_train_epoch_start(0)  # freeze_sids_epoch 0: the IDs are fixed from here
    torch.manual_seed(0)
    with torch.no_grad():
        model.item_suffix_emb.weight.normal_()

    def expected(codes):
        warm = model.warm_items[:, None]
        row = model.item.weight * model.warm[:, None]
        row = row + sum(emb(codes[:, k]) for k, emb in enumerate(model.item_code_emb))
        return row + model.item_suffix_emb(assign_semantic_ids(codes)[:, -1]) * warm

    def ego():
        return model._collaborative_item_ego(model.item_tower())

    with torch.no_grad():
        frozen = model.item_tower.codes()
        torch.testing.assert_close(ego(), expected(frozen))
        moved = frozen.clone()
        moved[:, 1] = 0  # every item onto one last-level code: the collisions change
        assert not torch.equal(assign_semantic_ids(moved), assign_semantic_ids(frozen))
        model.item_tower.frozen_codes.copy_(moved)
        torch.testing.assert_close(ego(), expected(moved))


def test_das_user_history_weight_adds_recency_mean_of_collaborative_items():
    graph, _ = synthetic_content_graph()
    beta = 0.5
    config = small_das(**CONTENT_CONCAT, user_semantic="history", user_history_weight=beta)
    model = build_model(config, graph)
    model.on_train_epoch_start(0)
    _train(model, graph, steps=10)
    model.eval()

    def collaborative_halves():
        with torch.no_grad():
            users, items = model.embeddings()
        return users[:, :16].numpy(), items[:, :16].numpy()

    with_history, items = collaborative_halves()
    model.collab_history = False
    alone, items_alone = collaborative_halves()
    model.collab_history = True
    np.testing.assert_array_equal(items, items_alone)  # items do not depend on it
    u = int(graph.train_users[0])
    mine = graph.train_items[graph.train_users == u]  # chronological
    w = 0.9 ** np.arange(len(mine))[::-1]
    expected = alone[u] + beta * (w[:, None] * items[mine]).sum(0) / w.sum()
    np.testing.assert_allclose(with_history[u], expected, rtol=1e-4, atol=1e-6)
    # the valid item joins the history when test is scored
    assert model.use_history(
        np.concatenate([graph.train_users, [u]]), np.concatenate([graph.train_items, [29]])
    )
    moved, _ = collaborative_halves()
    w2 = np.concatenate([w * 0.9, [1.0]])
    rows = np.concatenate([mine, [29]])
    expected = alone[u] + beta * (w2[:, None] * items[rows]).sum(0) / w2.sum()
    np.testing.assert_allclose(moved[u], expected, rtol=1e-4, atol=1e-6)


def test_das_user_history_weight_needs_concat():
    with pytest.raises(ValueError, match="user_history_weight"):
        small_das(user_history_weight=1.0)


def test_das_cold_semantic_weight_scales_only_cold_items_semantic_half_in_scoring():
    graph, _ = synthetic_content_graph()  # items 27-29 cold
    kappa = 3.0
    models = {}
    for k in (1.0, kappa):
        torch.manual_seed(0)
        model = build_model(small_das(**CONTENT_CONCAT, cold_semantic_weight=k), graph)
        model.on_train_epoch_start(0)
        history = _train(model, graph, steps=10)
        model.eval()
        with torch.no_grad():
            models[k] = (history, *model.embeddings())
    # training never sees κ: the same losses, step by step
    pd.testing.assert_frame_equal(models[1.0][0], models[kappa][0])
    (_, users, items), (_, users_k, items_k) = models[1.0], models[kappa]
    torch.testing.assert_close(users_k, users)
    torch.testing.assert_close(items_k[:27], items[:27])  # warm items untouched
    torch.testing.assert_close(items_k[27:, :16], items[27:, :16])  # collaborative half
    torch.testing.assert_close(items_k[27:, 16:], kappa * items[27:, 16:])
    assert items[27:, 16:].abs().sum() > 0
    with pytest.raises(ValueError, match="cold_semantic_weight"):
        small_das(cold_semantic_weight=2.0)  # add mode has no separate semantic half


def test_das_popularity_weight_adds_ridge_prediction_from_semantic_ids():
    from sklearn.linear_model import Ridge

    graph, _ = synthetic_content_graph()  # items 27-29 cold
    lam = 0.7
    model = build_model(small_das(**CONTENT_CONCAT, popularity_weight=lam), graph)
    model.on_train_epoch_start(0)
    _train(model, graph, steps=10)
    model.eval()
    with torch.no_grad():
        users, items = model.embeddings()
        semantic = model.item_tower(None).quantized.numpy()
    assert users.shape[1] == items.shape[1] == 16 + semantic.shape[1] + 1
    np.testing.assert_allclose(users[:, -1].numpy(), lam)
    # independent reference: scikit-learn's ridge on the warm items' codeword sums
    counts = graph.item_counts()
    warm = counts > 0
    target = np.log1p(counts[warm])
    target = (target - target.mean()) / target.std()
    expected = Ridge(alpha=1.0).fit(semantic[warm], target).predict(semantic)
    np.testing.assert_allclose(items[:, -1].numpy(), expected, rtol=1e-4, atol=1e-5)
    # add mode: the same column after [interest ; conformity], fitted on s_i
    model = build_model(small_das(popularity_weight=lam), graph)
    model.eval()
    with torch.no_grad():
        users, items = model.embeddings()
        semantic = model.item_tower(None).quantized.numpy()
    assert users.shape[1] == items.shape[1] == model.config.dim + 1
    np.testing.assert_allclose(users[:, -1].numpy(), lam)
    expected = Ridge(alpha=1.0).fit(semantic[warm], target).predict(semantic)
    np.testing.assert_allclose(items[:, -1].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_das_popularity_in_training_adds_the_prior_to_the_trained_scores():
    """BPR on ``u·i + λ·pop_i``, pop the content model's trees refit here; without the
    flag the same call ignores the prior; the flag needs the content source."""
    from recsys.models.content import popularity_gbdt, raw_feature_matrix

    # enough warm items for the trees to split (the default graph's 27 give a constant)
    graph, _ = synthetic_content_graph(n_users=80, n_items=90, cold=(87, 88, 89))
    lam = 0.7
    prior = {"popularity_weight": lam, "popularity_source": "content"}
    model = build_model(small_das(**prior, popularity_in_training=True), graph)
    raw = raw_feature_matrix(graph.item_features)
    pop = popularity_gbdt(raw, graph.item_counts()).predict(raw)
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p, n = torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    pos, neg = torch.tensor([1, 5]), torch.tensor([88, 10])
    x_pos = np.array([1.0, 2.0]) + lam * pop[[1, 5]]
    x_neg = np.array([0.0, 0.0]) + lam * pop[[88, 10]]
    expected = np.log1p(np.exp(x_neg - x_pos)).mean()
    expected_plain = np.log1p(np.exp(np.array([0.0, 0.0]) - np.array([1.0, 2.0]))).mean()
    assert abs(expected - expected_plain) > 0.05  # the prior moves this batch's loss
    assert float(model._rec_loss([u], [p], [n], pos, neg)) == pytest.approx(expected, rel=1e-5)
    # the same vectors in two parts (columns split): the same loss
    halves = [[x[:, :1], x[:, 1:]] for x in (u, p, n)]
    assert float(model._rec_loss(*halves, pos, neg)) == pytest.approx(expected, rel=1e-5)
    plain = build_model(small_das(**prior), graph)
    plain_loss = float(plain._rec_loss([u], [p], [n], pos, neg))
    assert plain_loss == pytest.approx(expected_plain, rel=1e-5)
    history = _train(model, graph, steps=30)
    assert history["rec_loss"].iloc[-10:].mean() < history["rec_loss"].iloc[:10].mean()
    with pytest.raises(ValueError, match="popularity_in_training"):
        small_das(popularity_weight=lam, popularity_in_training=True)


def test_ddp_broadcasts_the_buffers_training_changes_and_not_those_built_from_the_data(
    tmp_path,
):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from recsys.train.distributed import skip_constant_buffers

    graph, _ = synthetic_content_graph()
    ema = {"levels": 2, "codebook_size": 4, "dead_code_steps": 0, "codebook_update": "ema"}
    config = small_das(transition_dim=8, semantic_combination="concat", item_quantizer=ema)
    model = build_model(config, graph)
    skip_constant_buffers(model)
    store = f"file://{tmp_path / 'store'}"  # no port to collide with
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        broadcast = set(DistributedDataParallel(model).named_module_buffers)
    finally:
        dist.destroy_process_group()
    changed_by_training = {
        f"{tower}.{name}"
        for tower in ("item_tower", "user_tower")
        for name in ("frozen", "frozen_books", "frozen_codes", "quantizer.codebooks",
                     "quantizer.ema_count", "quantizer.ema_sum", "quantizer.initialized",
                     "quantizer.unused_steps")
    }  # fmt: skip
    assert changed_by_training <= broadcast
    # built from the data with the model: graph tables, transition histories, content rows
    assert not {"u_ptr", "i_users", "transition.pair_keys", "item_tower.x0"} & broadcast
    assert broadcast - changed_by_training == {"item_pop", "user_pop", "warm", "warm_items"}


@pytest.mark.parametrize("settings", [{}, CONTENT_CONCAT], ids=["fusion", "content"])
def test_a_towers_codes_of_every_row_are_assigned_in_chunks_to_the_same_codes(
    settings, monkeypatch
):
    """Every item's and user's codes (a fused tower, and the content space's identity
    one; before and after the IDs freeze) equal the same tower's one-pass assignment,
    while no distance table spans more than ``ROWS_AT_ONCE`` rows (at a million rows one
    pass took 1 GB a table, several at once: a 1M-item run's history switch)."""
    from recsys.models.das import towers
    from recsys.models.quantizer import core

    graph, _ = synthetic_content_graph(n_users=40, n_items=30)
    model = build_model(small_das(**settings), graph)
    tower_list = [model.item_tower, model.user_tower]
    widest = []
    spy = core.pairwise_sq_dists

    def recorded(x, c):
        widest.append(len(x))
        return spy(x, c)

    for frozen in (False, True):
        if frozen:
            for tower in tower_list:
                tower.freeze()
        monkeypatch.setattr(towers, "ROWS_AT_ONCE", 10**9)
        whole = [tower._all_codes() for tower in tower_list]
        monkeypatch.setattr(towers, "ROWS_AT_ONCE", 7)
        monkeypatch.setattr(towers, "pairwise_sq_dists", recorded)
        monkeypatch.setattr(core, "pairwise_sq_dists", recorded)
        widest.clear()
        for tower, codes in zip(tower_list, whole, strict=True):
            assert len(codes) > 14 and torch.equal(tower._all_codes(), codes)
        assert widest and max(widest) <= 7
        monkeypatch.setattr(towers, "pairwise_sq_dists", spy)
        monkeypatch.setattr(core, "pairwise_sq_dists", spy)
