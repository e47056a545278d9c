"""The next-item transition block, alone and inside DAS, LightGCN and two-stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_semantic_models import CONTENT_CONCAT, _train, small_das, synthetic_content_graph

from recsys.models import TrainingGraph, build_model
from recsys.models.lightgcn import LightGCNConfig
from recsys.models.transition import TransitionBlock, preceding_items
from recsys.models.two_stage import TwoStageConfig

# user 0 saw items 3, 1, 4 in that order; user 1 saw 2, 0; user 2 nothing; item 5 cold
USERS = np.array([0, 1, 0, 0, 1])
ITEMS = np.array([3, 2, 1, 4, 0])


def test_preceding_items_by_hand():
    pair_items, pair_weights, user_items, user_weights = preceding_items(
        USERS, ITEMS, n_users=3, n_items=6, window=2, decay=0.5
    )
    pad = 6
    np.testing.assert_array_equal(pair_items, [[pad, pad], [pad, pad], [3, pad], [1, 3], [2, pad]])
    np.testing.assert_allclose(
        pair_weights, [[0, 0], [0, 0], [1, 0], [2 / 3, 1 / 3], [1, 0]], rtol=1e-6
    )
    np.testing.assert_array_equal(user_items, [[4, 1], [0, 2], [pad, pad]])
    np.testing.assert_allclose(user_weights, [[2 / 3, 1 / 3], [2 / 3, 1 / 3], [0, 0]])


def _block(window=2, decay=0.5) -> TransitionBlock:
    torch.manual_seed(0)
    return TransitionBlock(TrainingGraph(3, 6, USERS, ITEMS), 4, window, decay)


def test_pair_and_user_queries_are_weighted_sums_of_preceding_source_rows():
    block = _block()
    p = block.source.weight.detach()
    got = block.pair_vectors(torch.tensor([0, 0, 0, 1]), torch.tensor([3, 4, 1, 0])).detach()
    expected = torch.stack([torch.zeros(4), 2 / 3 * p[1] + 1 / 3 * p[3], p[3], p[2]])
    torch.testing.assert_close(got, expected)
    users = block.user_vectors().detach()
    torch.testing.assert_close(users[0], 2 / 3 * p[4] + 1 / 3 * p[1])
    torch.testing.assert_close(users[2], torch.zeros(4))
    # a pair outside the training graph is scored like the user's next item
    torch.testing.assert_close(
        block.pair_vectors(torch.tensor([0]), torch.tensor([5]))[0].detach(), users[0]
    )


def test_cold_items_contribute_nothing_on_either_side():
    block = _block()
    torch.testing.assert_close(block.item_vectors()[5].detach(), torch.zeros(4))
    with torch.no_grad():
        block.source.weight[5] += 100.0  # the cold item's source row, e.g. untrained
    # user 1's history gains the cold item 5 as the most recent (e.g. a valid item)
    block.use_history(np.append(USERS, 1), np.append(ITEMS, 5))
    p = block.source.weight.detach()
    # item 5 holds weight 2/3 of the context and adds nothing
    torch.testing.assert_close(block.user_vectors()[1].detach(), 1 / 3 * p[0])


def test_a_new_history_rebuilds_the_users_contexts_only():
    """``use_history`` (train + valid when scoring test): the users' contexts are those of
    the new pairs, built from scratch as the reference; the training pairs' contexts stay
    as trained, and the ``(pairs, window)`` tables are not built again (numpy's
    allocations traced: they were a 1M-item run's peak)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n_users, n_items, window = 50, 40, 20
    users = np.sort(rng.integers(0, n_users, 20_000), kind="stable")
    items = rng.integers(0, n_items, len(users))
    torch.manual_seed(0)
    block = TransitionBlock(TrainingGraph(n_users, n_items, users, items), 4, window, 0.5)
    pair_tables = ("pair_keys", "pair_end", "pair_count", "history_items")
    trained = {k: getattr(block, k).clone() for k in pair_tables}
    more_users = np.sort(np.append(users, [3, 3, 7]), kind="stable")
    more_items = np.append(items, [5, 6, 9])[np.argsort(np.append(users, [3, 3, 7]), kind="stable")]
    tracemalloc.start()
    try:
        block.use_history(more_users, more_items)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(more_users) * window * 8  # one (pairs, window) int64 table's size
    *_, user_items, user_weights = preceding_items(
        more_users, more_items, n_users, n_items, window, 0.5
    )
    np.testing.assert_array_equal(block.user_items.numpy(), user_items)
    np.testing.assert_array_equal(block.user_weights.numpy(), user_weights)
    for name, table in trained.items():
        assert torch.equal(getattr(block, name), table)


def test_every_training_pairs_context_is_read_from_its_users_sequence():
    """The block keeps no ``(pairs, window)`` table: each training pair's context, read from
    its user's item sequence when a step asks, is :func:`preceding_items`' row for it (the
    reference, built whole), duplicate pairs and users with fewer items than the window
    included; building the block allocates less than one such table (numpy's allocations
    traced: the tables were a 1M-item run's largest build)."""
    import tracemalloc

    from recsys.models.base import find_sorted

    rng = np.random.default_rng(1)
    n_users, n_items, window = 300, 50, 20
    users = rng.integers(0, n_users, 30_000)
    items = rng.integers(0, n_items, len(users))  # in time order, users interleaved
    graph = TrainingGraph(n_users, n_items, users, items)
    tracemalloc.start()
    try:
        block = TransitionBlock(graph, 4, window, 0.7)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(users) * window * 8
    want_items, want_weights, *_ = preceding_items(users, items, n_users, n_items, window, 0.7)
    first = {}  # a duplicate pair is scored with its first occurrence's context
    for index, key in enumerate(users * n_items + items):
        first.setdefault(key, index)
    at, found = find_sorted(block.pair_keys, torch.as_tensor(users * n_items + items))
    assert bool(found.all())
    got_items, got_weights = block.pair_contexts(at)
    reference = [first[key] for key in users * n_items + items]
    np.testing.assert_array_equal(got_items.numpy(), want_items[reference])
    np.testing.assert_array_equal(got_weights.numpy(), want_weights[reference])
    assert (want_weights.sum(axis=1) == 0).sum() >= n_users - 1  # first pairs: empty contexts


def test_a_pair_trains_only_on_its_preceding_items():
    block = _block(window=3)
    score = (block.pair_vectors(torch.tensor([0]), torch.tensor([4])) * 1.0).sum()
    score.backward()
    touched = block.source.weight.grad.abs().sum(dim=1).nonzero().flatten().tolist()
    assert touched == [1, 3]  # the items before (0, 4): never 4 itself, never another user's


@pytest.mark.parametrize("negatives", [1, 3])
def test_batch_rows_append_each_items_target_row_and_regularise_every_row(negatives):
    """One or several negatives a pair: positives' and negatives' target rows are read
    together; each appended row is the item's own, and every row read is regularised."""
    from recsys.models.transition import batch_with_transition

    block = _block()
    q = block.item_vectors().detach()
    users, items = torch.tensor([0, 1, 0]), torch.tensor([3, 0, 1])
    neg_items = torch.tensor([[2, 5, 4], [4, 1, 3], [0, 0, 2]])[:, :negatives]
    neg = torch.zeros(3, negatives, 2) if negatives > 1 else torch.zeros(3, 2)
    batch = {"users": users, "pos_items": items, "neg_items": neg_items}
    user, pos, got_neg, reg = batch_with_transition(
        block, batch, torch.zeros(3, 2), torch.zeros(3, 2), neg
    )
    assert user.shape == pos.shape == (3, 6)
    torch.testing.assert_close(pos[:, 2:].detach(), q[items])
    expected = q[neg_items] if negatives > 1 else q[neg_items[:, 0]]
    assert got_neg.shape == (*neg.shape[:-1], 6)
    torch.testing.assert_close(got_neg[..., 2:].detach(), expected)
    assert [r.shape[0] for r in reg] == [3, 3, 3 * negatives]
    torch.testing.assert_close(reg[2].detach(), expected.reshape(-1, 4))


def test_das_scores_add_the_transition_dot_product():
    graph, _ = synthetic_content_graph()
    config = small_das(**CONTENT_CONCAT, user_semantic="history", transition_dim=8)
    model = build_model(config, graph)
    model.on_train_epoch_start(0)
    history = _train(model, graph, steps=40)
    assert history["rec_loss"].iloc[-10:].mean() < history["rec_loss"].iloc[:10].mean()
    model.eval()
    with torch.no_grad():
        users, items = model.embeddings()
        t_u, t_i = model.transition.user_vectors(), model.transition.item_vectors()
        model.transition, block = None, model.transition
        base_users, base_items = model.embeddings()
        model.transition = block
    torch.testing.assert_close(users @ items.T, base_users @ base_items.T + t_u @ t_i.T)
    assert t_i.abs().sum() > 0 and t_i[27:30].abs().sum() == 0  # cold: no ID embedding
    with torch.no_grad():
        block.target.weight[27:30] += 100.0
        block.source.weight[27:30] += 100.0
        _, after = model.embeddings()
    torch.testing.assert_close(after[27:30], items[27:30])


def test_transition_needs_concat():
    with pytest.raises(ValueError, match="transition_dim"):
        small_das(transition_dim=4)


@pytest.mark.parametrize(
    "config",
    [
        LightGCNConfig(dim=8, transition_dim=4),
        TwoStageConfig(
            dim=8, transition_dim=4, quantizer={"kind": "rqkmeans", "levels": 2, "codebook_size": 4}
        ),
    ],
    ids=["lightgcn", "two_stage"],
)
def test_baselines_carry_the_same_block(config):
    graph, _ = synthetic_content_graph()
    model = build_model(config, graph)
    history = _train(model, graph, steps=40)
    assert history["rec_loss"].iloc[-10:].mean() < history["rec_loss"].iloc[:10].mean()
    block = model.transition
    with torch.no_grad():
        users, items = model.embeddings()
        model.transition = None
        base_users, base_items = model.embeddings()
        model.transition = block
        t_u, t_i = block.user_vectors(), block.item_vectors()
    torch.testing.assert_close(users, torch.cat([base_users, t_u], 1))
    torch.testing.assert_close(items, torch.cat([base_items, t_i], 1))
    assert t_i[27:30].abs().sum() == 0  # cold items: no ID embedding in the block
    # scoring test: a valid item becomes the user's latest context item
    u = int(graph.train_users[0])
    assert model.use_history(
        np.append(graph.train_users, u), np.append(graph.train_items, int(graph.train_items[0]))
    )
    with torch.no_grad():
        moved, _ = model.embeddings()
    assert not torch.equal(moved[u, 8:], users[u, 8:])
    torch.testing.assert_close(moved[:, :8], users[:, :8])  # only the block moves


@pytest.mark.parametrize("kind", ["das", "two_stage"])
def test_semantic_models_carry_the_block(kind):
    graph, _ = synthetic_content_graph()
    if kind == "das":
        config = small_das(**CONTENT_CONCAT, user_semantic="history", transition_dim=8)
    else:
        config = TwoStageConfig(
            dim=8,
            transition_dim=4,
            quantizer={"kind": "rqkmeans", "levels": 2, "codebook_size": 4},
        )
    model = build_model(config, graph)
    model.on_train_epoch_start(0)
    history = _train(model, graph, steps=40)
    assert history["rec_loss"].iloc[-10:].mean() < history["rec_loss"].iloc[:10].mean()
    block = model.transition
    with torch.no_grad():
        users, items = model.embeddings()
        t_u, t_i = block.user_vectors(), block.item_vectors()
    width = t_i.shape[1]
    if kind == "two_stage":
        torch.testing.assert_close(users[:, -width:], t_u)
        torch.testing.assert_close(items[:, -width:], t_i)
    else:
        model.transition = None
        with torch.no_grad():
            base_users, base_items = model.embeddings()
        model.transition = block
        torch.testing.assert_close(users @ items.T, base_users @ base_items.T + t_u @ t_i.T)
    assert t_i[27:30].abs().sum() == 0  # cold items: no ID row in the block
