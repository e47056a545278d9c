"""A trained two-stage run embeds new items at serving time as training embedded its cold
items: same semantic-ID codes, same vectors (LightGCN's layer mean of a node without
edges), and the added item gets a unique semantic ID."""

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
N_ITEMS = 60


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunFolder:
    from conftest import synthetic_interactions, train_table_run

    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(N_ITEMS)],
            "genres": [
                GENRES[i % 4] + ("|" + GENRES[(i + 1) % 4] if i % 3 else "") for i in range(N_ITEMS)
            ],
            "length": [90.0 + (i * 7) % 40 for i in range(N_ITEMS)],
        }
    )  # fmt: skip
    return train_table_run(
        tmp_path_factory.mktemp("two-stage"),
        synthetic_interactions(n_users=60, n_items=N_ITEMS),
        items,
        model={
            "kind": "two_stage",
            "dim": 8,
            "content_projection": True,
            "quantizer": {"kind": "rqkmeans", "levels": 2, "codebook_size": 4},
        },
        features={"tabular": {"multi_valued": ["genres"], "numeric": ["length"]}},
        split="cold-10",
        trainer={"max_epochs": 3, "num_threads": 1},
    )


def test_encoder_reproduces_codes_and_cold_item_vectors(run):
    encoder = load_item_encoder(run)
    assert encoder is not None
    vectors, sids = encoder.encode(run.items())
    table = pd.read_parquet(run.root / "semantic_ids" / "items.parquet")
    assert table["item_id"].astype(str).tolist() == run.items()["item_id"].astype(str).tolist()
    np.testing.assert_array_equal(sids[:, :2], table[["c0", "c1"]].to_numpy())
    assert (sids[:, -1] == 0).all()
    _, trained = run.embeddings()
    cold = np.load(run.root / "candidates_test.npy")
    suffix0 = table["suffix"].to_numpy() == 0
    rows = cold[suffix0[cold]]
    assert len(rows) > 0
    np.testing.assert_allclose(vectors[rows], trained[rows], atol=1e-5)


def test_added_item_gets_a_unique_semantic_id_sharing_its_twins_codes(run):
    client = TestClient(create_app(run.root, ServeConfig(index="flat")))
    table = pd.read_parquet(run.root / "semantic_ids" / "items.parquet")
    twin = run.items().iloc[int(np.load(run.root / "candidates_test.npy")[0])]
    body = {
        "item_id": "new-twin",
        "tabular": {"genres": twin["genres"], "length": float(twin["length"])},
    }
    r = client.post("/v1/items", json=body)
    assert r.status_code in (200, 201), r.text
    sid = r.json()["semantic_id"]
    twin_sid = table.loc[table["item_id"].astype(str) == str(twin["item_id"])].iloc[0]
    assert sid[:2] == [int(twin_sid["c0"]), int(twin_sid["c1"])]  # same content, same codes
    taken = {tuple(row) for row in table[["c0", "c1", "suffix"]].to_numpy().tolist()}
    assert tuple(sid) not in taken  # disambiguated against the catalogue
    similar = client.get("/v1/items/new-twin/similar", params={"k": 3})
    assert similar.status_code == 200 and len(similar.json()["items"]) == 3


@pytest.fixture(scope="module")
def das_run(tmp_path_factory) -> RunFolder:
    from conftest import synthetic_interactions, train_table_run

    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(N_ITEMS)],
            "genres": [GENRES[i % 4] for i in range(N_ITEMS)],
            "length": [90.0 + (i * 7) % 40 if i % 5 else None for i in range(N_ITEMS)],
        }
    )
    quant = {"levels": 2, "codebook_size": 4, "dead_code_steps": 0}
    return train_table_run(
        tmp_path_factory.mktemp("das"),
        synthetic_interactions(n_users=60, n_items=N_ITEMS),
        items,
        model={
                "kind": "das", "dim": 12, "pop_dim": 4, "input_dim": 6,
                "item_fusion": {"hidden_dim": 8}, "user_fusion": {"hidden_dim": 8},
                "item_quantizer": quant, "user_quantizer": quant,
        },
        features={"tabular": {"categorical": ["genres"], "numeric": ["length"]}},
        split="cold-10",
        trainer={"max_epochs": 2, "num_threads": 1},
    )  # fmt: skip


def test_das_encoder_reproduces_codes_and_cold_item_vectors(das_run):
    vectors, sids = load_item_encoder(das_run).encode(das_run.items())
    table = pd.read_parquet(das_run.root / "semantic_ids" / "items.parquet")
    np.testing.assert_array_equal(sids[:, :2], table[["c0", "c1"]].to_numpy())
    _, trained = das_run.embeddings()
    cold = np.load(das_run.root / "candidates_test.npy")
    assert len(cold) > 0
    np.testing.assert_allclose(vectors[cold], trained[cold], atol=1e-5)
    assert np.abs(vectors[cold]).sum() > 0
    assert np.abs(vectors[:, -4:]).sum() == 0  # no conformity factor without interactions


def test_propagated_das_reports_the_valid_score_it_was_selected_on(tmp_path):
    """With propagate_semantic, item vectors depend on the users' history state, which
    test scoring refreshes (train + valid). Valid must still be scored, saved and
    re-evaluated with the vectors early stopping saw."""
    from conftest import synthetic_interactions, train_table_run

    from recsys.eval.bundle import evaluate_run

    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(N_ITEMS)],
            "genres": [GENRES[i % 4] for i in range(N_ITEMS)],
        }
    )
    quant = {"levels": 2, "codebook_size": 4, "dead_code_steps": 0}
    run = train_table_run(
        tmp_path,
        synthetic_interactions(n_users=60, n_items=N_ITEMS),
        items,
        model={
            "kind": "das", "dim": 12, "pop_dim": 4, "input_dim": 6, "propagate_semantic": True,
            "item_fusion": {"hidden_dim": 8}, "user_fusion": {"hidden_dim": 8},
            "item_quantizer": quant, "user_quantizer": quant,
        },
        features={"tabular": {"categorical": ["genres"]}},
        split="cold-10",
        trainer={"max_epochs": 2, "num_threads": 1},
    )  # fmt: skip
    cold = np.load(run.root / "candidates_test.npy")
    served, _ = load_item_encoder(run).encode(run.items())
    np.testing.assert_allclose(served[cold], run.embeddings()[1][cold], atol=1e-5)
    saved = run.metrics()
    assert saved["valid"]["ndcg@10"] == pytest.approx(saved["training"]["best_valid"], abs=1e-6)
    _, items_test = run.embeddings()
    _, items_valid = run.embeddings("valid")
    assert not np.array_equal(items_test, items_valid)  # the case this guards
    for split in ("valid", "test"):
        assert evaluate_run(run, split)["ndcg@10"] == pytest.approx(
            saved[split]["ndcg@10"], abs=1e-6
        )
