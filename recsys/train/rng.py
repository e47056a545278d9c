"""The global random generators' state, checkpointed so that a resumed run draws what an
uninterrupted one draws.

Models draw from torch's global generator while training (dropout, modality dropout, the
DAS co-occurrence term's sampled neighbours). Lightning checkpoints none of the global
generators, so a run resumed from ``last.ckpt`` would draw from the state
``seed_everything`` and the model's construction left, not from the state the interrupted
run had reached: same weights at the resume, other draws after it. Batches are re-seeded
per epoch (``InteractionDataModule``) and need nothing here.

Every value is a tensor, an int, a float or None, so that checkpoints still load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def random_state() -> dict[str, Any]:
    """The global generators' state: torch (CPU and every CUDA device), numpy, Python."""
    np_state = np.random.get_state(legacy=False)
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_gauss": (int(np_state["has_gauss"]), float(np_state["gauss"])),
        "python": (int(version), torch.tensor(py_state, dtype=torch.int64), gauss),
    }


def set_random_state(state: dict[str, Any]) -> None:
    """Restore what :func:`random_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    has_gauss, gauss = state["numpy_gauss"]
    key = state["numpy_key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, state["numpy_pos"], has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in py_state.tolist()), py_gauss))


def _world() -> tuple[int, int]:
    """(this process's rank, processes) of the run's process group; (0, 1) without one."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


class GlobalRandomState(Callback):
    """Saves the global generators' state with every checkpoint and restores it on resume.
    In several processes each draws its own (its batches' neighbourhoods): the checkpoint,
    written by the first, holds every process's state (gathered: Lightning builds the
    checkpoint in every process) and each restores its own."""

    def state_dict(self) -> dict[str, Any]:
        rank, world = _world()
        if world == 1:
            return random_state()
        states: list[Any] = [None] * world
        torch.distributed.all_gather_object(states, random_state())
        return {"ranks": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "ranks" in state_dict:  # resumed in as many processes: each its own
            states, (rank, world) = state_dict["ranks"], _world()
            state_dict = states[rank] if world == len(states) else states[0]
        set_random_state(state_dict)
