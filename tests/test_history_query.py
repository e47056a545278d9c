"""An anonymous user's query (``RUN/history_query/``, POST /v1/recommendations): built
from their items as the model builds a known user from theirs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from recsys.artifacts import RunFolder
from recsys.errors import ArtifactError
from recsys.serve.app import create_app
from recsys.serve.config import ServeConfig
from recsys.serve.history import HistoryQuery, recency_weights
from recsys.serve.state import ServingState

N_ITEMS = 40
GENRES = ["Action", "Comedy", "Drama", "Horror"]
QUANT = {"levels": 2, "codebook_size": 4, "dead_code_steps": 0, "codebook_update": "grad"}


def test_recency_weights_by_hand():
    np.testing.assert_allclose(recency_weights(3, 0.5, 2), [0, 1 / 3, 2 / 3])
    np.testing.assert_allclose(recency_weights(2, 0.5, None), [1 / 3, 2 / 3])
    np.testing.assert_allclose(recency_weights(1, 0.8, 20), [1.0])


def _write(folder, segments, **arrays):
    folder.mkdir()
    (folder / "query.json").write_text(json.dumps({"segments": segments}))
    if arrays:
        np.savez(folder / "arrays.npz", **arrays)


def test_segments_by_hand(tmp_path):
    source = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])  # 3 catalogue items
    segments = [
        {"columns": [0, 2], "pool": "items", "decay": 0.5, "window": None, "scale": 3.0},
        {"columns": [2, 4], "pool": "table", "table": "source", "decay": 0.5, "window": 2},
        {"columns": [5, 6], "constant": 0.7},
    ]
    _write(tmp_path / "q", segments, source=source)
    query = HistoryQuery(tmp_path / "q", dim=6)
    vectors = np.arange(18, dtype=np.float64).reshape(3, 6)  # the history's item vectors
    # history oldest first: catalogue item 0, catalogue item 2, added item 3
    items = np.array([0, 2, 3])
    got = query.query(vectors, items)
    w_all, w_two = np.array([1, 2, 4]) / 7, np.array([0, 1 / 3, 2 / 3])
    expected = vectors.mean(axis=0)  # column 4: no segment names it
    expected[0:2] = 3.0 * (w_all @ vectors[:, 0:2])
    expected[2:4] = w_two[1] * source[2]  # the added item has no row: zeros
    expected[5] = 0.7
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_overlapping_segments_add_and_count_power_scales(tmp_path):
    table = np.array([[1.0, 2.0], [3.0, 5.0], [7.0, 11.0]])
    segments = [
        {"columns": [0, 2], "pool": "table", "table": "t", "decay": 1.0, "window": None,
         "count_power": 0.5},
        {"columns": [0, 2], "pool": "items", "decay": 0.5, "window": None, "scale": 2.0},
        {"columns": [1, 2], "constant": 0.25},
    ]  # fmt: skip
    _write(tmp_path / "q", segments, t=table)
    vectors = np.array([[1.0, 0.0, 4.0], [0.0, 1.0, 8.0]])
    got = HistoryQuery(tmp_path / "q", dim=3).query(vectors, np.array([0, 2]))
    folded = (table[0] + table[2]) / np.sqrt(2)  # mean × 2^0.5 = Σ / √2
    recent = 2.0 * (vectors[0, :2] / 3 + 2 * vectors[1, :2] / 3)
    expected = np.array([folded[0] + recent[0], folded[1] + recent[1] + 0.25, 6.0])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def _described(tmp_path, model, dim: int) -> HistoryQuery:
    """The model's ``history_query()`` written as the runner writes it, read back."""
    segments, arrays = model.history_query()
    _write(tmp_path / "hq", segments, **arrays)
    return HistoryQuery(tmp_path / "hq", dim=dim)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_lightgcn_fold_in_is_the_readout_without_the_users_own_embedding(tmp_path, layers):
    """Dense reference: a training user queried with exactly their training items gets
    mean_l (Â^l E)_u minus their own layer-0 row / (L+1) (the fold-in's definition)."""
    from test_models import dense_norm_adj

    from recsys.models import TrainingGraph
    from recsys.models.lightgcn import LightGCN, LightGCNConfig

    torch.manual_seed(0)
    users = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    items = np.array([0, 1, 2, 1, 3, 0, 2, 4, 4, 3])  # item 5 has no edge
    graph = TrainingGraph(4, 6, users, items)
    model = LightGCN(LightGCNConfig(dim=4, layers=layers), graph)
    e = model.gcn.embedding.weight.detach().double().numpy()
    a = dense_norm_adj(users, items, 4, 6)
    layer, total = e, e.copy()
    for _ in range(layers):
        layer = a @ layer
        total = total + layer
    readout = total / (layers + 1)
    query = _described(tmp_path, model, dim=4)
    vectors = np.zeros((3, 4))  # the item vectors play no part: every column is folded in
    for u in range(4):
        history = items[users == u]
        expected = readout[u] - e[u] / (layers + 1)
        got = query.query(vectors[: len(history)], history)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # an item without training interactions adds nothing; order does not matter
    np.testing.assert_allclose(
        query.query(vectors, np.array([5, 4, 3])) * np.sqrt(3),
        query.query(vectors[:2], np.array([3, 4])) * np.sqrt(2),
        rtol=1e-5,
    )


@pytest.mark.parametrize("kind", ["two_stage", "das"])
def test_semantic_models_fold_in_their_collaborative_users(tmp_path, kind):
    """Two-stage and DAS (concat, β pool + block): a training user's query from their
    training items equals their scoring vector on the collaborative columns minus their
    own ID row / (L+1), and on the block's columns exactly."""
    from test_semantic_models import synthetic_content_graph

    from recsys.models import build_model
    from recsys.models.das import DASConfig
    from recsys.models.two_stage import TwoStageConfig

    torch.manual_seed(0)
    graph, _ = synthetic_content_graph()
    block = {"transition_dim": 3}
    if kind == "two_stage":
        quantizer = {"kind": "rqkmeans", "levels": 2, "codebook_size": 4}
        config = TwoStageConfig(dim=8, layers=2, quantizer=quantizer, **block)
    else:
        raw = {**CONCAT, "popularity_weight": 0.0, "dim": 8, "pop_dim": 0, "layers": 2}
        config = DASConfig.model_validate(raw)
    model = build_model(config, graph)
    model.eval()
    with torch.no_grad():
        users, items = (x.double().numpy() for x in model.embeddings())
        own = model.user.weight.double().numpy() / 3  # (L+1) = 3
    query = _described(tmp_path, model, dim=users.shape[1])
    semantic = slice(8, users.shape[1] - 3)  # DAS: γ × pooled semantic vectors
    for u in range(5):
        history = graph.train_items[graph.train_users == u]
        got = query.query(items[history], history)
        np.testing.assert_allclose(got[:8], users[u, :8] - own[u], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[semantic], users[u, semantic], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[-3:], users[u, -3:], rtol=1e-4, atol=1e-5)


def test_bad_folder_is_named(tmp_path):
    _write(tmp_path / "q", [{"columns": [0, 9], "constant": 1.0}])
    with pytest.raises(ArtifactError, match=r"segments\[0\].*columns"):
        HistoryQuery(tmp_path / "q", dim=4)
    _write(tmp_path / "r", [{"columns": [0, 2], "pool": "table", "table": "nope", "decay": 1}])
    with pytest.raises(ArtifactError, match="table"):
        HistoryQuery(tmp_path / "r", dim=4)
    _write(tmp_path / "s", [{"columns": [0, 2], "pool": "items", "decay": 0}])
    with pytest.raises(ArtifactError, match="decay"):
        HistoryQuery(tmp_path / "s", dim=4)
    _write(tmp_path / "t", [{"columns": [0, 2], "pool": "items", "decay": 1, "count_power": 2}])
    with pytest.raises(ArtifactError, match=r"segments\[0\].*count_power"):
        HistoryQuery(tmp_path / "t", dim=4)


CONCAT = {
    "kind": "das", "dim": 12, "pop_dim": 4, "semantic_input": "content",
    "semantic_combination": "concat", "freeze_sids_epoch": 0, "code_embeddings": True,
    "user_semantic": "history", "history_decay": 0.8, "user_history_weight": 2.0,
    "item_quantizer": QUANT, "user_quantizer": QUANT, "popularity_weight": 0.5,
    "transition_dim": 3,
}  # fmt: skip
MODELS = {
    "content": ({"kind": "content", "recency_decay": 0.7, "popularity_weight": 0.3}, 0),
    "lightgcn-block": ({"kind": "lightgcn", "dim": 8, "transition_dim": 3}, 8),
    "two-stage-block": (
        {
            "kind": "two_stage",
            "dim": 8,
            "transition_dim": 3,
            "quantizer": {"kind": "rqkmeans", "levels": 2, "codebook_size": 4},
        },
        8,
    ),  # fmt: skip
    "das-concat": (CONCAT, 12),  # c_u's own ID part: unknown for an anonymous user
}


@pytest.fixture(scope="module", params=list(MODELS))
def trained(tmp_path_factory, request) -> tuple[RunFolder, int]:
    from conftest import synthetic_interactions, train_table_run

    model, free_columns = MODELS[request.param]
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(N_ITEMS)],
            "genres": [GENRES[i % 4] + ("|" + GENRES[i % 3]) for i in range(N_ITEMS)],
            "length": [90.0 + (i * 7) % 40 for i in range(N_ITEMS)],
        }
    )
    run = train_table_run(
        tmp_path_factory.mktemp(request.param),
        synthetic_interactions(n_users=40, n_items=N_ITEMS),
        items,
        model=model,
        features={"tabular": {"multi_valued": ["genres"], "numeric": ["length"]}},
        trainer={"max_epochs": 2, "num_threads": 1},
    )
    return run, free_columns


def _known_histories(run: RunFolder) -> dict[int, np.ndarray]:
    """Each user's train + valid items, oldest first (the history test scoring used)."""
    table = run.interactions()  # chronological order
    known = table[table["label"] < 2]
    return {int(u): g["item_idx"].to_numpy() for u, g in known.groupby("user_idx", sort=False)}


def test_anonymous_query_equals_the_known_users_vector(trained):
    run, free = trained
    state = ServingState.load(run.root, ServeConfig(index="flat"), encoder=None)
    assert state.history_query is not None
    users, items = run.embeddings()
    for u, history in list(_known_histories(run).items())[:10]:
        query = state.history_query.query(items[history], history)
        # every column the model's own user vector has, but its own ID embedding's
        np.testing.assert_allclose(query[free:], users[u, free:], rtol=1e-4, atol=1e-5)
    # the HTTP route uses it: the order of the history matters now
    client = TestClient(create_app(run.root, ServeConfig(index="flat"), encoder=None))
    history = [str(x) for x in run.item_map().ids[_known_histories(run)[0]]]
    forward = client.post("/v1/recommendations", json={"history": history, "k": 5})
    backward = client.post("/v1/recommendations", json={"history": history[::-1], "k": 5})
    assert forward.status_code == backward.status_code == 200
    expected = query_topk(state, items, _known_histories(run)[0], 5)
    assert [x["item_id"] for x in forward.json()["items"]] == expected
    assert forward.json()["items"] != backward.json()["items"]


def query_topk(state: ServingState, items: np.ndarray, history: np.ndarray, k: int) -> list[str]:
    """Brute force: the anonymous query against every item, the history excluded."""
    scores = items @ state.history_query.query(items[history], history)
    scores[history] = -np.inf
    return [str(x) for x in state.snapshot.items.to_ids(np.argsort(-scores, kind="stable")[:k])]
