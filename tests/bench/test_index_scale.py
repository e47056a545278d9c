"""bench/index_scale.py: a calibrated index over its synthetic catalogue, scored against
exact search (the exact top-10 checked by hand on a small case)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("index_scale", REPO / "bench" / "index_scale.py")
index_scale = importlib.util.module_from_spec(spec)
spec.loader.exec_module(index_scale)


def test_exact_topk_is_the_best_inner_products_in_order():
    items = np.array([[1, 0], [0, 1], [2, 0], [-1, 0]], dtype=np.float32)
    queries = np.array([[1, 0.1], [-1, -0.5]], dtype=np.float32)
    assert index_scale.exact_topk(items, queries, 2).tolist() == [[2, 0], [3, 1]]


def test_a_calibrated_ivf_reaches_its_target_on_held_out_queries():
    cmd = [sys.executable, str(REPO / "bench" / "index_scale.py"), "--single", "ivf",
           "--items", "20000", "--calibration", "300", "--queries", "200"]  # fmt: skip
    result = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    assert result["calibration"]["recall@10"] >= 0.96  # what calibration aimed for
    assert result["recall@10"] >= 0.9 and result["items"] == 20000  # other queries: close
    assert result["params"]["nprobe"] == result["calibration"]["value"]
