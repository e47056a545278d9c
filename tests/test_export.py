"""Batch export against brute-force top-k, protocol masking and atomic writes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.artifacts import RunFolder
from recsys.export import topk as export_mod
from recsys.export.topk import export_recommendations


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunFolder:
    from conftest import synthetic_interactions, train_table_run

    return train_table_run(
        tmp_path_factory.mktemp("export"),
        synthetic_interactions(n_users=50, n_items=30),
        None,
        model={"kind": "mf", "dim": 8},
        trainer={"max_epochs": 2, "progress_bar": False, "sampling": {"batch_size": 64}},
    )


def brute_force(run: RunFolder, users: np.ndarray, seen_labels: tuple[int, ...], k: int):
    """Dense scores, seen items set to -inf, stable sort (ties → lower item index)."""
    u, i = (torch.from_numpy(a).double() for a in run.embeddings())
    scores = (u[users] @ i.T).numpy()
    frame = run.interactions()
    for row, user in enumerate(users):
        seen = frame[(frame.user_idx == user) & frame.label.isin(seen_labels)].item_idx
        scores[row, seen.to_numpy()] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def test_export_equals_brute_force_and_masks_seen(run, tmp_path):
    out = tmp_path / "recs.parquet"
    n = export_recommendations(run.root, out, split="test", k=5, chunk_users=7, progress=False)
    recs = pd.read_parquet(out)
    assert list(recs.columns) == ["user_id", "item_id", "rank", "score"]
    assert n == len(recs) == 50 * 5
    assert recs["user_id"].map(type).eq(str).all() and recs["item_id"].str.startswith("i").all()
    user_map, item_map = run.user_map(), run.item_map()
    users = np.arange(len(user_map))
    expected_items, expected_scores = brute_force(run, users, (0, 1), k=5)
    got = recs.sort_values(["user_id", "rank"])
    for u in users:
        rows = got[got.user_id == user_map.ids[u]]
        assert rows["rank"].tolist() == [1, 2, 3, 4, 5]
        assert item_map.to_index(rows.item_id).tolist() == expected_items[u].tolist()
        np.testing.assert_allclose(rows.score.to_numpy(), expected_scores[u], rtol=1e-5)


def test_valid_split_masks_train_only_and_all_masks_everything(run, tmp_path):
    frame = run.interactions()
    out = tmp_path / "valid.csv"
    export_recommendations(run.root, out, split="valid", k=30, progress=False)
    recs = pd.read_csv(out, dtype={"user_id": str, "item_id": str})
    user_map, item_map = run.user_map(), run.item_map()
    recs["u"], recs["i"] = user_map.to_index(recs.user_id), item_map.to_index(recs.item_id)
    pairs = set(zip(recs.u, recs.i, strict=True))
    train = set(
        zip(frame[frame.label == 0].user_idx, frame[frame.label == 0].item_idx, strict=True)
    )
    valid = set(
        zip(frame[frame.label == 1].user_idx, frame[frame.label == 1].item_idx, strict=True)
    )
    assert not pairs & train
    assert valid <= pairs  # k = whole catalogue: every unseen item is listed, valid ones too
    per_user = recs.groupby("u").size()
    seen_counts = frame[frame.label == 0].groupby("user_idx").size()
    assert (per_user == 30 - seen_counts.reindex(per_user.index)).all()

    export_recommendations(run.root, tmp_path / "all.parquet", split="all", k=30, progress=False)
    everything = pd.read_parquet(tmp_path / "all.parquet")
    ids = set(zip(everything.user_id, everything.item_id, strict=True))
    seen_ids = set(
        zip(user_map.to_ids(frame.user_idx), item_map.to_ids(frame.item_idx), strict=True)
    )
    assert not ids & seen_ids


def test_export_is_atomic(run, tmp_path, monkeypatch):
    out = tmp_path / "recs.parquet"
    real = export_mod.iter_recommendation_tables

    def failing(*args, **kwargs):
        for n, table in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise RuntimeError("disk full")
            yield table

    monkeypatch.setattr(export_mod, "iter_recommendation_tables", failing)
    with pytest.raises(RuntimeError):
        export_recommendations(run.root, out, k=5, chunk_users=5, progress=False)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file left behind


def test_cli_export_and_errors(run, tmp_path):
    out = tmp_path / "cli.parquet"
    cmd = [
        sys.executable,
        "-m",
        "recsys.cli",
        "export",
        str(run.root),
        "--k",
        "3",
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd + ["--no-progress"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert len(pd.read_parquet(out)) == 150
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.cli",
            "export",
            str(tmp_path / "nope"),
            "--out",
            "x.parquet",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "manifest.json is missing" in bad.stderr
    assert not (tmp_path / "x.parquet").exists()
    users = tmp_path / "users.txt"
    users.write_text("u1\nghost\n")
    res = subprocess.run(cmd + ["--users", str(users)], capture_output=True, text=True)
    assert res.returncode == 2 and "ghost" in res.stderr


def test_an_index_export_is_the_exact_one_with_an_exact_index_and_names_a_missing_one(
    run, tmp_path
):
    """--index: the saved index answers each chunk (seen items left out as served); with
    the exact (flat) index the lists are the brute-force ones."""
    from recsys.errors import ArtifactError
    from recsys.index.run_index import build_for_run
    from recsys.index.spec import IndexConfig

    with pytest.raises(ArtifactError, match="recsys index"):
        export_recommendations(run.root, tmp_path / "x.parquet", "all", k=5, index="flat")
    build_for_run(run, IndexConfig(kind="flat", gpu=False)).save(run)
    exact, searched = tmp_path / "exact.parquet", tmp_path / "searched.parquet"
    for out, index in ((exact, None), (searched, "flat")):
        export_recommendations(
            run.root, out, split="all", k=5, chunk_users=9, progress=False, index=index
        )
    got, want = pd.read_parquet(searched), pd.read_parquet(exact)
    pd.testing.assert_frame_equal(
        got[["user_id", "item_id", "rank"]], want[["user_id", "item_id", "rank"]]
    )
    np.testing.assert_allclose(got.score, want.score, rtol=1e-5)
    users = np.arange(len(run.user_map()))
    items, _ = brute_force(run, users, (0, 1, 2), k=5)
    assert run.item_map().to_index(got.item_id).reshape(-1, 5).tolist() == items.tolist()
