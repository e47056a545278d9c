"""How DAS combines its collaborative and semantic sides (``semantic_combination``),
chosen once when the model is built:

* :class:`AddCombination` (``add``): the semantic embedding is added to the
  collaborative interest factor, ``[e^int + γ s ; e^pop]`` (a warm item's ``e`` weighted
  by ``item_id_weight``, a cold item's zero) after LightGCN's propagation;
* :class:`ConcatCombination` (``concat``): ``[collaborative ; γ·semantic]`` for users and
  ``[collaborative ; semantic]`` for items (:class:`~recsys.models.das.vectors.ConcatVectors`),
  then the next-item transition block.

Each gives the model's scored vectors (before the popularity prior) and a training
batch's recommendation, quantization and regularisation terms with the vectors that the
alignment terms read (:class:`BatchVectors`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from recsys.models.base import rows
from recsys.models.losses import l2_penalty
from recsys.models.transition import transition_rows, with_transition

if TYPE_CHECKING:
    from recsys.models.das.model import DualAlignedSemanticIDs


@dataclasses.dataclass
class BatchVectors:
    """A training batch's loss terms so far (``quant_loss``, ``rec_loss``, ``reg_loss``)
    and what the alignment terms read: ``e_u``, ``e_p`` the collaborative vectors of the
    batch's users and positives, ``s_u``, ``s_pos`` their semantic vectors in the interest
    space (at least the first ``align_batch_size`` pairs'; ``s_u`` None without a user
    semantic vector), ``s_items``: item indices → their semantic vectors."""

    terms: dict[str, Tensor]
    e_u: Tensor
    e_p: Tensor
    s_u: Tensor | None
    s_pos: Tensor
    s_items: Callable[[Tensor], Tensor]


class Combination(Protocol):
    def embeddings(self, model: DualAlignedSemanticIDs) -> tuple[Tensor, Tensor, Tensor]:
        """``(users (U, D'), items (I, D'), the items' semantic vectors (I, d))``."""
        ...

    def batch(self, model: DualAlignedSemanticIDs, batch: dict[str, Tensor]) -> BatchVectors:
        """One training batch's terms and vectors (see :class:`BatchVectors`)."""
        ...


class AddCombination:
    """``add``: ``[e^int + γ s ; e^pop]``."""

    @staticmethod
    def final(
        model: DualAlignedSemanticIDs, e: Tensor, s: Tensor | None, warm: Tensor | None
    ) -> Tensor:
        """Final rows from collaborative ``e (N, D)``, semantic ``s (N, d_int)`` (or None)
        and the rows' ID weights ``warm (N,)`` (None: 1)."""
        d = model.config.interest_dim
        interest, pop = e[:, :d], e[:, d:]
        if warm is not None:
            interest, pop = interest * warm[:, None], pop * warm[:, None]
        if s is not None:
            interest = interest + model.config.semantic_weight * s
        return torch.cat([interest, pop], dim=1)

    def embeddings(self, model: DualAlignedSemanticIDs) -> tuple[Tensor, Tensor, Tensor]:
        s_i = model.item_tower(None).quantized
        s_u = model.user_tower(None).quantized if model.user_tower is not None else None
        e_u, e_i = model.propagation(model.user.weight, model.item.weight)
        users = self.final(model, e_u, s_u, None)
        items = self.final(model, e_i, s_i, model.warm)
        return users, items, s_i

    def batch(self, model: DualAlignedSemanticIDs, batch: dict[str, Tensor]) -> BatchVectors:
        users, pos = batch["users"], batch["pos_items"]
        neg = batch["neg_items"][:, 0]
        s_u = None
        e_u_all, e_i_all = model.propagation(model.user.weight, model.item.weight)
        e_u, e_p, e_n = e_u_all[users], e_i_all[pos], e_i_all[neg]
        # One tower pass over the batch's distinct items (and users): one EMA update.
        items, inverse = torch.unique(torch.cat([pos, neg]), return_inverse=True)
        item_out = model.item_tower(items)
        s_items = item_out.quantized
        s_pos, s_neg = s_items[inverse[: len(pos)]], s_items[inverse[len(pos) :]]
        terms = {"quant_loss": item_out.loss}
        if model.user_tower is not None:
            uniq_u, inv_u = torch.unique(users, return_inverse=True)
            user_out = model.user_tower(uniq_u)
            s_u = user_out.quantized[inv_u]
            terms["quant_loss"] = terms["quant_loss"] + user_out.loss
        u_final = self.final(model, e_u, s_u, None)
        p_final = self.final(model, e_p, s_pos, model.warm[pos])
        n_final = self.final(model, e_n, s_neg, model.warm[neg])
        terms["rec_loss"] = model._rec_loss([u_final], [p_final], [n_final], pos, neg)
        terms["reg_loss"] = l2_penalty(
            model.user.weight[users], model.item.weight[pos], model.item.weight[neg]
        )
        return BatchVectors(
            terms, e_u, e_p, s_u, s_pos, lambda j: model.item_tower(j).quantized
        )


def batch_user_rows(users: Tensor) -> tuple[Tensor, Tensor]:
    """``users (B,)`` → their ascending distinct indices ``(n,)`` and each pair's position
    among them ``(B,)``: the rows of a training step's user tables."""
    return torch.unique(users, return_inverse=True)


class ConcatCombination:
    """``concat``: ``[collaborative ; γ·semantic]`` · ``[collaborative ; semantic]``, then
    the transition block."""

    def embeddings(self, model: DualAlignedSemanticIDs) -> tuple[Tensor, Tensor, Tensor]:
        scored = model.user_tower is not None and not model.pool_history
        user_out = model.user_tower(None) if scored else None  # else unused here
        item_out = model.item_tower(None)
        vectors = model._concat_vectors(item_out, user_out)
        users, items = vectors.users, vectors.items
        d = model.config.dim
        items = torch.cat([items[:, :d], items[:, d:] * model.item_semantic_scale[:, None]], 1)
        users, items = with_transition(model.transition, users, items)
        return users, items, item_out.quantized

    def batch(self, model: DualAlignedSemanticIDs, batch: dict[str, Tensor]) -> BatchVectors:
        cfg = model.config
        users, pos = batch["users"], batch["pos_items"]
        neg = batch["neg_items"][:, 0]
        s_u = None
        sampled = cfg.fanouts is not None
        # The user tables hold the batch's distinct users only (row ``at`` of each pair):
        # their history pools cost a fraction of every user's.
        distinct, at = batch_user_rows(users)
        # Sampled propagation: the item tables hold the step's items only (row pos_at ...)
        items, pos_at, neg_at, drawn_pool = None, pos, neg, None
        if sampled:
            items, pos_at, neg_at, drawn_pool = model.batch_items(distinct, pos, neg)
        # The item tower over all rows (the propagation needs every item's codes), or
        # over the step's items when the propagation is sampled.
        item_out = model.item_tower(items)
        # The semantic vectors in the interest space are used by the alignment terms
        # only, which see the batch's first pairs (_aux_losses): projected there only.
        aligned = users[: cfg.align_batch_size]
        user_out, batch_users_only = None, False
        if model.user_tower is not None:
            # With the users' semantic side pooled from their histories, the user tower
            # only aligns: once frozen (or on sampled steps), it encodes just those users.
            frozen_or_sampled = bool(model.user_tower.frozen) or sampled
            batch_users_only = model.pool_history and frozen_or_sampled
            user_out = model.user_tower(aligned if batch_users_only else None)
        user_side = None if batch_users_only else user_out
        vectors = model._concat_vectors(item_out, user_side, distinct, items, drawn_pool)
        ego = vectors.item_ego
        # positives and negatives gathered together (one scatter per table backward),
        # and kept in parts: the scores sum the parts' products, no concatenated rows
        pair_items = torch.cat([pos_at, neg_at])  # (2B,)
        c_pos, c_neg = rows(vectors.collab_items, pair_items).split(len(pos))  # (B, D) each
        sem_pos, sem_neg = rows(vectors.semantic_items, pair_items).split(len(pos))  # (B, d_s)
        if cfg.history_leave_target_out:
            c_user, sem_user = model._leave_target_out(vectors, users, pos, (c_pos, sem_pos), at)
        else:
            c_user, sem_user = rows(vectors.collab_users, at), rows(vectors.semantic_users, at)
        e_u, e_p = c_user, c_pos  # the alignment terms read the first pairs of these

        def s_items(index: Tensor) -> Tensor:  # projected only where it is needed
            if sampled:  # the tower's rows of these items (it encoded the step's only)
                return model.align_item(model.item_tower(index).quantized)
            return model.align_item(rows(item_out.quantized, index))

        s_pos = s_items(pos[: len(aligned)])
        terms: dict[str, Tensor] = {"quant_loss": item_out.loss}
        if user_out is not None:
            s_user = user_out.quantized
            s_u = model.align_user(s_user if batch_users_only else rows(s_user, aligned))
            terms["quant_loss"] = terms["quant_loss"] + user_out.loss
        user_parts, pos_parts, neg_parts = [c_user, sem_user], [c_pos, sem_pos], [c_neg, sem_neg]
        reg: list[Tensor] = []
        if model.transition is not None:  # the pair's preceding items → its item
            t_user, t_pos, t_neg = transition_rows(model.transition, batch, neg)
            user_parts.append(t_user)
            pos_parts.append(t_pos)
            neg_parts.append(t_neg)
            reg = [t_user, t_pos, t_neg]
        terms["rec_loss"] = model._rec_loss(user_parts, pos_parts, neg_parts, pos, neg)
        user_rows = rows(model.user.weight, users, cfg.sparse_updates)
        terms["reg_loss"] = l2_penalty(user_rows, *rows(ego, pair_items).split(len(pos)), *reg)
        return BatchVectors(terms, e_u, e_p, s_u, s_pos, s_items)
