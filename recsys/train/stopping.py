"""Size-aware early stopping: a warm-up in optimiser steps and patience in steps.

"Patience 15 epochs" is 75 optimiser steps on a dataset of 5 batches an epoch and 75,000 on
one of 5,000, and a curve whose initial state scores well (an early spike, then a dip, then
a climb past it) is stopped in the dip when patience runs out before the climb. The rule:

* ``trainer.min_steps``: validations during the first ``min_steps`` optimiser steps still
  select the best checkpoint, but count no patience; the count starts after the warm-up,
  so a run lasts at least ``min_steps`` steps plus ``patience`` validations.
* ``trainer.patience_steps``: patience is at least this many optimiser steps' worth of
  validations (:func:`stopping_patience`).

Both are off (None) in ``TrainerConfig``, so that a config that names neither trains as
the published runs did (epochs alone); every model's default config
(``configs/{das,lightgcn,two_stage,mf}.yaml``) sets them, with
``check_val_every_n_epoch: auto`` (docs/research/29-issue-28-defaults.md).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping

# Scored (user, item) entries a validation may cost per training pair of the epochs before
# it. Measured on Beauty ratio-811, one thread (bench/speed.py): full-ranking validation
# costs ~7 ns an entry at dim 64 (~20 ns at DAS's 257), a training epoch ~5.5 us a pair for
# LightGCN (~16 us for DAS): 150 entries a pair keeps validation near 20% of training.
VALID_SCORES_PER_TRAIN_PAIR = 150


def validation_interval(
    setting: int | str, eval_users: int, n_items: int, n_train: int, max_epochs: int
) -> int:
    """Epochs between validations: ``setting`` itself, or for ``"auto"`` the fewest epochs
    whose training pairs pay for one validation's ``eval_users × n_items`` scores at
    :data:`VALID_SCORES_PER_TRAIN_PAIR` (1 on MovieLens, ~13 on Amazon Beauty), at most
    ``max_epochs`` so that a run validates at least once."""
    if setting != "auto":
        return int(setting)
    scores = eval_users * n_items
    epochs = -(-scores // max(1, VALID_SCORES_PER_TRAIN_PAIR * n_train))
    return max(1, min(int(epochs), max_epochs))


def stopping_patience(
    patience: int, patience_steps: int | None, steps_per_epoch: int, check_every: int = 1
) -> int:
    """Validations early stopping waits for a better score: ``patience``, raised so that
    they span at least ``patience_steps`` optimiser steps (``steps_per_epoch`` steps an
    epoch, one validation every ``check_every`` epochs)."""
    if patience_steps is None:
        return patience
    steps_per_check = max(1, steps_per_epoch * check_every)
    return max(patience, -(-patience_steps // steps_per_check))


class WarmupEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping whose patience starts counting after ``min_steps``."""

    def __init__(self, *args, min_steps: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.min_steps = min_steps or 0

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        super()._run_early_stopping_check(trainer)
        if trainer.global_step < self.min_steps:  # warm-up: the best still counts, no wait
            self.wait_count = 0
            trainer.should_stop = False
