"""bench/sid_content_loss.py: residual k-means codeword sums against the points they code."""

from __future__ import annotations

import numpy as np
from conftest import load_bench


def _load():
    return load_bench("sid_content_loss")  # it imports its sibling cold_content


def test_residual_kmeans_reconstructs_and_refines():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    residual_kmeans = _load().residual_kmeans
    # as many codes as distinct points: one level reproduces every point
    few = x[:16]
    np.testing.assert_allclose(residual_kmeans(few, 1, 16), few, atol=1e-5)
    # each extra level codes what the previous left: the error shrinks
    errors = [np.linalg.norm(x - residual_kmeans(x, levels, 16)) for levels in (1, 2, 4)]
    assert errors[0] > errors[1] > errors[2] > 0
