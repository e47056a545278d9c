"""bench/ablations.sh: one command trains every ablation config (under each seed of SEEDS)
and writes the table; run against a stand-in ``recsys`` that records what it was asked."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recsys.train.config import load_run_config

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = ["ablations.sh", "run_configs.sh", "runs_table.py", "seeds_table.py"]

# A stand-in for `recsys train -c CONFIG name=N k=v ... --fresh --no-progress`: applies
# the overrides, writes the run folder the table reads, and fails for a name containing
# FAIL_NAME.  Valid NDCG@10 is a known function of the config and the seed.
FAKE_RECSYS = """
import json, os, sys, pathlib, yaml
from recsys.config import load_yaml
args = sys.argv[2:]
config = load_yaml(args[args.index("-c") + 1])  # composed over its base: files
for item in args:
    if "=" in item:
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
if os.environ.get("FAIL_NAME") and os.environ["FAIL_NAME"] in config["name"]:
    sys.exit("training failed")
run = pathlib.Path("runs") / config["name"]
run.mkdir(parents=True, exist_ok=True)
(run / "config.yaml").write_text(yaml.safe_dump(config))
valid = 0.1 + config["seed"] / 10000 + (0.05 if "no-align" in config["name"] else 0.0)
test = {"recall@10": valid, "ndcg@10": valid, "recall@20": valid, "ndcg@20": valid}
metrics = {"dataset": config["data"]["dataset"], "split": config["data"]["split"],
           "model": config["model"]["kind"], "valid": {"ndcg@10": valid}, "test": test,
           "training": {"epochs": 3, "best_epoch": 2, "train_seconds": 1.0}}
(run / "metrics.json").write_text(json.dumps(metrics))
(run / "manifest.json").write_text(json.dumps({"command": " ".join(sys.argv)}))
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the bench scripts and two ablation configs (and configs/das.yaml, their
    base), with the stand-in recsys."""
    (tmp_path / "bench").mkdir()
    for name in SCRIPTS:
        shutil.copy(REPO / "bench" / name, tmp_path / "bench" / name)
    (tmp_path / "configs" / "ablations").mkdir(parents=True)
    shutil.copy(REPO / "configs" / "das.yaml", tmp_path / "configs")
    for name in ["das.yaml", "das-no-align.yaml"]:
        shutil.copy(REPO / "configs" / "ablations" / name, tmp_path / "configs" / "ablations")
    fake = tmp_path / "fake_recsys"
    fake.write_text(f"#!{sys.executable}\n{FAKE_RECSYS}")
    fake.chmod(0o755)
    return tmp_path


def _run(project: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "RECSYS": str(project / "fake_recsys"), "PYTHON": sys.executable}
    environ.update(DOC=str(project / "BENCH.md"), **env)
    return subprocess.run(
        ["bash", str(project / "bench" / "ablations.sh"), "ml-100k", "loo", "trainer.lr=0.01"],
        env=environ, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _section(doc: Path, section: str) -> str:
    text = doc.read_text()
    begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    assert begin in text and end in text, text
    return text[text.index(begin) : text.index(end)]


def test_seeds_train_every_config_and_table_averages_them(project):
    seed = load_run_config(str(REPO / "configs" / "ablations" / "das.yaml")).seed
    done = _run(project, SEEDS=f"{seed} 1 2", JOBS="2")
    assert done.returncode == 0, done.stderr
    runs = {p.name for p in (project / "runs").iterdir()}
    # the config's own seed keeps the unsuffixed name a call without SEEDS uses
    configs, suffixes = ["das", "das-no-align"], ["", "-seed1", "-seed2"]
    assert runs == {f"abl-{c}-ml-100k-loo{s}" for c in configs for s in suffixes}
    for name, expected in [("abl-das-ml-100k-loo-seed1", 1), ("abl-das-ml-100k-loo", seed)]:
        config = yaml.safe_load((project / "runs" / name / "config.yaml").read_text())
        assert config["seed"] == expected
        assert config["trainer"]["lr"] == 0.01 and config["data"]["dataset"] == "ml-100k"
    manifest = project / "runs" / "abl-das-ml-100k-loo-seed2" / "manifest.json"
    command = json.loads(manifest.read_text())
    assert command["command"].split()[-3:] == ["seed=2", "--fresh", "--no-progress"]

    table = _section(project / "BENCH.md", "ablations-ml-100k-loo-seeds")
    rows = [line for line in table.splitlines() if line.startswith("| `abl-")]
    # one row per config, in the configs' file order
    labels = [r.split(" | ")[0] for r in rows]
    assert labels == ["| `abl-das-no-align-ml-100k-loo`", "| `abl-das-ml-100k-loo`"]
    # valid = 0.1 + seed / 10000 (+ 0.05 without alignment), averaged over the three seeds
    values = [0.1 + s / 10000 for s in (seed, 1, 2)]
    mean, std = statistics.fmean(values), statistics.stdev(values)
    assert f"| {seed}, 1, 2 | {mean + 0.05:.4f} ± {std:.4f} |" in rows[0]
    assert f"| {seed}, 1, 2 | {mean:.4f} ± {std:.4f} |" in rows[1]


def test_without_seeds_one_run_per_config_and_the_runs_table(project):
    done = _run(project)
    assert done.returncode == 0, done.stderr
    runs = {p.name for p in (project / "runs").iterdir()}
    assert runs == {"abl-das-no-align-ml-100k-loo", "abl-das-ml-100k-loo"}
    table = _section(project / "BENCH.md", "ablations-ml-100k-loo")
    assert "`abl-das-ml-100k-loo`" in table and "`abl-das-no-align-ml-100k-loo`" in table
    assert "-seeds" not in (project / "BENCH.md").read_text()


def test_resume_keeps_finished_runs_and_trains_the_missing_ones(project):
    """RESUME=1 asks recsys to keep what finished (--skip-finished) instead of --fresh."""
    assert _run(project, SEEDS="1 2").returncode == 0
    shutil.rmtree(project / "runs" / "abl-das-ml-100k-loo-seed2")
    done = _run(project, SEEDS="1 2", RESUME="1")
    assert done.returncode == 0, done.stderr
    for run in ["abl-das-ml-100k-loo-seed1", "abl-das-ml-100k-loo-seed2"]:
        command = json.loads((project / "runs" / run / "manifest.json").read_text())["command"]
        assert command.split()[-2:] == ["--skip-finished", "--no-progress"], command
        assert "--fresh" not in command
    table = _section(project / "BENCH.md", "ablations-ml-100k-loo-seeds")
    assert "abl-das-ml-100k-loo-seed2" in table


def test_a_failed_training_exits_nonzero_and_writes_no_table(project):
    done = _run(project, SEEDS="1 2", JOBS="2", FAIL_NAME="no-align-ml-100k-loo-seed2")
    assert done.returncode != 0
    assert "a training failed" in done.stderr
    assert not (project / "BENCH.md").exists()
    # the others still trained
    assert (project / "runs" / "abl-das-no-align-ml-100k-loo-seed1" / "metrics.json").exists()
