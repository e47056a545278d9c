"""The differentiable residual quantizer shared by RQ-VAE, RQ-KMeans and joint models.

Codebooks are **EMA buffers by default** (``codebook_update="ema"``): the codebook of each
level follows an exponential moving average of the residuals assigned to its codes, with
Laplace smoothing of the counts. We prefer this because (1) it does not depend on the
optimiser of whatever model embeds the quantizer (its learning rate, weight decay or
gradient clipping would otherwise shrink or freeze the codebooks), (2) EMA codebooks
track a moving encoder much better and collapse less, and (3) dead-code restarts are a
plain overwrite of buffers, with no optimiser state to go stale. ``codebook_update="grad"``
keeps the original VQ-VAE recipe: the codebooks are an ``nn.Parameter`` trained by the
codebook loss ``||sg(r) - e||^2`` (reported in ``QuantizerOutput.codebook_loss``, which is
zero in EMA mode).

Losses follow TIGER's RQ-VAE: for each level ``l`` with residual ``r_l`` and chosen code
vector ``e_l``: ``codebook = sum_l ||sg(r_l) - e_l||^2`` and ``commitment = sum_l ||r_l -
sg(e_l)||^2``, each summed over dimensions and averaged over the batch (the same scale as
the reconstruction loss), with ``r_{l+1} = r_l - sg(e_l)``. The output is the straight-
through estimate ``z + sg(sum_l e_l - z)``: its gradient w.r.t. ``z`` is the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.models.quantizer.config import QuantizerConfig
from recsys.models.quantizer.kmeans import (
    kmeans_centroids,
    pairwise_sq_dists,
    sinkhorn_assign,
    subsample,
    two_means,
)

_EMA_EPS = 1e-5


@dataclass
class QuantizerOutput:
    """What :meth:`ResidualQuantizer.forward` returns."""

    quantized: Tensor  # (B, d), straight-through: gradient flows to the input unchanged
    codes: Tensor  # (B, L) int64
    loss: Tensor  # scalar: codebook_loss + beta * commitment_loss
    commitment_loss: Tensor  # scalar, sum over levels of ||r_l - sg(e_l)||^2 (batch mean)
    codebook_loss: Tensor  # scalar, sum over levels of ||sg(r_l) - e_l||^2; 0 in EMA mode
    residual_norms: Tensor  # (L,) mean L2 norm of the residual left after levels 1..l
    # (B, d) the same codeword sum as ``quantized`` in value, but differentiable with
    # respect to the codebooks (in "grad" mode) instead of the input
    codewords: Tensor | None = None


class ResidualQuantizer(nn.Module):
    """L levels of K code vectors each, quantizing ``z`` (B, d) residual by residual.

    Training-mode ``forward`` (``self.training``): on the first call, if
    :meth:`init_codebooks` was not called, every level is initialised by seeded k-means on
    that batch; then codes are chosen (argmin, or Sinkhorn at the last level when
    ``sinkhorn_last_level``), the EMA codebooks are updated, and codes unused for
    ``dead_code_steps`` consecutive training steps are re-seeded from the items of the batch
    with the largest quantisation error at that level. Eval mode changes nothing.

    ``dead_code_steps`` counts training steps, so pick it well above
    ``codebook_size / batch_size`` or rare-but-valid codes get re-seeded.
    """

    codebooks: Tensor
    ema_count: Tensor
    ema_sum: Tensor
    unused_steps: Tensor
    initialized: Tensor

    def __init__(
        self,
        dim: int,
        levels: int = 3,
        codebook_size: int = 256,
        *,
        beta: float = 0.25,
        codebook_update: Literal["ema", "grad"] = "ema",
        ema_decay: float = 0.99,
        dead_code_steps: int = 100,
        sinkhorn_last_level: bool = False,
        sinkhorn_iters: int = 50,
        sinkhorn_epsilon: float = 0.05,
        kmeans_iters: int = 25,
        kmeans_max_points: int = 65536,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if codebook_update not in ("ema", "grad"):
            raise ValueError(f"codebook_update must be 'ema' or 'grad', got {codebook_update!r}")
        self.dim, self.levels, self.codebook_size = dim, levels, codebook_size
        self.beta = beta
        self.codebook_update = codebook_update
        self.ema_decay = ema_decay
        self.dead_code_steps = dead_code_steps
        self.sinkhorn_last_level = sinkhorn_last_level
        self.sinkhorn_iters = sinkhorn_iters
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.kmeans_iters = kmeans_iters
        self.kmeans_max_points = kmeans_max_points
        self.seed = seed
        books = torch.zeros(levels, codebook_size, dim)
        if codebook_update == "grad":
            self.codebooks = nn.Parameter(books)
        else:
            self.register_buffer("codebooks", books)
            self.register_buffer("ema_count", torch.ones(levels, codebook_size))
            self.register_buffer("ema_sum", torch.zeros(levels, codebook_size, dim))
        self.register_buffer("unused_steps", torch.zeros(levels, codebook_size, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(False))

    @classmethod
    def from_config(cls, cfg: QuantizerConfig, dim: int) -> ResidualQuantizer:
        return cls(
            dim,
            cfg.levels,
            cfg.codebook_size,
            beta=cfg.beta,
            codebook_update=cfg.codebook_update,
            ema_decay=cfg.ema_decay,
            dead_code_steps=cfg.dead_code_steps,
            sinkhorn_last_level=cfg.sinkhorn_last_level,
            sinkhorn_iters=cfg.sinkhorn_iters,
            sinkhorn_epsilon=cfg.sinkhorn_epsilon,
            kmeans_iters=cfg.kmeans_iters,
            kmeans_max_points=cfg.kmeans_max_points,
            seed=cfg.seed,
        )

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, levels={self.levels}, codebook_size={self.codebook_size}, "
            f"update={self.codebook_update}, sinkhorn_last_level={self.sinkhorn_last_level}"
        )

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_codebooks(self, z: Tensor) -> None:
        """Residual k-means over ``z`` (N, d): level l clusters what levels < l left over.

        At most ``kmeans_max_points`` rows are used (a seeded random subset).
        """
        z = self._check_input(z).detach()
        z = subsample(z, self.kmeans_max_points, self.seed)
        residual = z.float()
        for level in range(self.levels):
            cent = kmeans_centroids(
                residual, self.codebook_size, self.kmeans_iters, self.seed + 1000 * level
            )
            self.set_codebook(level, cent.to(self.codebooks.dtype))
            codes = pairwise_sq_dists(residual, cent).argmin(1)
            residual = residual - cent[codes]
        self.unused_steps.zero_()
        self.initialized.fill_(True)

    def _reset_dead(
        self, z: Tensor, rounds: int, choose: Callable[..., list[tuple[int, int]]]
    ) -> list[tuple[int, int, int]]:
        """The level-by-level loop of the dataset-wide resets: up to ``rounds`` times per
        level, while some code of ``z`` (N, d)'s residuals is unused, ``choose(level,
        prefix, codes, errors, residual, dead)`` re-seeds dead codes and returns
        ``[(dead, source)]`` (``[]``: nothing more to do at this level). ``prefix``
        (N,): each row's codes above this level as compact group numbers. Returns
        ``(level, dead, source)`` for every code re-seeded, in order."""
        residual = self._check_input(z).detach().to(self.codebooks.dtype)
        prefix = torch.zeros(residual.shape[0], dtype=torch.long, device=residual.device)
        moves: list[tuple[int, int, int]] = []
        for level in range(self.levels):
            for _ in range(rounds):
                book = self.codebooks[level]
                codes = pairwise_sq_dists(residual, book).argmin(1)
                counts = torch.bincount(codes, minlength=self.codebook_size)
                dead = torch.nonzero(counts == 0).flatten().tolist()
                if not dead:
                    break
                errors = (residual - book[codes]).pow(2).sum(1)
                pairs = choose(level, prefix, codes, errors, residual, dead)
                if not pairs:
                    break
                moves.extend((level, t, s) for t, s in pairs)
            codes = pairwise_sq_dists(residual, self.codebooks[level]).argmin(1)
            residual = residual - self.codebooks[level][codes]
            # rows' ID prefixes so far, as compact group numbers (no overflow at depth)
            prefix = torch.unique(torch.stack([prefix, codes], 1), dim=0, return_inverse=True)[1]
        return moves

    @torch.no_grad()
    def split_unused(
        self, z: Tensor, rounds: int = 8, split_iters: int = 10
    ) -> list[tuple[int, int, int]]:
        """A dataset-wide dead-code reset that splits live codes. Level by level, each code that no
        row of ``z`` (N, d) chooses takes over part of a live code's rows:

        - at the last level, first from a collision: a row that shares its whole ID with
          another row (largest error first, one row per source code a round) gets the
          dead code, placed at its residual, so the two IDs come apart;
        - otherwise (and at every other level) the live code with the largest summed
          quantisation error over at least two distinct rows is split in two by 2-means
          on its rows' residuals (``split_iters`` iterations from its mean and its
          farthest row): one centroid stays with it, the other goes to the dead code.
          Unlike pinning a code on one row, the moved rows keep non-zero residuals, so
          deeper levels can still tell them apart.

        Repeats up to ``rounds`` times per level (a new centroid may draw other rows).
        EMA state and dead-code counters of changed codes restart as in a training-time
        restart. Returns ``(level, dead code, source code)`` for every code re-seeded,
        in order, so that tables indexed by the codes (learned code embeddings) can give
        the new code its source's row; ``[]``: nothing changed."""

        def choose(level, prefix, codes, errors, residual, dead):
            pairs = []
            if level == self.levels - 1:
                pairs = self._split_collisions(level, prefix, codes, errors, residual, dead)
            left = dead[len(pairs) :]
            if left:
                pairs += self._split_largest(level, codes, errors, residual, left, split_iters)
            return pairs

        return self._reset_dead(z, rounds, choose)

    def _split_collisions(
        self,
        level: int,
        prefix: Tensor,
        codes: Tensor,
        errors: Tensor,
        residual: Tensor,
        dead: list[int],
    ) -> list[tuple[int, int]]:
        """Pin dead codes onto rows whose whole ID another row has → ``[(dead, source)]``."""
        _, group, group_size = torch.unique(
            torch.stack([prefix, codes], 1), dim=0, return_inverse=True, return_counts=True
        )
        # candidates: rows of a collision with a non-zero error, largest error first
        rows = torch.nonzero((group_size[group] >= 2) & (errors > 0)).flatten()
        rows = rows[torch.argsort(errors[rows], descending=True, stable=True)]
        taken_groups: set[int] = set()
        sources: dict[int, int] = {}  # source code -> row moved off it
        for row in rows.tolist():
            g, code = int(group[row]), int(codes[row])
            if g in taken_groups or code in sources:
                continue
            taken_groups.add(g)
            sources[code] = row
            if len(sources) == len(dead):
                break
        pairs = list(zip(dead, sources, strict=False))
        for t, s in pairs:
            target = torch.tensor([t], device=residual.device)
            self._reseed(level, target, residual[sources[s]][None])
        return pairs

    def _split_largest(
        self,
        level: int,
        codes: Tensor,
        errors: Tensor,
        residual: Tensor,
        dead: list[int],
        iters: int,
    ) -> list[tuple[int, int]]:
        """Split the most distorted live codes by 2-means, one dead code each →
        ``[(dead, source)]``."""
        sse = torch.zeros(self.codebook_size, dtype=errors.dtype, device=errors.device)
        sse.index_add_(0, codes, errors)
        pairs = []
        for s in torch.argsort(sse, descending=True, stable=True).tolist():
            if len(pairs) == len(dead) or sse[s] <= 0:
                break
            rows = residual[codes == s]
            halves = two_means(rows, iters)
            if halves is None:  # identical rows: nothing to split
                continue
            t = dead[len(pairs)]
            self._reseed(level, torch.tensor([s, t], device=rows.device), halves)
            pairs.append((t, s))
        return pairs

    @torch.no_grad()
    def _reseed(self, level: int, targets: Tensor, vectors: Tensor) -> None:
        """Put ``vectors`` (M, d) at codes ``targets`` (M,) of one level, with EMA state at
        the level's mean count and the dead-code counters restarted."""
        self.codebooks[level, targets] = vectors
        if self.codebook_update == "ema":
            mean_count = self.ema_count[level].mean()
            self.ema_count[level, targets] = mean_count
            self.ema_sum[level, targets] = vectors * mean_count
        self.unused_steps[level, targets] = 0

    @torch.no_grad()
    def set_codebook(self, level: int, vectors: Tensor) -> None:
        """Overwrite the code vectors of one level (K, d), keeping the EMA state coherent."""
        if vectors.shape != (self.codebook_size, self.dim):
            raise ValueError(
                f"level {level} codebook must be {(self.codebook_size, self.dim)}, "
                f"got {tuple(vectors.shape)}"
            )
        self.codebooks[level].copy_(vectors)
        if self.codebook_update == "ema":
            self.ema_count[level].fill_(1.0)
            self.ema_sum[level].copy_(vectors)
        self.unused_steps[level].zero_()

    @torch.no_grad()
    def balance_last_level(self, z: Tensor, iters: int) -> None:
        """Balanced k-means refinement of the last level (used by RQ-KMeans).

        Alternates Sinkhorn assignment of the last-level residuals with centroid = mean of
        its assigned residuals (a code left empty keeps its vector).
        """
        z = subsample(self._check_input(z).detach(), self.kmeans_max_points, self.seed)
        residual = z.float()
        for level in range(self.levels - 1):
            book = self.codebooks[level].float()
            residual = residual - book[pairwise_sq_dists(residual, book).argmin(1)]
        last = self.levels - 1
        book = self.codebooks[last].float().clone()
        for _ in range(iters):
            codes = sinkhorn_assign(
                pairwise_sq_dists(residual, book), self.sinkhorn_epsilon, self.sinkhorn_iters
            )
            counts = torch.bincount(codes, minlength=self.codebook_size).float()
            sums = torch.zeros_like(book).index_add_(0, codes, residual)
            used = counts > 0
            book[used] = sums[used] / counts[used, None]
        self.set_codebook(last, book.to(self.codebooks.dtype))

    # ------------------------------------------------------------------ forward
    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z`` (B, d): nearest codes, or in training with
        ``sinkhorn_last_level`` a Sinkhorn (balanced) assignment at the last level."""
        z = self._check_input(z)
        if not bool(self.initialized):
            if not self.training:
                raise RuntimeError(
                    "ResidualQuantizer is not initialised: call "
                    "init_codebooks(z) or run a training-mode forward first"
                )
            self.init_codebooks(z)
        balanced = self.training and self.sinkhorn_last_level
        residual = z
        q_sum = torch.zeros_like(z)
        commitment = z.new_zeros(())
        codebook_loss = z.new_zeros(())
        codes, inputs, errors, norms = [], [], [], []
        codewords = torch.zeros_like(z)
        for level in range(self.levels):
            book = self.codebooks[level]
            chosen_from = residual.detach()
            with torch.no_grad():
                dists = pairwise_sq_dists(chosen_from, book.detach())
                if balanced and level == self.levels - 1:
                    c = sinkhorn_assign(dists, self.sinkhorn_epsilon, self.sinkhorn_iters)
                else:
                    c = dists.argmin(1)
            e = F.embedding(c, book)
            commitment = commitment + (residual - e.detach()).pow(2).sum(1).mean()
            if self.codebook_update == "grad":
                codebook_loss = codebook_loss + (chosen_from - e).pow(2).sum(1).mean()
            inputs.append(chosen_from)
            q_sum = q_sum + e.detach()
            codewords = codewords + e
            residual = residual - e.detach()
            err = residual.detach().pow(2).sum(1)
            errors.append(err)
            norms.append(err.sqrt().mean())
            codes.append(c)
        codes_t = torch.stack(codes, 1)
        if self.training:
            self._update(codes_t, inputs, errors)
        quantized = z + (q_sum - z).detach()
        return QuantizerOutput(
            quantized=quantized,
            codes=codes_t,
            loss=codebook_loss + self.beta * commitment,
            commitment_loss=commitment,
            codebook_loss=codebook_loss,
            residual_norms=torch.stack(norms),
            codewords=codewords,
        )

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        """Nearest codes (B, L) without any state update, whatever the module's mode."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(z).codes
        finally:
            self.train(was_training)

    def decode(self, codes: Tensor, n_levels: int | None = None) -> Tensor:
        """Sum of the code vectors of the first ``n_levels`` levels (all by default)."""
        n = self.levels if n_levels is None else n_levels
        if not 1 <= n <= self.levels:
            raise ValueError(f"n_levels must be in 1..{self.levels}, got {n}")
        if codes.dim() != 2 or codes.shape[1] < n:
            raise ValueError(f"codes must be (N, >= {n}), got {tuple(codes.shape)}")
        codes = codes.to(self.codebooks.device, torch.long)
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        out = self.codebooks.new_zeros(codes.shape[0], self.dim)
        for level in range(n):
            out = out + F.embedding(codes[:, level], self.codebooks[level])
        return out

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def _update(self, codes: Tensor, inputs: list[Tensor], errors: list[Tensor]) -> None:
        k = self.codebook_size
        for level in range(self.levels):
            c, r = codes[:, level], inputs[level].to(self.codebooks.dtype)
            counts = torch.bincount(c, minlength=k).to(r.dtype)
            if self.codebook_update == "ema":
                decay = self.ema_decay
                sums = torch.zeros(k, self.dim, dtype=r.dtype, device=r.device)
                sums.index_add_(0, c, r)
                self.ema_count[level].mul_(decay).add_(counts, alpha=1 - decay)
                self.ema_sum[level].mul_(decay).add_(sums, alpha=1 - decay)
                n = self.ema_count[level].sum()
                smoothed = (self.ema_count[level] + _EMA_EPS) / (n + k * _EMA_EPS) * n
                self.codebooks[level].copy_(self.ema_sum[level] / smoothed[:, None])
            if self.dead_code_steps <= 0:
                continue
            steps = self.unused_steps[level]
            steps.add_(1).masked_fill_(counts > 0, 0)
            dead = torch.nonzero(steps >= self.dead_code_steps).flatten()
            if dead.numel() == 0:
                continue
            order = torch.argsort(errors[level], descending=True, stable=True)
            m = min(dead.numel(), order.numel())
            self._reseed(level, dead[:m], r[order[:m]])

    def _check_input(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"expected input of shape (B, {self.dim}), got {tuple(z.shape)}")
        if z.shape[0] == 0:
            raise ValueError("cannot quantize an empty batch")
        return z
