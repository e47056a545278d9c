"""Array helpers of ``ItemIndex.search``: FAISS's view of items and queries (the MIPS
reduction), candidate lists (padding, de-duplication, exclusion)."""

from __future__ import annotations

import numpy as np

from recsys.errors import RecsysError
from recsys.index.spec import IndexMeta


def _as_matrix(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise RecsysError(f"{what} must have shape (N, {dim}), got {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise RecsysError(f"{what} contain NaN or infinite values")
    return x


def _prepare_items(x: np.ndarray, meta: IndexMeta) -> np.ndarray:
    """Items as FAISS sees them: ``[x, sqrt(M² - |x|²), 0...]`` under the MIPS reduction."""
    if not meta.mips_to_l2:
        return x
    out = np.zeros((len(x), meta.index_dim), dtype=np.float32)
    out[:, : meta.dim] = x
    sq = np.float64(meta.max_norm) ** 2 - np.einsum("nd,nd->n", x, x, dtype=np.float64)
    out[:, meta.dim] = np.sqrt(np.maximum(sq, 0.0))
    return out


def _prepare_queries(q: np.ndarray, meta: IndexMeta) -> np.ndarray:
    if not meta.mips_to_l2:
        return q
    out = np.zeros((len(q), meta.index_dim), dtype=np.float32)
    out[:, : meta.dim] = q
    return out


def _pad(lists: list[np.ndarray]) -> np.ndarray:
    width = max(len(x) for x in lists)
    out = np.full((len(lists), width), -1, dtype=np.int64)
    for row, x in enumerate(lists):
        out[row, : len(x)] = x
    return out


def _dedupe_rows(cand: np.ndarray) -> np.ndarray:
    """Sort each row and blank (``-1``) repeated ids."""
    cand = np.sort(cand, axis=1)
    dup = np.zeros_like(cand, dtype=bool)
    dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
    cand[dup] = -1
    return cand


def _drop(cand: np.ndarray, exclude: list[np.ndarray], ntotal: int) -> np.ndarray:
    """Blank the ids of ``cand`` ``(B, C)`` that row ``b``'s ``exclude[b]`` lists."""
    lens = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=len(exclude))
    ex = np.concatenate([np.asarray(e, dtype=np.int64).ravel() for e in exclude])
    rows = np.repeat(np.arange(len(exclude), dtype=np.int64), lens)
    ok = (ex >= 0) & (ex < ntotal)  # out-of-range ids exclude nothing (and must not alias)
    rows, ex = rows[ok], ex[ok]
    stride = ntotal + 1
    keys = rows * stride + ex
    cand_keys = np.arange(len(cand), dtype=np.int64)[:, None] * stride + cand
    hit = np.isin(cand_keys, keys) & (cand >= 0)
    cand = cand.copy()
    cand[hit] = -1
    return cand
