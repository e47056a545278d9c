"""Size-aware early stopping (``trainer.min_steps``, ``trainer.patience_steps``) on
scripted validation curves, through Lightning's own EarlyStopping and ``min_steps``."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from recsys.train.stopping import WarmupEarlyStopping, stopping_patience

# The shape reported on a small Amazon category: a spike of the initial state (epoch 0),
# a dip, then a climb past it. Five optimiser steps an epoch.
SPIKE = [0.073, 0.060, 0.052, 0.046, 0.050, 0.055, 0.060, 0.064, 0.068, 0.071, 0.075, 0.080,
         0.083, 0.082, 0.081, 0.080, 0.079, 0.078, 0.077, 0.076, 0.075, 0.074, 0.073, 0.072]
STEPS_PER_EPOCH = 5


class Scripted(L.LightningModule):
    """Trains nothing; validation reports the next value of ``curve``."""

    def __init__(self, curve: list[float]) -> None:
        super().__init__()
        self.curve, self.w = curve, torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w * 0).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/ndcg@10", self.curve[min(self.current_epoch, len(self.curve) - 1)])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(torch.zeros(STEPS_PER_EPOCH, 1), batch_size=1)

    def val_dataloader(self):
        return DataLoader(torch.zeros(1, 1), batch_size=1)


def run_curve(patience: int, min_steps: int | None = None) -> tuple[int, int]:
    """``(epochs run, best epoch)`` of the scripted curve under this stopping rule."""
    stop = WarmupEarlyStopping("val/ndcg@10", patience=patience, mode="max", min_steps=min_steps)
    trainer = L.Trainer(
        max_epochs=len(SPIKE), callbacks=[stop], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(Scripted(SPIKE))
    best = SPIKE.index(max(SPIKE[: trainer.current_epoch]))
    return trainer.current_epoch, best


def test_patience_in_steps_means_the_same_at_any_epoch_size():
    assert stopping_patience(10, None, 5) == 10  # off: epochs alone
    assert stopping_patience(10, 200, 5) == 40  # 5 steps an epoch: 40 epochs span 200 steps
    assert stopping_patience(10, 200, 5000) == 10  # a big epoch already spans them
    assert stopping_patience(3, 200, 5, check_every=4) == 10  # 20 steps between checks
    assert stopping_patience(2, 7, 0) == 7  # an empty epoch counts as one step a check


def test_an_early_spike_does_not_end_the_run_under_the_size_aware_rule():
    # Epochs alone, patience 3: stops in the dip, keeping the spike of the initial state.
    epochs, best = run_curve(patience=3)
    assert (epochs, best) == (4, 0)
    # min_steps = 10 epochs' steps: patience counts from the end of the warm-up, the climb
    # passes the spike at epoch 10 and peaks at 12; patience 3 ends the run after epoch 15.
    epochs, best = run_curve(patience=3, min_steps=10 * STEPS_PER_EPOCH)
    assert best == 12 and epochs == 16
    # patience_steps = 60 (12 epochs of 5 steps) alone does the same here.
    patience = stopping_patience(3, 60, STEPS_PER_EPOCH)
    epochs, best = run_curve(patience=patience)
    assert patience == 12 and best == 12 and epochs == len(SPIKE)


def test_validation_interval_pays_for_validation_with_training_pairs():
    from recsys.train.stopping import VALID_SCORES_PER_TRAIN_PAIR, validation_interval

    assert VALID_SCORES_PER_TRAIN_PAIR == 150
    # Amazon Beauty ratio-811: 22,363 users x 12,101 items against 145,874 pairs
    assert validation_interval("auto", 22363, 12101, 145874, 200) == 13  # 12.37 rounded up
    # MovieLens 100K loo: 943 x 1,682 scores are paid for by one epoch
    assert validation_interval("auto", 943, 1682, 97_000, 200) == 1
    assert validation_interval("auto", 22363, 12101, 145874, 5) == 5  # validates at least once
    assert validation_interval(3, 22363, 12101, 145874, 200) == 3
