"""bench/das_cold_scoring.py reads from one run's saved valid vectors what a DAS run
trained with other cold-scoring knobs (κ, λ) reports on valid."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import load_bench

N_ITEMS = 60
QUANT = {"levels": 2, "codebook_size": 4, "dead_code_steps": 0, "codebook_update": "grad"}


def _grid():
    return load_bench("das_cold_scoring").cold_scoring_grid


CONCAT = {
    "semantic_input": "content", "semantic_combination": "concat", "user_semantic": "history",
    "freeze_sids_epoch": 0, "item_quantizer": QUANT, "user_quantizer": QUANT,
}  # fmt: skip


def _run(root: Path, kappa: float, lam: float, **model):
    from conftest import synthetic_interactions, train_table_run

    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(N_ITEMS)],
            "genres": [["Action", "Comedy", "Drama", "Horror"][i % 4] for i in range(N_ITEMS)],
            "length": [90.0 + (i * 7) % 40 for i in range(N_ITEMS)],
        }
    )
    root.mkdir()
    return train_table_run(
        root,
        synthetic_interactions(n_users=60, n_items=N_ITEMS),
        items,
        model={
            "kind": "das", "dim": 12, "pop_dim": 0, "popularity_weight": lam,
            **({"cold_semantic_weight": kappa, **CONCAT} if kappa else {}), **model,
        },
        features={"tabular": {"categorical": ["genres"], "numeric": ["length"]}},
        split="cold-10",
        trainer={"max_epochs": 1, "num_threads": 1},  # one epoch: the knobs pick nothing
    )  # fmt: skip


def _assert_grid_reproduces(plain, tuned, plain_knobs, tuned_knobs, source="semantic"):
    """The grid read from each run with the other's knobs (κ, λ) equals the other run's
    own valid metrics, and the knobs do change valid."""
    grid = _grid()
    for run, target, (kappa, lam) in ((plain, tuned, tuned_knobs), (tuned, plain, plain_knobs)):
        (row,) = grid(run, [kappa], [lam], source=source)
        expected = target.metrics()["valid"]
        assert row["valid_ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-4)
        assert row["valid_recall@20"] == pytest.approx(expected["recall@20"], abs=1e-4)
    plain_valid = plain.metrics()["valid"]["ndcg@10"]
    assert tuned.metrics()["valid"]["ndcg@10"] != pytest.approx(plain_valid, abs=1e-6)


def test_grid_reproduces_a_run_trained_with_those_knobs(tmp_path):
    plain = _run(tmp_path / "plain", 1.0, 0.0)
    tuned = _run(tmp_path / "tuned", 3.0, 0.5)
    _assert_grid_reproduces(plain, tuned, (1.0, 0.0), (3.0, 0.5))


def test_grid_reproduces_an_add_mode_run_with_the_content_popularity(tmp_path):
    """Add mode (no κ), λ × the content model's trees: the grid from a run without the
    term equals the run trained with it, and the reverse."""
    quant = {"levels": 2, "codebook_size": 4, "dead_code_steps": 0}
    model = {"pop_dim": 4, "item_id_weight": 0.0, "item_quantizer": quant, "user_quantizer": quant}
    plain = _run(tmp_path / "plain", 0.0, 0.0, **model)
    tuned = _run(tmp_path / "tuned", 0.0, 2.0, popularity_source="content", **model)
    _assert_grid_reproduces(plain, tuned, (1.0, 0.0), (1.0, 2.0), source="content")


def test_content_popularity_takes_the_dataset_preset_when_the_run_config_has_none(
    tmp_path, monkeypatch
):
    """A run whose config has no ``features`` section gets its dataset's preset features
    (as training did): with the preset equal to the run's features the grid still
    reproduces the run; another preset changes the popularity column."""
    import numpy as np
    import yaml

    from recsys.features import presets
    from recsys.features.pipeline import FeaturesConfig

    quant = {"levels": 2, "codebook_size": 4, "dead_code_steps": 0}
    model = {"pop_dim": 4, "item_id_weight": 0.0, "item_quantizer": quant, "user_quantizer": quant}
    run = _run(tmp_path / "tuned", 0.0, 2.0, popularity_source="content", **model)
    config = run.config()
    run_features = FeaturesConfig.model_validate(config.pop("features"))
    run.config_path.write_text(yaml.safe_dump(config))

    monkeypatch.setitem(presets.PRESETS, "table", run_features)
    (row,) = _grid()(run, [1.0], [2.0], source="content")
    assert row["valid_ndcg@10"] == pytest.approx(run.metrics()["valid"]["ndcg@10"], abs=1e-4)

    bench = load_bench("das_cold_scoring")
    counts, content_popularity = bench.train_item_counts(run, N_ITEMS), bench.content_popularity
    as_trained = content_popularity(run, counts)
    genres_only = FeaturesConfig.model_validate({"tabular": {"categorical": ["genres"]}})
    monkeypatch.setitem(presets.PRESETS, "table", genres_only)
    assert not np.allclose(content_popularity(run, counts), as_trained)
