"""Shared fixtures: real datasets (skipped, or failed in CI, when absent), tiny data."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch

# Two threads on a busy 2-core machine can be 10x slower than one.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def load_bench(script: str) -> ModuleType:
    """Import ``bench/<script>.py`` (not a package) as a module, its siblings importable."""
    bench = REPO / "bench"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(script, bench / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module


def shared_root() -> Path:
    return Path(os.environ.get("RECSYS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``RECSYS_SHARED_DATA`` (default ../shared/data): skip when absent, unless
    ``RECSYS_REQUIRE_SHARED=1`` (CI), where absence is a failure."""
    root = shared_root()
    if not (root / "ml-100k" / "u.data").exists():
        msg = f"shared datasets not found at {root} (set RECSYS_SHARED_DATA)"
        if os.environ.get("RECSYS_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; RECSYS_REQUIRE_SHARED=1 makes this a failure")
        pytest.skip(msg)
    return root


def synthetic_interactions(
    n_users: int = 60, n_items: int = 40, per_user: int = 12, seed: int = 0
) -> pd.DataFrame:
    """Clustered implicit feedback: users prefer items of their own cluster, so that a
    model has something to learn.  Columns user_id, item_id, timestamp."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        cluster = u % 4
        pool = [i for i in range(n_items) if i % 4 == cluster]
        others = [i for i in range(n_items) if i % 4 != cluster]
        k_in = min(per_user - 2, len(pool))
        chosen = list(rng.choice(pool, size=k_in, replace=False)) + list(
            rng.choice(others, size=2, replace=False)
        )
        rng.shuffle(chosen)
        for t, i in enumerate(chosen):
            rows.append((f"u{u}", f"i{i}", 1_000_000 + 100 * t + u))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


@pytest.fixture
def tiny_table(tmp_path: Path) -> Path:
    path = tmp_path / "interactions.csv"
    synthetic_interactions().to_csv(path, index=False)
    return path


def train_table_run(
    root: Path,
    interactions: pd.DataFrame,
    items: pd.DataFrame | None,
    model: dict,
    features: dict | None = None,
    split: str = "loo",
    **sections,
):
    """Write the tables under ``root`` (``items`` None: interactions only) and train one
    run of the generic ``table`` dataset on them (``sections``: extra top-level config
    sections, e.g. ``trainer``); returns its RunFolder."""
    from recsys.train.config import parse_run_config
    from recsys.train.runner import train_run

    interactions.to_csv(root / "inter.csv", index=False)
    data = {"dataset": "table", "split": split, "interactions": {"path": str(root / "inter.csv")}}
    if items is not None:
        items.to_csv(root / "items.csv", index=False)
        data["items"] = {"path": str(root / "items.csv")}
    config = {
        "name": model["kind"],
        "output_dir": str(root / "runs"),
        "data": data,
        "model": model,
        "features": features,
        **sections,
    }
    return train_run(parse_run_config(config))


def two_tiny_runs(root: Path):
    """An MF and a LightGCN run with a transition block (two epochs each) on the same
    synthetic interactions, for tools that compare or combine two runs; returns their
    RunFolders (the LightGCN run scores test with other user vectors than valid)."""
    table = synthetic_interactions()
    (root / "a").mkdir(), (root / "b").mkdir()
    trainer = {"max_epochs": 2, "num_threads": 1}
    a = train_table_run(root / "a", table, None, {"kind": "mf", "dim": 8}, trainer=trainer)
    lightgcn = {"kind": "lightgcn", "dim": 4, "transition_dim": 4}
    b = train_table_run(root / "b", table, None, lightgcn, trainer=trainer)
    return a, b
