"""Serving never imports training code: a fresh interpreter that serves a run of every
model with an item encoder (loads it, adds a new item through the API) has not imported
torch-geometric, Lightning, ``recsys.train`` or the DAS training model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
N_ITEMS = 24
QUANT = {"levels": 2, "codebook_size": 4, "dead_code_steps": 0}
DAS = {
    "kind": "das", "dim": 8, "pop_dim": 2, "input_dim": 4,
    "item_fusion": {"hidden_dim": 8}, "user_fusion": {"hidden_dim": 8},
    "item_quantizer": QUANT, "user_quantizer": QUANT,
}  # fmt: skip
MODELS = {
    "content": {"kind": "content", "popularity_weight": 0.5, "popularity_model": "gbdt"},
    "two_stage": {
        "kind": "two_stage", "dim": 8, "content_projection": True,
        "quantizer": {"kind": "rqkmeans", "levels": 2, "codebook_size": 4},
        "transition_dim": 2,
    },
    "das": {**DAS, "popularity_weight": 0.5},  # blocks through the fusion MLP, a ridge prior
    "das-content": {
        **DAS, "semantic_input": "content", "semantic_combination": "concat",
        "freeze_sids_epoch": 0, "transition_dim": 2,
        "popularity_weight": 0.5, "popularity_source": "content",
    },
}  # fmt: skip
# module name prefixes, and modules, that serving must not import
FORBIDDEN = ("torch_geometric", "lightning", "pytorch_lightning", "recsys.train")
FORBIDDEN_MODULES = ("recsys.models.das.model", "recsys.models.graph", "recsys.models.semantic")

SERVE = """
import json, sys
from fastapi.testclient import TestClient
from recsys.serve.app import create_app
from recsys.serve.config import ServeConfig

kinds = {}
for root in json.loads(sys.argv[1]):
    client = TestClient(create_app(root, ServeConfig(index="flat")))
    item = {"item_id": "new", "tabular": {"genres": "Drama", "length": 95.0}}
    added = client.post("/v1/items", json=item)
    assert added.status_code in (200, 201), added.text
    similar = client.get("/v1/items/new/similar", params={"k": 2})
    assert similar.status_code == 200, similar.text
    spec = json.load(open(root + "/item_encoder/encoder.json"))
    kinds[spec["kind"]] = spec.get("module")
print(json.dumps({"kinds": kinds, "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    from conftest import synthetic_interactions, train_table_run

    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(N_ITEMS)],
            "genres": [["Action", "Comedy", "Drama"][i % 3] for i in range(N_ITEMS)],
            "length": [90.0 + (i * 7) % 40 for i in range(N_ITEMS)],
        }
    )
    interactions = synthetic_interactions(n_users=24, n_items=N_ITEMS, per_user=6)
    features = {"tabular": {"categorical": ["genres"], "numeric": ["length"]}}
    return [
        train_table_run(
            tmp_path_factory.mktemp(name),
            interactions,
            items,
            model=model,
            features=features,
            trainer={"max_epochs": 1, "num_threads": 1},
        ).root
        for name, model in MODELS.items()
    ]


def test_serving_every_item_encoder_imports_no_training_code(runs):
    done = subprocess.run(
        [sys.executable, "-c", SERVE, json.dumps([str(r) for r in runs])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["kinds"] == {
        "content": "recsys.models.content_encoder",
        "two_stage": "recsys.models.two_stage_encoder",
        "das": "recsys.models.das_encoder",
    }
    loaded = set(out["modules"])
    assert set(out["kinds"].values()) <= loaded  # the encoders did load
    bad = sorted(
        m
        for m in loaded
        if m in FORBIDDEN_MODULES or m.startswith(FORBIDDEN)
    )
    assert not bad, f"serving imported training code: {bad}"
