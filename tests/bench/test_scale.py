"""``bench/synthetic.py``'s log (its size, power laws and content signal) and
``bench/scale.py`` end to end on a tiny catalogue."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


synthetic = load("synthetic")


def test_the_synthetic_log_has_its_size_power_laws_and_content_that_follows_it():
    spec = synthetic.SyntheticSpec(items=2000, seed=1)
    interactions, items = synthetic.generate(spec)
    assert len(interactions) >= 10 * 2000  # distinct pairs, after dropping repeats
    assert not interactions.duplicated(["user_id", "item_id"]).any()
    assert interactions.user_id.nunique() == 2000 and len(items) == 2000
    counts = interactions.item_id.value_counts().to_numpy()
    assert counts[:20].sum() > 0.10 * len(interactions)  # the top 1% of items: > 10%
    activity = interactions.user_id.value_counts().to_numpy()
    assert activity.max() > 10 * np.median(activity)  # a heavy tail of active users
    # items a user shares are closer in content than random pairs
    content = items[synthetic.content_columns(spec.dim)].to_numpy()
    content = content / np.linalg.norm(content, axis=1, keepdims=True)
    firsts = interactions.groupby("user_id").item_id.nth([0, 1]).to_numpy().reshape(-1, 2)
    together = np.einsum("ij,ij->i", content[firsts[:, 0]], content[firsts[:, 1]]).mean()
    rng = np.random.default_rng(0)
    random = np.einsum("ij,ij->i", *(content[rng.integers(0, 2000, (2, 5000))])).mean()
    assert together > random + 0.2
    again, _ = synthetic.generate(spec)
    assert again.equals(interactions)  # deterministic given the seed


def test_scale_bench_trains_indexes_exports_and_serves_a_tiny_catalogue(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scale.py"), "--items", "300", "--models",
         "lightgcn", "--full-max", "0", "--eval-users", "50", "--api-seconds", "1",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    (size,) = result["sizes"]
    assert size["items"] == size["users"] == 300 and size["interactions"] >= 3000
    (name,) = size["train"]
    trained = size["train"][name]
    assert name == "scale-lightgcn-sampled-300" and trained["valid_users"] == 50
    assert trained["seconds_per_epoch"] > 0 and trained["peak_rss_mb"] > 100
    serving = size["serving"]
    assert serving["index_kind"] == "flat" and "error" not in serving["index"]
    assert serving["export"]["verified"] and serving["export"]["users_per_second"] > 0
    assert serving["api"]["errors"] == 0 and serving["api"]["p99_ms"] > 0
    assert serving["api"]["rps"] > 0
    table = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scale.py"), "--table", "-"],
        input=out.stdout, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "| 300 | 300 |" in table and "lightgcn-sampled" in table


def test_ddp_speedups_are_per_round_and_summarised_by_their_median():
    ddp_speed, scale = load("ddp_speed"), load("scale")
    rates = [(0, 1, 100.0), (0, 2, 150.0), (1, 1, 80.0), (1, 2, 140.0), (2, 1, 100.0),
             (2, 2, 120.0)]  # fmt: skip
    runs = [{"round": r, "devices": d, "samples_per_second": s} for r, d, s in rates]
    assert ddp_speed.speedups(runs, [1, 2]) == {1: 1.0, 2: 1.5}  # of 1.5, 1.75, 1.2
    assert [r["speedup"] for r in runs] == [1.0, 1.5, 1.0, 1.75, 1.0, 1.2]
    ddp = {"lightgcn": {"median_speedup": {"1": 1.0, "2": 1.5}, "runs": runs}}
    table = scale.markdown({"sizes": [{"items": 10, "train": {}, "ddp": ddp}]})
    assert "devices 2: 150.0, 140.0, 120.0; median speed-up 1.5×" in table


def test_a_process_trees_memory_counts_every_descendant_once():
    """``bench/ddp_speed.py``'s peak of a run and its processes: a shell whose child holds
    256 MB; the tree's sum against each process's own ``VmRSS`` read directly."""
    import time

    ddp_speed = load("ddp_speed")
    hold = "x = bytearray(256 * 2**20); import time; time.sleep(30)"
    shell = subprocess.Popen(["sh", "-c", f"{sys.executable} -c '{hold}' & wait"])
    try:

        def rss_kb(pid: int) -> int:
            status = Path(f"/proc/{pid}/status").read_text()
            return int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])

        def children() -> list[int]:
            found = []
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    if stat.read_text().rsplit(")", 1)[1].split()[1] == str(shell.pid):
                        found.append(int(stat.parent.name))
                except OSError:  # gone meanwhile
                    pass
            return found

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            kids = children()
            if kids and rss_kb(kids[0]) > 256 * 2**10:
                break
            time.sleep(0.1)
        want = (rss_kb(shell.pid) + rss_kb(kids[0])) / 2**20
        assert ddp_speed.tree_rss_gb(shell.pid) == pytest.approx(want, rel=0.02)
        assert ddp_speed.tree_rss_gb(kids[0]) < want and want > 0.25
    finally:
        shell.kill()
        subprocess.run(["pkill", "-f", "bytearray\\(256"], check=False)
        shell.wait()


@pytest.mark.parametrize("bad", ["0", "x"])
def test_scale_bench_refuses_a_bad_size(bad, tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scale.py"), "--items", bad, "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode != 0 and "--items" in out.stderr
