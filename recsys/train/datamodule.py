"""Training batches: user–positive pairs with uniformly sampled negatives."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from recsys.config import StrictModel
from recsys.train.distributed import shard_batches


class SamplingConfig(StrictModel):
    batch_size: int = 2048
    negatives: Literal["sampled", "in_batch"] = "sampled"
    num_negatives: int = 1


class NegativeSampler:
    """Uniform negatives that are not among the user's training positives.

    Rejection sampling, vectorised: redraw only the collisions, a few rounds at most
    (a user who has nearly every item keeps a rare collision rather than looping).
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int) -> None:
        self.n_items = n_items
        self.keys = np.unique(users.astype(np.int64) * n_items + items)

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = (
            users[:, None] * self.n_items + items
            if items.ndim == 2
            else users * self.n_items + items
        )
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == keys

    def sample(self, users: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
        """users: ``(B,)`` → negatives ``(B, num)``, never a training positive of the user
        (a user who has every item keeps whatever was drawn)."""
        neg = rng.integers(0, self.n_items, size=(len(users), num))
        for _ in range(20):
            bad = self.is_positive(users, neg)
            if not bad.any():
                return neg
            neg[bad] = rng.integers(0, self.n_items, size=int(bad.sum()))
        # Dense users: draw the few remaining collisions from the user's complement.
        for row, col in zip(*np.nonzero(self.is_positive(users, neg)), strict=True):
            user = int(users[row])
            lo, hi = np.searchsorted(self.keys, [user * self.n_items, (user + 1) * self.n_items])
            complement = np.setdiff1d(
                np.arange(self.n_items), self.keys[lo:hi] - user * self.n_items, assume_unique=True
            )
            if len(complement):
                neg[row, col] = complement[rng.integers(0, len(complement))]
        return neg


class PairBatches(IterableDataset):
    """One epoch of shuffled training pairs, already batched (no per-sample overhead)."""

    def __init__(
        self,
        users: np.ndarray,
        items: np.ndarray,
        sampler: NegativeSampler,
        config: SamplingConfig,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.users, self.items, self.sampler, self.config, self.seed = (
            users,
            items,
            sampler,
            config,
            seed,
        )
        self.rank, self.world = rank, world  # this process's share (recsys.train.distributed)

    def __len__(self) -> int:
        return len(shard_batches(self._n_batches(), self.rank, self.world))

    def _n_batches(self) -> int:
        return -(-len(self.users) // self.config.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(self.users))
        bs = self.config.batch_size
        # Every process draws the same permutation and takes its own batches. One process:
        # the negatives continue the permutation's generator, as every earlier run drew
        # them; several: one generator per batch, so that a batch does not depend on which
        # process trains it.
        batch_seeds = rng.integers(0, 2**63 - 1, size=self._n_batches()) if self.world > 1 else None
        for number in shard_batches(self._n_batches(), self.rank, self.world):
            idx = order[number * bs : (number + 1) * bs]
            if batch_seeds is not None:
                rng = np.random.default_rng(batch_seeds[number])
            users = self.users[idx]
            batch = {
                "users": torch.from_numpy(users),
                "pos_items": torch.from_numpy(self.items[idx]),
            }
            if self.config.negatives == "sampled":
                neg = self.sampler.sample(users, self.config.num_negatives, rng)
                batch["neg_items"] = torch.from_numpy(neg)
            yield batch


class _Single(IterableDataset):
    """The validation loop's only 'batch': ranking evaluation runs on whole embeddings."""

    def __iter__(self):
        yield torch.zeros(1)


class InteractionDataModule(L.LightningDataModule):
    """Re-seeds each epoch from (seed, epoch), so a resumed run draws the same batches."""

    def __init__(
        self, users: np.ndarray, items: np.ndarray, n_items: int, config: SamplingConfig, seed: int
    ) -> None:
        super().__init__()
        self.users = users.astype(np.int64)
        self.items = items.astype(np.int64)
        self.config = config
        self.seed = seed
        self.sampler = NegativeSampler(self.users, self.items, n_items)

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        dataset = PairBatches(
            self.users, self.items, self.sampler, self.config, self.seed * 100003 + epoch,
            rank, world,
        )  # fmt: skip
        return DataLoader(dataset, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Single(), batch_size=None)
