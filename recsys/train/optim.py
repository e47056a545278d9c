"""The optimiser: Adam, with lazy row updates for embedding tables that get sparse
gradients (a model's ``sparse_parameters``).

Dense Adam touches every row of every table at every step, so with a million-row table a
step costs as much as the catalogue whatever the batch. A table gathered with
``sparse=True`` gets a sparse gradient holding the rows the step read; :class:`RowAdam`
(torch's ``SparseAdam``'s arithmetic) updates those rows only (their moments too: "lazy
Adam", as TensorFlow's ``LazyAdam`` and torchrec's row-wise optimisers do).
:class:`MixedAdam` runs ``Adam`` on the other parameters and ``RowAdam`` on those tables
behind one optimiser, which is what Lightning's automatic optimisation expects.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


class RowAdam(torch.optim.SparseAdam):
    """torch's ``SparseAdam``, bit for bit (the same operations on the same row values, the
    same state), with the read-modify-write of the rows done by ``index_select`` and
    ``index_add_`` on the coalesced gradient's row index instead of ``sparse_mask`` and a
    sparse ``add_``: ``sparse_mask`` was 80 ms a call on a (2M, 64) table whose step read
    200k rows, ``index_select`` 33 ms (``/tmp``-only microbenchmark; the lazy update was a
    third of a sampled LightGCN step at a million items)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):  # type: ignore[override]
        loss = _closure_loss(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr = float(group["lr"])
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError("RowAdam needs sparse gradients; use Adam for dense ones")
                state = self.state[param]
                if len(state) == 0:  # SparseAdam's state, so checkpoints move between them
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(
                        param, memory_format=torch.preserve_format
                    )
                state["step"] += 1
                grad = -param.grad if group.get("maximize", False) else param.grad
                _row_adam(param, grad, state, beta1, beta2, lr, group["eps"])
        return loss


def _closure_loss(closure: Callable[[], float] | None) -> float | None:
    """A ``step(closure)``'s loss: the closure re-evaluated with gradients on, if given."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _row_adam(
    param: Tensor, grad: Tensor, state: dict, beta1: float, beta2: float, lr: float, eps: float
) -> None:
    """torch.optim._functional.sparse_adam's update of one table, its sums in its order."""
    grad = grad.coalesce()  # the update is non-linear: one row each
    index, values = grad._indices()[0], grad._values()  # (n,), (n, D)
    if values.numel() == 0:
        return
    exp_avg, exp_avg_sq, step = state["exp_avg"], state["exp_avg_sq"], state["step"]
    # old <- b·old + (1 − b)·new, written as old += (1 − b)·(new − old)
    old_avg = exp_avg.index_select(0, index)
    avg_update = values.sub(old_avg).mul_(1 - beta1)
    exp_avg.index_add_(0, index, avg_update)  # distinct rows: old + update, as the sparse add_
    old_sq = exp_avg_sq.index_select(0, index)
    sq_update = values.pow(2).sub_(old_sq).mul_(1 - beta2)
    exp_avg_sq.index_add_(0, index, sq_update)
    numer = avg_update.add_(old_avg)
    denom = sq_update.add_(old_sq).sqrt_().add_(eps)
    step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    param.index_add_(0, index, numer.div_(denom).mul_(-step_size))


class MixedAdam(torch.optim.Optimizer):
    """``Adam(dense)`` and ``RowAdam(sparse)`` as one optimiser: one ``step``, one
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
            # lazy Adam has no weight decay: a lazily updated row cannot decay in between
            raise ValueError("weight_decay is not supported with sparse embedding updates")
        self.inner: list[torch.optim.Optimizer] = []
        if dense:
            self.inner.append(
                torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay, fused=fused)
            )
        if sparse:
            self.inner.append(RowAdam(list(sparse), lr=lr))
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
        loss = _closure_loss(closure)
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
