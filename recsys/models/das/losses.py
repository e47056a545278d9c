"""DAS's loss terms as functions of the batch's vectors (see the package docstring for
what each term asks). The model gathers the vectors; these compute the terms, in the
order the model has always computed them (the order of the autograd graph's nodes fixes
how gradients are summed, and the co-occurrence term draws random numbers)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from recsys.models.das.config import LossWeights
from recsys.models.losses import info_nce, orthogonality_loss

Contrastive = Callable[[Tensor, Tensor], Tensor]


def recommendation_loss(user: list[Tensor], pos: list[Tensor], neg: list[Tensor]) -> Tensor:
    """``rec``: BPR, mean ``-log σ(u·p − u·n)``, on vectors in matching parts ``(B, d_k)``
    (the scored rows are their concatenations): the margin ``u·(n − p)`` summed part by
    part, one product of each part's width instead of two (the step's widest products)
    and no concatenated rows."""
    margins = [(u * (n - p)).sum(-1) for u, p, n in zip(user, pos, neg, strict=True)]  # (B,)
    margin = margins[0]
    for part in margins[1:]:
        margin = margin + part
    return F.softplus(margin).mean()


def contrastive(temperature: float) -> Contrastive:
    """InfoNCE ``(anchors, positives)`` at ``temperature`` (in-batch negatives)."""

    def nce(a_: Tensor, p_: Tensor) -> Tensor:
        return info_nce(a_, p_, temperature)

    return nce


@dataclasses.dataclass
class AlignedPairs:
    """The batch's first ``align_batch_size`` pairs, which the alignment, co-occurrence
    and debias terms see (in-batch InfoNCE is quadratic in its size): ``index (A,)``
    their rows in the batch, ``users``/``items (A,)`` their entities, and the interest and
    conformity factors of their collaborative vectors."""

    index: Tensor
    user_interest: Tensor
    user_pop: Tensor
    item_interest: Tensor
    item_pop: Tensor
    users: Tensor
    items: Tensor


def aligned_pairs(
    users: Tensor, pos: Tensor, e_u: Tensor, e_p: Tensor, size: int, interest_dim: int
) -> AlignedPairs:
    """users, pos ``(B,)``, their collaborative vectors ``e_u``, ``e_p`` (at least the
    first ``size`` rows) → :class:`AlignedPairs` of the first ``size`` pairs."""
    a = torch.arange(min(len(users), size), device=users.device)
    d = interest_dim
    e_u_a = e_u[a]
    ui, up = e_u_a[:, :d], e_u_a[:, d:]
    e_p_a = e_p[a]
    ii, ip = e_p_a[:, :d], e_p_a[:, d:]
    return AlignedPairs(a, ui, up, ii, ip, users[a], pos[a])


def alignment_losses(
    nce: Contrastive, pairs: AlignedPairs, s_u: Tensor | None, s_pos: Tensor
) -> tuple[Tensor, Tensor]:
    """``(align_dual, align_self)``: ``s_u ↔ e_i^int`` + ``e_u^int ↔ s_i``, and
    ``s_i ↔ e_i^int`` + ``s_u ↔ e_u^int`` (the user terms only with a user semantic vector
    ``s_u``); ``s_u``, ``s_pos``: the pairs' semantic vectors in the interest space."""
    a = pairs.index
    ui, ii = pairs.user_interest, pairs.item_interest
    align_self = nce(s_pos[a], ii)
    if s_u is not None:
        align_dual = nce(s_u[a], ii) + nce(ui, s_pos[a])
        align_self = align_self + nce(s_u[a], ui)
    else:
        align_dual = nce(ui, s_pos[a])
    return align_dual, align_self


def cooc_loss(
    nce: Contrastive,
    pairs: AlignedPairs,
    s_pos: Tensor,
    s_items: Callable[[Tensor], Tensor],
    item_neighbors: Callable[[Tensor], Tensor],
    s_u: Tensor | None = None,
    s_users: Callable[[Tensor], Tensor] | None = None,
    user_neighbors: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``cooc``: ``s_i ↔ s_j`` for ``j``, an item of the pair's user (``item_neighbors``:
    users → a sampled training item of each; ``s_items``: items → semantic vectors), plus
    ``s_u ↔ s_v`` for ``v``, a user of the pair's item, when ``s_users`` is given."""
    a, uid, iid = pairs.index, pairs.users, pairs.items
    j = item_neighbors(uid)
    s_j = s_items(j)
    loss = nce(s_pos[a], s_j)
    if s_users is not None and s_u is not None:
        v = user_neighbors(iid)
        s_v = s_users(v)
        loss = loss + nce(s_u[a], s_v)
    return loss


def sample_neighbor(ptr: Tensor, nbrs: Tensor, rows: Tensor) -> Tensor:
    """A uniformly drawn neighbour of each row in the CSR lists ``(ptr, nbrs)`` (rows with
    none: themselves)."""
    start, deg = ptr[rows], ptr[rows + 1] - ptr[rows]
    offset = (torch.rand(rows.shape, device=rows.device) * deg.clamp(min=1)).long()
    picked = nbrs[(start + offset).clamp(max=max(len(nbrs) - 1, 0))]
    return torch.where(deg > 0, picked, rows)


def debias_losses(
    pop_head: Callable[[Tensor], Tensor],
    pairs: AlignedPairs,
    item_target: Tensor,
    user_target: Tensor,
    width: int,
) -> tuple[Tensor, Tensor]:
    """``(debias_pop, debias_orth)``: the conformity factors regress the standardised log
    popularity ``item_target (I,)``/``user_target (U,)`` through ``pop_head``; the
    conformity factor is kept orthogonal to the interest factor's leading ``width``
    columns (orthogonality needs equal widths)."""
    ui, up, ii, ip = pairs.user_interest, pairs.user_pop, pairs.item_interest, pairs.item_pop
    pred_i = pop_head(ip).squeeze(-1)
    pred_u = pop_head(up).squeeze(-1)
    pop = F.mse_loss(pred_i, item_target[pairs.items]) + F.mse_loss(
        pred_u, user_target[pairs.users]
    )
    k = width
    orth = orthogonality_loss(ii[:, :k], ip[:, :k]) + orthogonality_loss(ui[:, :k], up[:, :k])
    return pop, orth


def weighted_total(w: LossWeights, terms: dict[str, Tensor]) -> Tensor:
    """The optimised loss: each ``<name>_loss`` term times its weight."""
    return (
        w.rec * terms["rec_loss"]
        + w.quant * terms["quant_loss"]
        + w.align_dual * terms["align_dual_loss"]
        + w.align_self * terms["align_self_loss"]
        + w.cooc * terms["cooc_loss"]
        + w.debias_pop * terms["debias_pop_loss"]
        + w.debias_orth * terms["debias_orth_loss"]
        + w.reg * terms["reg_loss"]
    )
