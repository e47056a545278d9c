"""The Lightning wrapper: optimisation of any :class:`Recommender`, ranking validation."""

from __future__ import annotations

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch

from recsys.eval.ranking import evaluate
from recsys.models.base import Recommender, dot_scores
from recsys.train.distributed import declare_sparse_tables, skip_constant_buffers
from recsys.train.ema import ParameterEMA
from recsys.train.optim import adam_for


class RecommenderModule(L.LightningModule):
    def __init__(
        self,
        model: Recommender,
        lr: float,
        weight_decay: float,
        valid_truth: sp.csr_matrix | None,
        valid_exclude: sp.csr_matrix | None,
        candidates: np.ndarray | None,
        ks: tuple[int, ...],
        eval_batch_size: int,
        monitor: str = "ndcg@10",
    ) -> None:
        super().__init__()
        self.monitor = monitor  # the valid metric that selects and stops
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay
        self.valid_truth, self.valid_exclude = valid_truth, valid_exclude
        self.candidates = candidates
        self.ks, self.eval_batch_size = ks, eval_batch_size
        skip_constant_buffers(self)  # several processes: copy only what training changes
        declare_sparse_tables(self, model.sparse_parameters())  # and all-reduce the rows read

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self.model.loss(batch)
        n = batch["users"].shape[0]
        for name, value in losses.items():
            self.log(
                f"train/{name}",
                value.detach(),
                on_step=False,
                on_epoch=True,
                batch_size=n,
                prog_bar=name == "loss",
                sync_dist=True,  # several processes: the mean over all of them
            )
        return losses["loss"]

    def on_train_epoch_start(self) -> None:
        self.model.on_train_epoch_start(self.current_epoch)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if not self.trainer.is_last_batch:
            return
        edited = self.model.after_epoch_steps()
        if edited:  # weight averaging must not blend re-set entries with their old values
            masks = {f"model.{name}": mask for name, mask in edited.items()}
            for callback in self.trainer.callbacks:
                if isinstance(callback, ParameterEMA):
                    callback.restart_entries(self, masks)

    def on_train_epoch_end(self) -> None:
        for name, value in self.model.epoch_metrics().items():
            self.log(f"train/{name}", float(value))

    @torch.no_grad()
    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        """The whole ranking evaluation, on the loader's single placeholder batch: inside
        the validation epoch, where a weight-averaging callback (``trainer.ema_decay``)
        has its averaged weights in place (Lightning calls callbacks' epoch-end hooks
        before the module's, so a swap back there would precede an epoch-end ranking)."""
        user, item = self.model.embeddings()
        metrics = evaluate(
            dot_scores(user, item),
            self.valid_truth,
            self.valid_exclude,
            ks=self.ks,
            candidates=self.candidates,
            batch_size=self.eval_batch_size,
            with_mrr=self.monitor == "mrr",  # a second pass over every score otherwise
        )
        for name, value in metrics.items():
            if name != "n_users":
                # every process ranks the same weights: the same value everywhere
                self.log(f"val/{name}", float(value), prog_bar=name == "ndcg@10", sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam_for(self, self.model.sparse_parameters(), self.lr, self.weight_decay)
