"""Pure loss functions.  B = batch size, D = embedding dimension."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Bayesian personalised ranking: mean of ``-log σ(pos - neg)``.

    pos_scores: ``(B,)``; neg_scores: ``(B,)`` or ``(B, N)`` (each negative against its
    row's positive).
    """
    if neg_scores.dim() == 2:
        pos_scores = pos_scores.unsqueeze(1)
    return F.softplus(neg_scores - pos_scores).mean()


def l2_penalty(*embeddings: Tensor) -> Tensor:
    """``Σ ||e||² / 2`` over the given ``(B, D)`` tensors, averaged over the batch rows,
    the LightGCN paper's regulariser on the ego embeddings of a batch."""
    batch = embeddings[0].shape[0]
    return sum(e.pow(2).sum() for e in embeddings) / (2 * batch)


def in_batch_softmax_loss(user: Tensor, item: Tensor, temperature: float = 1.0) -> Tensor:
    """Sampled softmax with in-batch negatives: row b's positive is column b.

    user, item: ``(B, D)``.  Duplicated items in a batch are harmless but slightly
    penalise popular items, the usual in-batch bias.
    """
    logits = user @ item.T / temperature
    target = torch.arange(user.shape[0], device=user.device)
    return F.cross_entropy(logits, target)


def info_nce(
    anchor: Tensor,
    positive: Tensor,
    temperature: float = 0.2,
    anchor_ids: Tensor | None = None,
    positive_ids: Tensor | None = None,
) -> Tensor:
    """Symmetric-free InfoNCE with in-batch negatives on cosine similarity.

    anchor, positive: ``(B, D)``; row b of ``positive`` is the positive of row b of
    ``anchor``, every other row a negative.  Returns the mean of
    ``-log softmax(cos(a_b, p_·) / τ)[b]``.

    anchor_ids, positive_ids: optional ``(B,)`` entity ids of the rows.  Given, a column
    j ≠ b whose anchor or positive is the same entity as row b's is left out of row b's
    denominator: it is not a negative (the same item drawn twice, or another positive of
    the same user), and pushing it away would fight the positive term.
    """
    a = F.normalize(anchor, dim=-1)
    p = F.normalize(positive, dim=-1)
    logits = a @ p.T / temperature
    masks = [
        ids.unsqueeze(1) == ids.unsqueeze(0)
        for ids in (anchor_ids, positive_ids)
        if ids is not None
    ]
    if masks:
        false_negatives = torch.stack(masks).any(dim=0)
        false_negatives.fill_diagonal_(False)
        logits = logits.masked_fill(false_negatives, float("-inf"))
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def orthogonality_loss(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared cosine between matching rows of ``a`` and ``b`` (``(B, D)`` each):
    0 when every pair is orthogonal, 1 when every pair is parallel."""
    return F.cosine_similarity(a, b, dim=-1, eps=1e-8).pow(2).mean()
