"""k-means and Sinkhorn helpers of the residual quantizer (``core.py``): distances,
balanced (optimal-transport) assignment, seeded k-means++ / FAISS k-means, the 2-means
split of a code, and the seeded row subsample k-means fits on."""

from __future__ import annotations

import math

import faiss
import numpy as np
import torch
from torch import Tensor


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


def two_means(rows: Tensor, iters: int) -> Tensor | None:
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


def subsample(x: Tensor, max_points: int, seed: int) -> Tensor:
    """At most ``max_points`` rows of ``x``: a seeded random subset, in row order."""
    if x.shape[0] <= max_points:
        return x
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=gen)[:max_points].sort().values
    return x[idx.to(x.device)]
