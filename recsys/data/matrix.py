"""Sparse interaction matrices."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def binary_matrix(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Binary CSR matrix with a 1 at every (user, item) pair; duplicates count once."""
    m = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (np.asarray(users), np.asarray(items))), shape=shape
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m
