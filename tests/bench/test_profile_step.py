"""``bench/profile_step.py``'s dispatch-mode timer: every aten call counted, forward and
backward, under its operator and first input's shape."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("profile_step", REPO / "bench" / "profile_step.py")
profile_step = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile_step)


def test_the_op_timer_counts_each_forward_and_backward_call_by_shape():
    a = torch.randn(5, 3, requires_grad=True)
    b = torch.randn(3, 4)
    with profile_step.OpTimer() as timer:
        for _ in range(3):
            (a @ b).sum().backward()
    assert timer.ops[("mm", (5, 3))][1] == 3  # the forward products
    assert timer.ops[("mm", (5, 4))][1] == 3  # grad (5, 4) @ bᵀ: a's gradient
    assert all(seconds >= 0 for seconds, _ in timer.ops.values())
    assert ("mm", (7, 3)) not in timer.ops
    with torch.no_grad():  # outside the mode nothing more is counted
        a @ b
    assert timer.ops[("mm", (5, 3))][1] == 3
