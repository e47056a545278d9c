"""What glibc's handling of large freed blocks costs a tensor operation, as JSON.

    python bench/allocator.py --rows 100000,262000,1000000 --repeat 20

For each ``(rows, 64)`` float32 shape: milliseconds of ``x.pow(2)`` into a new tensor
(created and dropped each time, as a training step's temporaries are) and into a
preallocated one, in a fresh one-thread process with glibc's default thresholds and in one
after :func:`recsys.allocator.keep_large_blocks`. The gap between the first two columns is
the kernel mapping and zeroing pages for every new block.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(rows: list[int], repeat: int, keep: bool) -> dict:
    import torch

    from recsys.allocator import keep_large_blocks

    kept = keep_large_blocks() if keep else False
    torch.set_num_threads(1)
    out: dict = {"kept": kept, "ms": {}}
    for n in rows:
        x = torch.randn(n, 64)
        into = torch.empty_like(x)
        for _ in range(3):  # warm both paths
            x.pow(2)
            torch.pow(x, 2, out=into)
        start = time.perf_counter()
        for _ in range(repeat):
            y = x.pow(2)
            del y
        new = (time.perf_counter() - start) / repeat
        start = time.perf_counter()
        for _ in range(repeat):
            torch.pow(x, 2, out=into)
        reused = (time.perf_counter() - start) / repeat
        out["ms"][n] = {"new_tensor": round(new * 1e3, 2), "preallocated": round(reused * 1e3, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="100000,262000,1000000")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--child", choices=["default", "kept"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    rows = [int(n) for n in args.rows.split(",")]
    if args.child:
        print(json.dumps(measure(rows, args.repeat, args.child == "kept")))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = {}
    for mode in ("default", "kept"):
        cmd = [sys.executable, __file__, "--rows", args.rows, "--repeat", str(args.repeat)]
        done = subprocess.run([*cmd, "--child", mode], env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr)
        result[mode] = json.loads(done.stdout)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
