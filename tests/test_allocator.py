"""``keep_large_blocks``: a freed large block stays in glibc's heap (reused, not unmapped),
measured by glibc's own accounting (``mallinfo2``) in fresh processes, until
``release_free_memory`` hands its pages back (the process's resident size drops)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import ctypes, json, sys
import torch
from recsys.allocator import keep_large_blocks, map_large_blocks, release_free_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
kept = keep_large_blocks() if sys.argv[1] in ("keep", "keep-then-map") else None
mapped = map_large_blocks() if sys.argv[1] == "keep-then-map" else None
block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MB, over glibc's default threshold
alive = libc.mallinfo2()
del block
freed = libc.mallinfo2()

def resident():  # bytes, /proc/self/statm's second field
    return int(open("/proc/self/statm").read().split()[1]) * 4096

before = resident()
released = release_free_memory()
print(json.dumps({"kept": kept, "mapped": mapped, "mapped_alive": alive.hblkhd,
                  "heap_free_after": freed.fordblks, "released": released,
                  "resident_drop": before - resident()}))
"""


def probe(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    environ.update(env, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=environ, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_large_freed_blocks_stay_in_the_heap_unless_the_user_tuned_the_allocator():
    block = 64 << 20
    default = probe("default")  # glibc maps the block apiece and unmaps it on free
    assert default["mapped_alive"] >= block and default["heap_free_after"] < block
    kept = probe("keep")  # served from the heap, and still there to reuse once freed
    assert kept["kept"] is True
    assert kept["mapped_alive"] < block and kept["heap_free_after"] >= block
    # and handed back to the kernel on request (after training's optimiser is freed)
    assert kept["released"] is True and kept["resident_drop"] >= block * 3 // 4
    # after training: mapped apiece and unmapped again, as glibc does by default
    mapped = probe("keep-then-map")
    assert mapped["kept"] is True and mapped["mapped"] is True
    assert mapped["mapped_alive"] >= block and mapped["heap_free_after"] < block
    # the user's own setting wins: nothing changed
    user = probe("keep", MALLOC_MMAP_THRESHOLD_="131072")
    assert user["kept"] is False
    assert user["mapped_alive"] >= block and user["heap_free_after"] < block
