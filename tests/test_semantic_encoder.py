"""A trained two-stage run embeds new items at serving time as training embedded its cold
items: same semantic-ID codes, same vectors (LightGCN's layer mean of a node without
edges), and the added item gets a unique semantic ID."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
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
            # a next-item block: a cold or new item's columns are zeros (no ID row)
            "transition_dim": 3,
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
    assert np.abs(vectors[rows, -3:]).sum() == 0  # the block: no ID row for cold items


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


FROZEN = {"freeze_sids_epoch": 0, "code_embeddings": True}


GRAD_QUANT = {"levels": 2, "codebook_size": 4, "dead_code_steps": 0, "codebook_update": "grad"}
CONTENT_CONCAT = {
    "semantic_input": "content", "semantic_combination": "concat", "freeze_sids_epoch": 0,
    "item_quantizer": GRAD_QUANT, "user_quantizer": GRAD_QUANT,
}  # fmt: skip


CONTENT_POPULARITY = {"popularity_weight": 0.7, "popularity_source": "content"}


@pytest.fixture(
    scope="module",
    params=[
        {},
        FROZEN,
        CONTENT_CONCAT,
        {
            **CONTENT_CONCAT,
            "content_dim": 3,
            "cold_semantic_weight": 3.0,
            "popularity_weight": 0.5,
            "transition_dim": 3,
        },
        CONTENT_POPULARITY,
    ],
    ids=[
        "joint",
        "frozen",
        "content-concat",
        "content-pca",
        "joint-content-popularity",
    ],  # fmt: skip
)
def das_run(tmp_path_factory, request) -> RunFolder:
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
                "item_quantizer": quant, "user_quantizer": quant, **request.param,
        },
        features={"tabular": {"categorical": ["genres"], "numeric": ["length"]}},
        split="cold-10",
        trainer={"max_epochs": 3, "num_threads": 1},
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
    spec = json.loads((das_run.root / "item_encoder" / "encoder.json").read_text())
    if spec["transition_dim"]:  # the block's columns: before a popularity column if any
        arrays = np.load(das_run.root / "item_encoder" / "arrays.npz")
        end = vectors.shape[1] - int("popularity_weights" in arrays.files)
        block = vectors[cold, end - 3 : end]
        assert np.abs(block).sum() == 0  # ID-based: zeros for items without interactions
    popularity = int(spec["popularity_weight"] > 0)
    if spec["semantic_combination"] == "add":  # no conformity factor without interactions
        assert np.abs(vectors[cold, 12 - 4 : 12]).sum() == 0
        assert vectors.shape[1] == 12 + popularity
    else:
        # the codewords learned after the freeze; IDs are still assigned as at the freeze
        state = torch.load(das_run.root / "item_encoder" / "item_tower.pt", weights_only=True)
        assert bool(state["frozen"])
        assert not torch.equal(state["quantizer.codebooks"], state["frozen_books"])


@pytest.mark.parametrize(
    "das_run",
    [CONTENT_POPULARITY, {**CONTENT_CONCAT, **CONTENT_POPULARITY}],
    ids=["add", "concat"],
    indirect=True,
)
def test_das_content_popularity_column_is_the_content_models_trees(das_run):
    """popularity_source content: every item's last column is what the content model's
    trees predict from the item's raw features (refit here from the run's items and
    training counts), every user's is λ; the same column for a new item at serving."""
    spec = json.loads((das_run.root / "item_encoder" / "encoder.json").read_text())
    from recsys.data.splits import TRAIN
    from recsys.features.pipeline import FeaturesConfig, build_item_features
    from recsys.models.content import popularity_gbdt, raw_feature_matrix

    config = FeaturesConfig.model_validate(das_run.config()["features"])
    raw = raw_feature_matrix(build_item_features(das_run.items(), config))
    frame = das_run.interactions()
    counts = np.bincount(frame.loc[frame["label"] == TRAIN, "item_idx"], minlength=len(raw))
    expected = popularity_gbdt(raw, counts).predict(raw)
    assert np.ptp(expected) > 0  # the trees learned something to compare against
    users, items = das_run.embeddings()
    np.testing.assert_allclose(items[:, -1], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(users[:, -1], spec["popularity_weight"])
    served, _ = load_item_encoder(das_run).encode(das_run.items().iloc[:5])
    np.testing.assert_allclose(served[:, -1], expected[:5], rtol=1e-5, atol=1e-5)
    query = json.loads((das_run.root / "history_query" / "query.json").read_text())
    width = items.shape[1]  # an anonymous user's query: λ on the last column too
    last = {"columns": [width - 1, width], "constant": spec["popularity_weight"]}
    assert query["segments"][-1] == last


@pytest.fixture
def restore_threads():
    """Put torch's thread count back after a test that trains with another."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
def test_das_resume_across_the_freeze_equals_uninterrupted(
    tmp_path, monkeypatch, restore_threads, threads
):
    """A crash after the IDs were frozen: the resumed run restores them from the
    checkpoint (not by refreezing a tower that moved on) and ends where an uninterrupted
    run ends, with one thread or two (the global random draws after the resume, e.g. the
    co-occurrence term's neighbours, continue from the checkpoint's generator state)."""
    from conftest import synthetic_interactions, train_table_run

    from recsys.train.module import RecommenderModule

    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(N_ITEMS)],
            "genres": [GENRES[i % 4] for i in range(N_ITEMS)],
        }
    )
    quant = {"levels": 2, "codebook_size": 4, "dead_code_steps": 0}
    kwargs = dict(
        interactions=synthetic_interactions(n_users=60, n_items=N_ITEMS),
        items=items,
        model={
            "kind": "das", "dim": 12, "pop_dim": 4, "input_dim": 6, **FROZEN,
            "freeze_sids_epoch": 1, "item_fusion": {"hidden_dim": 8},
            "user_fusion": {"hidden_dim": 8}, "item_quantizer": quant, "user_quantizer": quant,
        },
        features={"tabular": {"categorical": ["genres"]}},
        trainer={"max_epochs": 4, "patience": 10, "num_threads": threads, "lr": 0.01},
    )  # fmt: skip
    (tmp_path / "ref").mkdir(), (tmp_path / "crashy").mkdir()
    reference = train_table_run(tmp_path / "ref", **kwargs)
    original = RecommenderModule.on_train_epoch_end

    def crash(self):
        if self.current_epoch == 2:
            raise KeyboardInterrupt("simulated crash")
        return original(self)

    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", crash)
    with pytest.raises(BaseException):  # noqa: B017 - Lightning may wrap the interrupt
        train_table_run(tmp_path / "crashy", **kwargs)
    monkeypatch.setattr(RecommenderModule, "on_train_epoch_end", original)
    resumed = train_table_run(tmp_path / "crashy", **kwargs)
    assert resumed.metrics()["training"]["resumed"] is True
    for key, value in reference.metrics()["test"].items():
        assert resumed.metrics()["test"][key] == pytest.approx(value, abs=1e-6), key
    ref_sids = pd.read_parquet(reference.root / "semantic_ids" / "items.parquet")
    pd.testing.assert_frame_equal(
        pd.read_parquet(resumed.root / "semantic_ids" / "items.parquet"), ref_sids
    )


def test_two_stage_downstream_on_another_runs_semantic_ids(das_run, tmp_path):
    """semantic_ids_from: the two-stage model trains on a DAS run's item IDs (matched by
    item id) instead of fitting its own quantizer; a mismatched config is refused."""
    from conftest import synthetic_interactions, train_table_run

    from recsys.errors import ConfigError

    model = {
        "kind": "two_stage", "dim": 8, "semantic_ids_from": str(das_run.root),
        "quantizer": {"kind": "rqkmeans", "levels": 2, "codebook_size": 4},
    }  # fmt: skip
    kwargs = dict(
        interactions=synthetic_interactions(n_users=60, n_items=N_ITEMS),
        items=das_run.items(),
        features={"tabular": {"categorical": ["genres"], "numeric": ["length"]}},
        split="cold-10",
        trainer={"max_epochs": 1, "num_threads": 1},
    )
    run = train_table_run(tmp_path, model=model, **kwargs)
    source = das_run.semantic_ids("items").set_index("item_id")
    borrowed = run.semantic_ids("items").set_index("item_id").loc[source.index]
    pd.testing.assert_frame_equal(borrowed[["c0", "c1"]], source[["c0", "c1"]])
    assert not (run.root / "item_encoder").exists()
    bad = {**model, "quantizer": {"kind": "rqkmeans", "levels": 3, "codebook_size": 4}}
    (tmp_path / "bad").mkdir()
    with pytest.raises(ConfigError, match="levels=3"):
        train_table_run(tmp_path / "bad", model=bad, **kwargs)
    assert not (tmp_path / "bad" / "runs").exists()  # refused before writing anything
