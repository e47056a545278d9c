"""A trained content model embeds new items at serving time exactly as in training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from recsys.artifacts import RunFolder
from recsys.serve.app import create_app
from recsys.serve.config import ServeConfig
from recsys.serve.content import load_item_encoder

GENRES = ["Action", "Comedy", "Drama", "Horror"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunFolder:
    from conftest import synthetic_interactions, train_table_run

    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(24)],
            "genres": [
                GENRES[i % 4] + ("|" + GENRES[(i + 1) % 4] if i % 3 == 0 else "") for i in range(24)
            ],
            "length": [90.0 + i if i != 5 else None for i in range(24)],
        }
    )
    return train_table_run(
        tmp_path_factory.mktemp("content"),
        synthetic_interactions(n_users=40, n_items=24),
        items,
        model={"kind": "content", "popularity_weight": 0.2},
        features={"tabular": {"multi_valued": ["genres"], "numeric": ["length"]}},
    )


def test_encoder_reproduces_training_embeddings(run):
    encoder = load_item_encoder(run)
    assert encoder is not None
    items = run.items()
    vectors, sids = encoder.encode(items)
    assert sids is None
    _, trained = run.embeddings()
    np.testing.assert_allclose(vectors, trained, atol=1e-5)


def test_added_item_is_served_next_to_its_content_twin(run):
    client = TestClient(create_app(run.root, ServeConfig(index="flat")))
    # content identical to i6 (genres "Drama", length 96) but a new id
    body = {"item_id": "new-drama", "tabular": {"genres": "Drama", "length": 96.0}}
    r = client.post("/v1/items", json=body)
    assert r.status_code in (200, 201), r.text
    similar = client.get("/v1/items/new-drama/similar", params={"k": 3}).json()
    ids = [row["item_id"] for row in similar["items"]]
    assert "i6" in ids
    r = client.post("/v1/items", json={"item_id": "bad", "tabular": {"length": "long"}})
    assert r.status_code == 422


def test_test_time_users_fold_in_the_valid_history(run):
    """Valid is scored with train-only history, test with train + valid (the protocol's
    known history then); both are saved and re-evaluate to metrics.json."""
    from recsys.eval.bundle import evaluate_run

    frame = run.interactions()
    users_test, items = run.embeddings()
    users_valid, _ = run.embeddings("valid")
    content = items[:, :-1]  # the last column is the popularity term (λ = 0.2)

    def expected(user: int, labels: tuple[int, ...]) -> np.ndarray:
        rows = frame[(frame.user_idx == user) & frame.label.isin(labels)]
        weights = 0.9 ** np.arange(len(rows))[::-1]  # most recent weighs 1
        v = (weights[:, None] * content[rows.item_idx.to_numpy()]).sum(0)
        return v / np.linalg.norm(v)

    for user in (0, 7, 21):
        np.testing.assert_allclose(users_valid[user, :-1], expected(user, (0,)), atol=1e-5)
        np.testing.assert_allclose(users_test[user, :-1], expected(user, (0, 1)), atol=1e-5)
    saved = run.metrics()
    for split in ("valid", "test"):
        again = evaluate_run(run, split)
        assert again["ndcg@10"] == pytest.approx(saved[split]["ndcg@10"], abs=1e-9)


def test_gbdt_popularity_is_reproduced_by_the_served_encoder(tmp_path):
    """The tree popularity model is saved with the run; the served encoder gives the same
    item vectors, and the predicted popularity follows the training counts."""
    rng = np.random.default_rng(0)
    n_items = 120
    weights = 1.0 / (np.arange(n_items) + 5.0)  # skewed popularity
    rows = [
        (f"u{u}", f"i{i}", 1000 * u + t)
        for u in range(150)
        for t, i in enumerate(rng.choice(n_items, 10, replace=False, p=weights / weights.sum()))
    ]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    counts = inter["item_id"].value_counts()
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)]})
    # a noisy numeric column that reveals popularity, so the trees have something to learn
    items["votes"] = [
        float(counts.get(i, 0)) ** 2 * rng.uniform(0.8, 1.2) for i in items["item_id"]
    ]
    items["genres"] = [GENRES[i % 4] for i in range(n_items)]
    from conftest import train_table_run

    tabular = {"multi_valued": ["genres"], "numeric": ["votes"], "log_numeric": ["votes"]}
    run = train_table_run(
        tmp_path,
        inter,
        items,
        model={"kind": "content", "popularity_weight": 1.0, "popularity_model": "gbdt"},
        features={"tabular": tabular},
        split="ratio-811",
    )
    assert (run.root / "item_encoder" / "popularity.joblib").exists()
    vectors, _ = load_item_encoder(run).encode(run.items())
    _, trained = run.embeddings()
    np.testing.assert_allclose(vectors, trained, atol=1e-5)
    from scipy.stats import spearmanr

    ids = run.items()["item_id"].astype(str)
    predicted = trained[:, -1]  # λ · predicted popularity is the last column
    assert spearmanr(predicted, [counts.get(i, 0) for i in ids])[0] > 0.8
