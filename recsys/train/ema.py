"""An exponential moving average of the trainable weights, validated, checkpointed and
selected in place of the raw ones (``trainer.ema_decay``).

Lightning's own ``EMAWeightAveraging`` deep-copies the whole LightningModule, which fails
on the sparse CSR adjacency our graph models hold; this callback keeps one shadow tensor
per parameter instead. Buffers (frozen codes, EMA codebooks, masks) are never averaged.
A checkpoint's ``state_dict`` holds the averaged parameters (what validation scored, so
``best.ckpt`` is the selected model) and ``ema_raw_parameters`` the raw ones, which a
resumed run trains on.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor


class ParameterEMA(Callback):
    """``shadow ← decay · shadow + (1 − decay) · θ`` after every optimiser step, starting
    from the weights after the first step; swapped into the module for each validation
    epoch, copied into it when training ends."""

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, Tensor] | None = None
        self._swapped = False

    def _params(self, pl_module: L.LightningModule) -> dict[str, torch.nn.Parameter]:
        return dict(pl_module.named_parameters())

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        params = self._params(pl_module)
        if self.shadow is None:
            self.shadow = {name: p.detach().clone() for name, p in params.items()}
            return
        for name, p in params.items():
            self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def restart_entries(self, pl_module: L.LightningModule, masks: dict[str, Tensor]) -> None:
        """Set the average of the masked entries ``{parameter name: bool mask}`` to their
        current raw values: entries the model changed outside the optimiser (a
        re-seeded code) would otherwise reach validation blended with what they held."""
        if self.shadow is None or self._swapped:
            return
        params = self._params(pl_module)
        for name, mask in masks.items():
            shadow = self.shadow[name]
            shadow.copy_(torch.where(mask, params[name].detach(), shadow))

    @torch.no_grad()
    def _swap(self, pl_module: L.LightningModule) -> None:
        if self.shadow is None:
            return
        for name, p in self._params(pl_module).items():
            raw = p.detach().clone()
            p.copy_(self.shadow[name])
            self.shadow[name].copy_(raw)
        self._swapped = not self._swapped

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not self._swapped:
            self._swap(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        # runs before ModelCheckpoint's (Lightning orders checkpoint callbacks last), whose
        # save hook below writes the average as the state_dict
        if self._swapped:
            self._swap(pl_module)

    @torch.no_grad()
    def on_train_end(self, trainer, pl_module) -> None:
        if self._swapped:
            self._swap(pl_module)
        if self.shadow is not None:
            for name, p in self._params(pl_module).items():
                p.copy_(self.shadow[name])

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.shadow is None:
            return
        state = checkpoint["state_dict"]
        # while swapped (a save during validation) the module holds the average already
        average, raw = (state, self.shadow) if self._swapped else (self.shadow, state)
        checkpoint["ema_raw_parameters"] = {n: raw[n].detach().clone() for n in self.shadow}
        for name in self.shadow:
            state[name] = average[name].detach().clone()

    @torch.no_grad()
    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        raw = checkpoint.get("ema_raw_parameters")
        if raw is None:  # a checkpoint written without the average: start it afresh
            self.shadow = None
            return
        params = self._params(pl_module)
        self.shadow = {n: checkpoint["state_dict"][n].to(params[n]).clone() for n in raw}
        for name, value in raw.items():
            params[name].copy_(value)
