"""Evaluate a finished run folder from its saved embeddings (no training code)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from recsys.artifacts import RunFolder
from recsys.data.splits import TEST, TRAIN, VALID
from recsys.eval.ranking import evaluate, per_user_metrics


def _protocol_matrices(run: RunFolder, split: str) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``truth, exclude`` of ``split``: what is relevant and what the protocol masks."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    truth = run.matrix(TEST if split == "test" else VALID)
    exclude = run.matrix(TRAIN, VALID) if split == "test" else run.matrix(TRAIN)
    return truth, exclude


def evaluate_scores(
    run: RunFolder,
    split: str,
    score: Callable[[torch.Tensor], torch.Tensor],
    ks: Sequence[int] = (5, 10, 20),
    batch_size: int = 1024,
) -> dict[str, float]:
    """Full-ranking metrics of ``split`` for ``score`` (user indices ``(B,)`` → ``(B,
    n_items)``) on this run's data, masking what the protocol masks."""
    truth, exclude = _protocol_matrices(run, split)
    return evaluate(
        score, truth, exclude, ks=ks, candidates=run.candidates(split), batch_size=batch_size
    )


def _saved_scores(run: RunFolder, vectors: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Scores from the user and item vectors the run saved for scoring ``vectors``."""
    if vectors not in ("valid", "test"):
        raise ValueError(f"vectors must be 'valid' or 'test', got {vectors!r}")
    user, item = (torch.from_numpy(a) for a in run.embeddings(vectors))
    return lambda u: user[u] @ item.T


def evaluate_run(
    run: RunFolder, split: str = "test", ks: Sequence[int] = (5, 10, 20), batch_size: int = 1024
) -> dict[str, float]:
    """Full-ranking metrics of ``split`` from the run's saved embeddings."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    return evaluate_scores(run, split, _saved_scores(run, split), ks, batch_size)


def per_user_run_metrics(
    run: RunFolder,
    split: str = "test",
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
    vectors: str | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-user values behind :func:`evaluate_run` (``users (N,)`` and ``(N,)`` arrays, as
    :func:`recsys.eval.ranking.per_user_metrics`), from the run's saved embeddings;
    ``vectors="valid"`` scores ``split`` with the vectors valid was scored with (test
    without the valid interactions in the users' history, and before a refit)."""
    truth, exclude = _protocol_matrices(run, split)  # checks split first
    score = _saved_scores(run, vectors or split)
    return per_user_metrics(score, truth, exclude, ks, run.candidates(split), batch_size)


HEADLINE = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "hr@10", "mrr", "coverage@20")


def metrics_table(
    rows: list[tuple[str, dict[str, float]]], columns: Sequence[str] = HEADLINE
) -> str:
    """A Markdown table: one row per (name, metrics)."""
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in rows:
        cells = [f"{metrics[c]:.4f}" if c in metrics else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
