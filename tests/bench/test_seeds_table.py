"""bench/seeds_table.py: runs grouped by config (seed and name aside), mean ± sample std."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import load_bench

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


def _load():
    return load_bench("seeds_table")  # it imports its sibling runs_table


def _fake_run(
    root: Path, name: str, seed: int, lr: float, valid: float, ndcg: float, **model: float
) -> Path:
    run = root / name
    run.mkdir()
    model_config = {"kind": "mf", "dim": 8, **model}
    config = {"name": name, "seed": seed, "model": model_config, "trainer": {"lr": lr}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    test = {"recall@10": 2 * ndcg, "ndcg@10": ndcg, "recall@20": 3 * ndcg, "ndcg@20": 1.5 * ndcg}
    metrics = {
        "dataset": "toy", "model": "mf", "split": "loo",
        "valid": {"ndcg@10": valid}, "test": test,
        "training": {"best_epoch": seed + 10, "train_seconds": 100.0 * seed},
    }  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "manifest.json").write_text(json.dumps({"command": f"/x/.venv/bin/recsys train {name}"}))
    return run


def test_groups_by_config_and_hand_computed_statistics(tmp_path):
    module = _load()
    runs = [
        _fake_run(tmp_path, "mf", 1, 1e-3, 0.10, 0.20),
        _fake_run(tmp_path, "mf-seed2", 2, 1e-3, 0.12, 0.26),
        _fake_run(tmp_path, "mf-lr", 1, 3e-3, 0.30, 0.40),  # a different config
        # the default regularisation written out: the same config once validated
        _fake_run(tmp_path, "mf-seed3", 3, 1e-3, 0.14, 0.23, reg=1e-4),
        _fake_run(tmp_path, "mf-reg", 4, 1e-3, 0.50, 0.50, reg=1e-3),  # not the same
    ]
    groups = module.group_runs([module.run_record(r) for r in runs])
    assert [g["label"] for g in groups] == ["mf", "mf-lr", "mf-reg"]
    same, other, _ = groups
    assert same["seeds"] == [1, 2, 3] and other["seeds"] == [1]
    # valid 0.10, 0.12, 0.14: mean 0.12, deviations ±0.02, 0 → variance 0.0008 / 2
    mean, std = same["stats"]["valid_ndcg@10"]
    assert mean == pytest.approx(0.12) and std == pytest.approx(0.02)
    # test N@10 0.20, 0.26, 0.23: mean 0.23, deviations ∓0.03, 0 → std 0.03; R@10 doubles it
    assert same["stats"]["ndcg@10"] == pytest.approx((0.23, 0.03))
    assert same["stats"]["recall@10"] == pytest.approx((0.46, 0.06))
    assert other["stats"]["ndcg@10"] == (pytest.approx(0.40), None)
    assert same["best_epochs"] == [11, 12, 13] and same["train_s"] == pytest.approx(200.0)


def test_same_seed_twice_is_refused_and_the_section_is_written(tmp_path):
    module = _load()
    a = _fake_run(tmp_path, "a", 1, 1e-3, 0.1, 0.2)
    b = _fake_run(tmp_path, "b", 1, 1e-3, 0.1, 0.2)
    with pytest.raises(ValueError, match="same config and seed twice"):
        module.group_runs([module.run_record(a), module.run_record(b)])

    c = _fake_run(tmp_path, "a-seed2", 2, 1e-3, 0.3, 0.4)
    doc = tmp_path / "BENCH.md"
    doc.write_text("# Benchmarks\n\n<!-- BEGIN s -->\nold\n<!-- END s -->\n\ntail\n")
    out = subprocess.run(
        [sys.executable, str(BENCH / "seeds_table.py"), "--section", "s", "--title", "T",
         "--doc", str(doc), str(a), str(c)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout)[0]["seeds"] == [1, 2]
    text = doc.read_text()
    assert "old" not in text and text.endswith("tail\n")
    # valid 0.1, 0.3: mean 0.2, sample std √0.02 = 0.1414
    assert "| `a` | mf | 1, 2 | 0.2000 ± 0.1414 |" in text
    assert "`recsys train a-seed2`" in text
