"""``bench/allocator.py`` runs each arm in its own process: the default one leaves glibc as
it is, the other keeps large blocks, and every shape gets both timings."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_the_allocator_bench_measures_both_arms():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    done = subprocess.run(
        [sys.executable, "bench/allocator.py", "--rows", "1000,3000", "--repeat", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["default"]["kept"] is False and result["kept"]["kept"] is True
    for arm in result.values():
        assert set(arm["ms"]) == {"1000", "3000"}
        assert all(t["new_tensor"] >= 0 and t["preallocated"] >= 0 for t in arm["ms"].values())
