"""trainer.ema_decay: the averaged weights against a hand-computed moving average."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from recsys.train.ema import ParameterEMA

DECAY = 0.6


class Toy(L.LightningModule):
    """One (3,) weight pulled by SGD towards a different target at each step, so that
    the raw and averaged weights differ; validation records the weight it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return ((self.w - batch) ** 2).sum()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.seen.append(self.w.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.3)


class RecordRaw(Callback):
    def __init__(self) -> None:
        self.raw: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.raw.append(pl_module.w.detach().clone())


TARGETS = [torch.tensor([1.0, -2.0, 3.0]) * (k + 1) for k in range(4)]  # 4 steps an epoch


def fit(tmp_path, epochs: int, ckpt_path=None):
    model, record = Toy(), RecordRaw()
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[record, ParameterEMA(DECAY), ModelCheckpoint(tmp_path, save_last=True)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    data = DataLoader(TARGETS, batch_size=None)
    trainer.fit(model, data, DataLoader([torch.zeros(3)], batch_size=None), ckpt_path=ckpt_path)
    return model, record.raw


def hand_ema(raw: list[torch.Tensor]) -> list[torch.Tensor]:
    out = [raw[0]]
    for w in raw[1:]:
        out.append(DECAY * out[-1] + (1 - DECAY) * w)
    return out


def test_validation_and_the_final_model_see_the_moving_average(tmp_path):
    model, raw = fit(tmp_path, epochs=3)
    ema = hand_ema(raw)
    assert len(raw) == 12 and not torch.allclose(ema[-1], raw[-1])
    # each validation (end of epoch e) scored the average after that epoch's 4th step
    for epoch, seen in enumerate(model.seen):
        torch.testing.assert_close(seen, ema[4 * epoch + 3])
    torch.testing.assert_close(model.w.detach(), ema[-1])
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    torch.testing.assert_close(state["state_dict"]["w"], ema[-1])  # what was validated
    torch.testing.assert_close(state["ema_raw_parameters"]["w"], raw[-1])  # what trains on


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resumed_average_equals_the_uninterrupted_one(tmp_path):
    reference, _ = fit(tmp_path / "ref", epochs=3)
    fit(tmp_path / "cut", epochs=1)
    resumed, raw_after = fit(tmp_path / "cut", epochs=3, ckpt_path=tmp_path / "cut" / "last.ckpt")
    assert len(raw_after) == 8  # epochs 1 and 2 only
    torch.testing.assert_close(resumed.w.detach(), reference.w.detach())
    torch.testing.assert_close(resumed.seen[-1], reference.seen[-1])


def test_decay_outside_the_open_interval_is_refused():
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="ema decay"):
            ParameterEMA(bad)
