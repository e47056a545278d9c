"""Sampled propagation (recsys.models.sampling) against the whole-graph propagation and a
dense reimplementation: the drawn edges, exactness when fanouts cover every degree,
unbiasedness when they do not, and LightGCN trained on samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from recsys.errors import ConfigError
from recsys.models import TrainingGraph
from recsys.models.graph import SymmetricLGConv, layer_mean_propagation, normalized_adjacency
from recsys.models.lightgcn import LightGCN, LightGCNConfig
from recsys.models.sampling import NeighborSampler, sampled_layer_mean
from recsys.train.config import load_run_config

REPO = Path(__file__).resolve().parents[1]


def power_law_graph(n_users: int = 60, n_items: int = 40, seed: int = 0) -> TrainingGraph:
    """Users with 1 to ~25 items drawn with popularity ∝ 1/rank: degrees from 1 to dozens."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1)
    users, items = [], []
    for u in range(n_users):
        k = min(n_items, 1 + int(rng.pareto(1.2) * 3))
        for i in rng.choice(n_items, size=k, replace=False, p=popularity / popularity.sum()):
            users.append(u)
            items.append(int(i))
    return TrainingGraph(n_users, n_items, np.array(users), np.array(items))


def adjacency(graph: TrainingGraph) -> torch.Tensor:
    return normalized_adjacency(graph.train_users, graph.train_items, graph.n_users, graph.n_items)


def test_drawn_edges_exist_keep_small_neighbourhoods_and_draw_fanout_from_large_ones():
    graph = power_law_graph()
    adj = adjacency(graph)
    dense = adj.to_dense()
    degree = (dense > 0).sum(1)
    fanout = 4
    assert int(degree.max()) > fanout and int((degree[degree > 0]).min()) <= fanout
    torch.manual_seed(0)
    seeds = torch.tensor([3, 0, 75, 61, 17])  # users and items (items from 60), any order
    sample = NeighborSampler(adj).sample(seeds, [fanout, fanout])
    assert torch.equal(sample.nodes[: len(seeds)], seeds)  # seeds first, in their order
    assert len(sample.nodes.unique()) == len(sample.nodes)
    # edges ordered by target, so that each hop's CSR adjacency is a prefix of them
    assert bool((sample.target[1:] >= sample.target[:-1]).all())
    source, target = sample.nodes[sample.source], sample.nodes[sample.target]
    assert bool((dense[target, source] > 0).all())  # every drawn edge is in the graph
    for node in target.unique().tolist():
        into = target == node
        if int(degree[node]) <= fanout:  # every neighbour, with its own weight
            assert sorted(source[into].tolist()) == torch.nonzero(dense[node]).flatten().tolist()
            torch.testing.assert_close(sample.weight[into], dense[node, source[into]])
        else:  # fanout draws, each scaled by degree / fanout
            assert int(into.sum()) == fanout
            scale = float(degree[node]) / fanout
            torch.testing.assert_close(sample.weight[into], dense[node, source[into]] * scale)
    # a node is expanded once: the seeds at hop 1, the nodes first reached there at hop 2
    hop1 = set(seeds.tolist())
    reached = {int(n) for n in sample.nodes[len(seeds) :]}
    assert set(target.unique().tolist()) <= hop1 | reached


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_fanouts_covering_every_degree_give_the_whole_graphs_readout_and_gradient(layers):
    graph = power_law_graph(seed=1)
    adj = adjacency(graph)
    n = graph.n_users + graph.n_items
    convs = nn.ModuleList(SymmetricLGConv() for _ in range(layers))
    x = torch.randn(n, 6, requires_grad=True)
    seeds = torch.tensor([5, 1, 70, 99, 42, 63])
    upstream = torch.randn(len(seeds), 6)
    sample = NeighborSampler(adj).sample(seeds, [n] * layers)
    got = sampled_layer_mean(x, sample, len(seeds))
    (got * upstream).sum().backward()
    got_grad = x.grad.clone()
    x.grad = None
    want = layer_mean_propagation(x, adj, convs)[seeds]
    (want * upstream).sum().backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, x.grad)


def test_a_sampled_readout_is_an_unbiased_estimate_of_the_whole_one():
    graph = power_law_graph(seed=2)
    adj = adjacency(graph)
    n = graph.n_users + graph.n_items
    convs = nn.ModuleList([SymmetricLGConv(), SymmetricLGConv()])
    x = torch.randn(n, 3)
    seeds = torch.arange(0, n, 7)  # a subset: hop 2 expands nodes first reached at hop 1
    sampler = NeighborSampler(adj)
    torch.manual_seed(0)
    with torch.no_grad():
        draws = torch.stack(
            [sampled_layer_mean(x, sampler.sample(seeds, [2, 2]), len(seeds))
             for _ in range(2000)]
        )  # fmt: skip
        want = layer_mean_propagation(x, adj, convs)[seeds]
    # each entry's mean within a few standard errors of the whole graph's value (a missing
    # degree / fanout scale puts it dozens away), while single draws do vary
    z = (draws.mean(0) - want) / (draws.std(0) / len(draws) ** 0.5).clamp(min=1e-6)
    assert float(z.abs().max()) < 4.5 and float(z.abs().mean()) < 1.2
    assert float(draws.std(0).max()) > 0.05


def test_lightgcn_with_covering_fanouts_has_the_whole_graphs_loss_and_gradients():
    graph = power_law_graph(seed=3)
    batch = {
        "users": torch.as_tensor(graph.train_users[:30]),
        "pos_items": torch.as_tensor(graph.train_items[:30]),
        "neg_items": torch.as_tensor(np.random.default_rng(0).integers(0, 40, size=(30, 2))),
    }
    results = []
    for fanouts in (None, [100, 100]):
        torch.manual_seed(0)
        model = LightGCN(LightGCNConfig(dim=8, layers=2, fanouts=fanouts), graph)
        out = model.loss(batch)
        out["loss"].backward()
        results.append((out["loss"].detach(), model.gcn.embedding.weight.grad.clone()))
    (full_loss, full_grad), (sampled_loss, sampled_grad) = results
    torch.testing.assert_close(sampled_loss, full_loss)
    torch.testing.assert_close(sampled_grad, full_grad)


def test_lightgcn_trains_on_sampled_neighbourhoods_and_scores_on_the_whole_graph():
    graph = power_law_graph(seed=4)
    rng = np.random.default_rng(0)
    batch = {
        "users": torch.as_tensor(graph.train_users),
        "pos_items": torch.as_tensor(graph.train_items),
        "neg_items": torch.as_tensor(rng.integers(0, graph.n_items, (len(graph.train_users), 1))),
    }
    whole = LightGCN(LightGCNConfig(dim=8, layers=2), graph)  # judges on the whole graph

    def trained(fanouts: list[int] | None) -> LightGCN:
        torch.manual_seed(0)
        model = LightGCN(LightGCNConfig(dim=8, layers=2, fanouts=fanouts), graph)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(40):
            opt.zero_grad()
            model.loss(batch)["loss"].backward()
            opt.step()
        return model

    def whole_graph_loss(model: LightGCN) -> float:
        whole.load_state_dict(model.state_dict())
        with torch.no_grad():
            return float(whole.loss(batch)["rec_loss"])

    torch.manual_seed(0)
    start = whole_graph_loss(LightGCN(LightGCNConfig(dim=8, layers=2), graph))
    sampled, full = trained([3, 3]), trained(None)
    got, best = whole_graph_loss(sampled), whole_graph_loss(full)
    assert got < 0.7 * start  # it learns from three drawn neighbours a hop ...
    assert got - best < 0.5 * (start - best)  # ... most of what the whole graph teaches
    users, items = sampled.embeddings()  # scoring propagates over the whole graph
    readout = layer_mean_propagation(sampled.gcn.embedding.weight, sampled.adj, sampled.gcn.convs)
    assert torch.equal(torch.cat([users, items]), readout)


def test_sparse_updates_give_the_dense_gradients_on_the_rows_a_step_read():
    """sparse_updates: the same loss, and each table's gradient is the dense one's, held as
    sparse rows: only rows the step read (its sampled nodes, its pairs' transition rows)."""
    graph = power_law_graph(n_users=200, n_items=120, seed=5)
    batch = {
        "users": torch.as_tensor(graph.train_users[:20]),
        "pos_items": torch.as_tensor(graph.train_items[:20]),
        "neg_items": torch.as_tensor(np.random.default_rng(1).integers(0, 120, size=(20, 1))),
    }
    out = []
    for sparse in (False, True):
        torch.manual_seed(0)
        config = LightGCNConfig(
            dim=8, layers=2, fanouts=[2, 2], sparse_updates=sparse, transition_dim=4
        )
        model = LightGCN(config, graph)
        torch.manual_seed(1)  # the same draws
        loss = model.loss(batch)["loss"]
        loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        out.append((loss.detach(), grads, model.sparse_parameters()))
    (dense_loss, dense, none), (sparse_loss, sparse, tables) = out
    assert none == [] and len(tables) == 3  # node table, transition source and target
    torch.testing.assert_close(sparse_loss, dense_loss)
    assert dense.keys() == sparse.keys()
    for name, grad in sparse.items():
        assert grad.is_sparse, name
        torch.testing.assert_close(grad.to_dense(), dense[name], msg=name)
        read = grad.coalesce().indices()[0].unique()
        assert len(read) < grad.shape[0] / 2, name  # a fraction of the rows, not the table
        untouched = torch.ones(grad.shape[0], dtype=torch.bool)
        untouched[read] = False
        assert bool((dense[name][untouched] == 0).all()), name  # no row lost


def test_sparse_updates_need_fanouts_and_gloo_in_several_processes():
    with pytest.raises(ValueError, match="sparse_updates needs fanouts"):
        LightGCNConfig(layers=2, sparse_updates=True)
    sampled = REPO / "configs" / "lightgcn_sampled.yaml"
    for several in (["trainer.strategy=ddp_spawn", "trainer.devices=2"], ["trainer.devices=2"]):
        # NCCL (GPUs) cannot all-reduce sparse gradients; gloo (CPU processes) can
        for accelerator in ("auto", "gpu"):
            with pytest.raises(ConfigError, match="needs trainer.accelerator: cpu"):
                load_run_config(sampled, [f"trainer.accelerator={accelerator}", *several])
        config = load_run_config(sampled, ["trainer.accelerator=cpu", *several])
        assert config.model.sparse_updates


def test_fanouts_need_one_entry_per_layer():
    with pytest.raises(ValueError, match="fanouts has 1 entries but layers is 2"):
        LightGCNConfig(layers=2, fanouts=[5])
    with pytest.raises(ValueError, match="fanouts"):
        LightGCNConfig(layers=1, fanouts=[0])
    with pytest.raises(ConfigError, match="fanouts"):  # as a run config reports it
        load_run_config(REPO / "configs" / "lightgcn.yaml", ["model.fanouts=[5]"])
