"""The optimiser: Adam, with lazy row updates for embedding tables that get sparse
gradients (a model's ``sparse_parameters``).

Dense Adam touches every row of every table at every step, so with a million-row table a
step costs as much as the catalogue whatever the batch. A table gathered with
``sparse=True`` gets a sparse gradient holding the rows the step read; torch's
``SparseAdam`` updates those rows only (their moments too: "lazy Adam", as TensorFlow's
``LazyAdam`` and torchrec's row-wise optimisers do). :class:`MixedAdam` runs ``Adam`` on the
other parameters and ``SparseAdam`` on those tables behind one optimiser, which is what
Lightning's automatic optimisation expects.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import nn


class MixedAdam(torch.optim.Optimizer):
    """``Adam(dense)`` and ``SparseAdam(sparse)`` as one optimiser: one ``step``, one
    ``zero_grad``, one state dict (the inner optimisers share its ``state`` and
    ``param_groups``: dense groups first)."""

    def __init__(
        self,
        dense: Sequence[nn.Parameter],
        sparse: Sequence[nn.Parameter],
        lr: float,
        weight_decay: float = 0.0,
        fused: bool | None = None,
    ) -> None:
        if weight_decay and sparse:
            # SparseAdam has no weight decay: a lazily updated row cannot decay in between
            raise ValueError("weight_decay is not supported with sparse embedding updates")
        self.inner: list[torch.optim.Optimizer] = []
        if dense:
            self.inner.append(
                torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay, fused=fused)
            )
        if sparse:
            self.inner.append(torch.optim.SparseAdam(list(sparse), lr=lr))
        super().__init__([*dense, *sparse], {"lr": lr})
        self._share()

    def _share(self) -> None:
        """One ``state`` for all and ``param_groups`` as the inner optimisers' own dicts
        (again after a ``load_state_dict``, which replaces both)."""
        if not hasattr(self, "_sizes"):
            self._sizes = [len(o.param_groups) for o in self.inner]
            self.param_groups = [g for o in self.inner for g in o.param_groups]
        at = 0
        state = self.state if isinstance(self.state, defaultdict) else defaultdict(dict, self.state)
        self.state = state
        for o, size in zip(self.inner, self._sizes, strict=True):
            o.param_groups = self.param_groups[at : at + size]
            o.state = state
            at += size

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.inner:
            o.step()
        return loss

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._share()


def adam_for(
    module: nn.Module, sparse: Sequence[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Adam over ``module``'s parameters (one fused kernel where every parameter allows it;
    the per-tensor update's passes over the tables were ~8% of a LightGCN step on Beauty),
    lazy for the tables in ``sparse`` (:class:`MixedAdam`)."""
    params = list(module.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if not sparse:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    lazy = {id(p) for p in sparse}
    dense = [p for p in params if id(p) not in lazy]
    return MixedAdam(dense, list(sparse), lr, weight_decay, fused or None)
