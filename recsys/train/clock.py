"""Wall-clock time of the training phase, kept across a resume (in the checkpoint)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class EpochClock(Callback):
    """Training wall-clock seconds, summed over the parts of a resumed run: each checkpoint
    holds the seconds trained so far, which the resumed part starts from (the work after
    the last checkpoint, done again, counts once). ``times``: the count at the end of each
    validation, for 's to best'; ``epoch_seconds`` / ``valid_seconds``: each epoch's
    training time without its validation, and each validation's (``bench/speed.py``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.before = 0.0  # seconds of the parts before this one (from the checkpoint)
        self.times: dict[int, float] = {}
        self.epoch_seconds: list[float] = []
        self.valid_seconds: list[float] = []
        self._epoch_start = self._valid_start = 0.0
        self._valid_in_epoch = 0.0

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.start

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start, self._valid_in_epoch = time.perf_counter(), 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._valid_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._valid_start
        self._valid_in_epoch += seconds
        self.valid_seconds.append(round(seconds, 4))
        self.times[trainer.current_epoch] = self.elapsed()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._epoch_start - self._valid_in_epoch
        self.epoch_seconds.append(round(seconds, 4))  # validation runs inside the epoch

    def state_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.elapsed(),
            "times": dict(self.times),
            "epoch_seconds": list(self.epoch_seconds),
            "valid_seconds": list(self.valid_seconds),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = float(state_dict["seconds"])
        self.times = {int(epoch): float(t) for epoch, t in state_dict["times"].items()}
        self.epoch_seconds = [float(t) for t in state_dict.get("epoch_seconds", [])]
        self.valid_seconds = [float(t) for t in state_dict.get("valid_seconds", [])]
