"""One-stage dual-aligned semantic IDs, after DAS (Kuaishou, CIKM 2025).

Towers, all trained together in one optimisation:

* item semantic tower: frozen item features → :class:`ModalityFusion` → residual
  quantizer → ``s_i``, the sum of the item's codewords (straight-through);
* user semantic tower (dual quantization): the user's side information and the mean
  content of their training history → fusion → a second residual quantizer → ``s_u``;
* collaborative tower: ID embeddings propagated by LightGCN → ``e_u``, ``e_i``, each split
  into an interest factor (first ``dim - pop_dim`` columns) and a conformity factor.

Losses (each with a weight; 0 switches it off):

* ``rec``: BPR on the final score;
* ``quant``: the quantizers' commitment/codebook losses;
* ``align_dual``: InfoNCE ``s_u ↔ e_i^int`` and ``e_u^int ↔ s_i`` over observed pairs;
* ``align_self``: InfoNCE ``s_i ↔ e_i^int`` and ``s_u ↔ e_u^int``;
* ``cooc``: InfoNCE ``s_i ↔ s_j`` for items sharing a user, ``s_u ↔ s_v`` for users
  sharing an item (sampled from the training graph);
* ``debias``: the conformity factor regresses the standardised log popularity (item
  interaction count, user activity) and is kept orthogonal to the interest factor; only
  interest factors are aligned;
* ``reg``: L2 on the batch's ego embeddings.

Final representations (``semantic_combination: add``): user ``[e_u^int + γ s_u ; e_u^pop]``,
item ``[w_i e_i^int + γ s_i ; w_i e_i^pop]`` with ``w_i = 0`` for an item without
training interactions: a cold item is scored from its semantic ID alone, never from an ID
embedding. ``concat``: user ``[c_u ; γ s_u]``, item ``[c_i ; s_i]``, where ``c`` is
LightGCN over (free user embeddings, ``w_i`` ID embedding + the item's per-level code and
suffix embeddings) — the score is collaborative plus γ times semantic; the semantic half
of an item without training interactions is scaled by κ (``cold_semantic_weight``) when
scoring. With ``transition_dim`` both get a next-item block appended
(:mod:`recsys.models.transition`: the user's last items → the item, trained on each
pair's preceding items; ID-based, zeros for items without training interactions).

Variants: ``semantic_input: content`` quantizes the content vectors themselves (identity
towers: the codeword sums live in content space and, with ``codebook_update: grad``, are
trained by the recommendation loss); ``user_semantic: history`` scores a user by the
recency-weighted mean of their history's item semantic vectors; ``freeze_sids_epoch``
fixes the semantic IDs from that epoch on, after a balanced k-means refit (the towers
stop training; codes are assigned with the refitted codebooks). The settings, and which
shipped configs use them: ``docs/das-settings.md``.

The package: :mod:`~recsys.models.das.config` (settings), :mod:`~recsys.models.das.inputs`
(frozen input blocks, history means and pooling), :mod:`~recsys.models.das.towers` (the
semantic towers), :mod:`~recsys.models.das.vectors` (concat mode's representations),
:mod:`~recsys.models.das.losses` (the loss terms), :mod:`~recsys.models.das.model` (the
model) and :mod:`~recsys.models.das.export` (what serving reads). The model module, and
through it torch-geometric, is imported on first use of its names: the serving encoder
(:mod:`recsys.models.das_encoder`) uses the towers and input transforms without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from recsys.models.das.config import DASConfig, LossWeights
from recsys.models.das.inputs import (
    BlockTransform,
    fit_block_transforms,
    history_means,
    history_pooling,
    pca_blocks,
)
from recsys.models.das.towers import BlockConcat, InputTower, SemanticTower
from recsys.models.das.vectors import ConcatVectors

if TYPE_CHECKING:
    from recsys.models.das.model import DualAlignedSemanticIDs

_LAZY = {"DualAlignedSemanticIDs": "recsys.models.das.model"}

__all__ = [
    "BlockConcat",
    "BlockTransform",
    "ConcatVectors",
    "DASConfig",
    "DualAlignedSemanticIDs",
    "InputTower",
    "LossWeights",
    "SemanticTower",
    "fit_block_transforms",
    "history_means",
    "history_pooling",
    "pca_blocks",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
