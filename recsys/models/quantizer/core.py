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

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.models.quantizer.config import QuantizerConfig

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


def pairwise_sq_dists(x: Tensor, c: Tensor) -> Tensor:
    """Squared Euclidean distances (B, K) between rows of ``x`` (B, d) and ``c`` (K, d)."""
    d = (x * x).sum(1, keepdim=True) - 2.0 * (x @ c.t()) + (c * c).sum(1)[None, :]
    return d.clamp_min_(0.0)


def sinkhorn_assign(dists: Tensor, epsilon: float = 0.05, iters: int = 50) -> Tensor:
    """Balanced assignment of B items to K codes by entropic optimal transport.

    The distances are standardised (zero mean, unit std over the matrix) so that
    ``epsilon`` is scale free; Sinkhorn iterations (float64) then find the plan
    ``P = diag(u) exp(-d / epsilon) diag(v)`` with uniform item marginals (1/B) and uniform
    code marginals (1/K), and each item takes the code with the largest mass in its row.
    A pure function of ``dists``: deterministic, but it depends on which items are in the
    batch. Runs in the scaling domain (two mat-vecs per iteration) with each row shifted by
    its minimum; falls back to the log domain if that under/overflows.
    """
    b, k = dists.shape
    d = dists.detach().double()
    d = (d - d.mean()) / (d.std() + 1e-12) if d.numel() > 1 else d * 0.0
    logits = -(d - d.min(dim=1, keepdim=True).values) / epsilon  # <= 0, row max = 0
    kern = logits.exp()
    a, bm = 1.0 / b, 1.0 / k
    v = torch.ones(k, dtype=kern.dtype, device=kern.device)
    with torch.no_grad():
        for _ in range(iters):
            u = a / (kern @ v)
            v = bm / (kern.t() @ u)
        if bool(torch.isfinite(v).all()) and bool(torch.isfinite(u).all()):
            return (kern * v[None, :]).argmax(dim=1)
        log_p = logits
        for _ in range(iters):
            log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True) + math.log(a)
            log_p = log_p - torch.logsumexp(log_p, dim=0, keepdim=True) + math.log(bm)
        return log_p.argmax(dim=1)


def kmeans_centroids(x: Tensor, k: int, iters: int, seed: int) -> Tensor:
    """``k`` centroids of ``x`` (N, d): seeded k-means++ seeding, then ``faiss.Kmeans``.

    k-means++ (D^2 sampling) makes a merged-clusters local optimum unlikely, which plain
    random seeding often hits on well-separated data. With fewer than ``k`` points the
    points are repeated with a small seeded jitter (dead-code restarts re-seed them later).
    Returned on x's device.
    """
    n, dim = x.shape
    gen = torch.Generator().manual_seed(seed)
    xc = x.detach().to("cpu", torch.float32)
    if n < k:
        base = xc[torch.arange(k) % n]
        scale = float(xc.std()) if n > 1 else 1.0
        jitter = torch.randn(k, dim, generator=gen) * 1e-3 * (scale or 1.0)
        jitter[:n] = 0.0
        return (base + jitter).to(x.device)
    init = _kmeanspp(xc, k, gen)
    xs = np.ascontiguousarray(xc.numpy())
    # min_points_per_centroid only decides when FAISS warns (fewer than 39 points a code,
    # normal for small catalogues); the fit is the same.
    km = faiss.Kmeans(dim, k, niter=iters, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(xs, init_centroids=np.ascontiguousarray(init.numpy()))
    cent = torch.from_numpy(np.array(km.centroids, dtype=np.float32).reshape(k, dim))
    return cent.to(x.device)


def _kmeanspp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: each new seed is drawn with probability proportional to its
    squared distance to the nearest seed so far (uniformly once all distances are 0)."""
    n = x.shape[0]
    sq = (x.double() ** 2).sum(1)
    idx = torch.empty(k, dtype=torch.long)
    idx[0] = torch.randint(n, (1,), generator=gen)
    d2 = (sq - 2.0 * (x @ x[idx[0]]).double() + sq[idx[0]]).clamp_min(0.0)
    for i in range(1, k):
        total = float(d2.sum())
        if total > 0.0:
            idx[i] = torch.multinomial(d2 / total, 1, generator=gen)
        else:
            idx[i] = torch.randint(n, (1,), generator=gen)
        new = (sq - 2.0 * (x @ x[idx[i]]).double() + sq[idx[i]]).clamp_min(0.0)
        d2 = torch.minimum(d2, new)
    return x[idx].clone()


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
        z = _subsample(z, self.kmeans_max_points, self.seed)
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

    @torch.no_grad()
    def revive_unused(self, z: Tensor, rounds: int = 8) -> int:
        """A dataset-wide dead-code reset: level by level, every code that no row of ``z``
        (N, d) chooses (argmin, as :meth:`encode`) is re-seeded onto the residual of a row
        with a large quantisation error at that level, so that the row chooses it from
        then on. Rows are taken largest error first, at most one per code a round and
        only from codes that keep at least one other row (moving a code's only row would
        just kill that code). A re-seeded code may draw other rows too, so this repeats
        up to ``rounds`` times per level. EMA state and dead-code counters of re-seeded
        codes restart as in a training-time restart. Returns how many codes were
        re-seeded (0: every code is used or no row can be spared; nothing changes)."""
        return len(self._reset_dead(z, rounds, self._pin_rows))

    def _pin_rows(
        self,
        level: int,
        prefix: Tensor,
        codes: Tensor,
        errors: Tensor,
        residual: Tensor,
        dead: list[int],
    ) -> list[tuple[int, int]]:
        """:meth:`revive_unused`'s round: dead codes onto the largest-error rows of codes
        that keep another row → ``[(dead, source)]``."""
        counts = torch.bincount(codes, minlength=self.codebook_size).tolist()
        sources: list[int] = []
        # one row per code a round: rows of one code are often near-duplicates,
        # which would split one re-seeded code between them and leave the other dead
        spared: set[int] = set()
        for row in torch.argsort(errors, descending=True, stable=True).tolist():
            code = int(codes[row])
            if counts[code] >= 2 and code not in spared:
                spared.add(code)
                sources.append(row)
                if len(sources) == len(dead):
                    break
        if not sources:
            return []
        targets = dead[: len(sources)]
        rows = torch.tensor(sources, device=residual.device)
        self._reseed(level, torch.tensor(targets, device=residual.device), residual[rows])
        return list(zip(targets, codes[rows].tolist(), strict=True))

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
        """A dataset-wide dead-code reset that splits live codes instead of pinning dead
        ones onto single rows (:meth:`revive_unused`). Level by level, each code that no
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
            halves = _two_means(rows, iters)
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
        z = _subsample(self._check_input(z).detach(), self.kmeans_max_points, self.seed)
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
    def forward(
        self, z: Tensor, *, balanced: bool | None = None, assign_from: Tensor | None = None
    ) -> QuantizerOutput:
        """Quantize ``z`` (B, d).

        ``balanced``: Sinkhorn assignment at the last level; defaults to
        ``self.training and self.sinkhorn_last_level``.

        ``assign_from`` ``(B, d)``: choose the codes (and feed the EMA update, dead-code
        restarts and the codebook loss) from these vectors instead of ``z`` — e.g. the
        dropout-free output of the network that produced ``z``, so that training assigns
        each row the code that evaluation will; ``z`` still gets the commitment loss and
        the straight-through gradient. None: from ``z`` itself.
        """
        z = self._check_input(z)
        if assign_from is not None and assign_from.shape != z.shape:
            raise ValueError(
                f"assign_from must have z's shape {tuple(z.shape)}, got {tuple(assign_from.shape)}"
            )
        if not bool(self.initialized):
            if not self.training:
                raise RuntimeError(
                    "ResidualQuantizer is not initialised: call "
                    "init_codebooks(z) or run a training-mode forward first"
                )
            self.init_codebooks(z if assign_from is None else assign_from.detach())
        if balanced is None:
            balanced = self.training and self.sinkhorn_last_level
        residual = z
        # the residual the codes are chosen from: z's own unless assign_from is given
        target = None if assign_from is None else assign_from.detach()
        q_sum = torch.zeros_like(z)
        commitment = z.new_zeros(())
        codebook_loss = z.new_zeros(())
        codes, inputs, errors, norms = [], [], [], []
        codewords = torch.zeros_like(z)
        for level in range(self.levels):
            book = self.codebooks[level]
            chosen_from = (residual if target is None else target).detach()
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
            if target is not None:
                target = target - e.detach()
            err = (residual if target is None else target).detach().pow(2).sum(1)
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
    def encode(self, z: Tensor, *, balanced: bool = False) -> Tensor:
        """Codes (B, L) without any state update, whatever the module's mode."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(z, balanced=balanced).codes
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


def _two_means(rows: Tensor, iters: int) -> Tensor | None:
    """2-means of ``rows`` (M, d) from their mean and the row farthest from it →
    centroids (2, d), the first the larger half's; None when no split leaves both halves
    non-empty (fewer than two distinct rows)."""
    mean = rows.mean(0)
    cent = torch.stack([mean, rows[(rows - mean).pow(2).sum(1).argmax()]])
    for step in range(iters + 1):  # iters updates, each after an assignment, and a last one
        side = pairwise_sq_dists(rows, cent).argmin(1)
        sizes = torch.bincount(side, minlength=2)
        if bool((sizes == 0).any()):
            return None
        if step < iters:
            cent = torch.stack([rows[side == 0].mean(0), rows[side == 1].mean(0)])
    return cent if sizes[0] >= sizes[1] else cent.flip(0)


def _subsample(x: Tensor, max_points: int, seed: int) -> Tensor:
    if x.shape[0] <= max_points:
        return x
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=gen)[:max_points].sort().values
    return x[idx.to(x.device)]
