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
fixes the semantic IDs from that epoch on (the towers stop training; codes are assigned
with the codebooks of that moment), optionally after a balanced k-means refit.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from recsys.config import StrictModel
from recsys.models.base import Recommender, TrainingGraph, find_sorted, register_model, rows
from recsys.models.content import (
    content_item_matrix,
    popularity_gbdt,
    popularity_regressor,
    raw_feature_matrix,
)
from recsys.models.fusion import FusionConfig, ModalityFusion
from recsys.models.graph import fold_in_segment, sparse_matmul
from recsys.models.losses import (
    bpr_loss,
    in_batch_softmax_loss,
    info_nce,
    l2_penalty,
    orthogonality_loss,
)
from recsys.models.quantizer import (
    QuantizerConfig,
    ResidualQuantizer,
    assign_semantic_ids,
    codebook_stats,
)
from recsys.models.quantizer.core import QuantizerOutput, pairwise_sq_dists
from recsys.models.semantic import GraphPropagation, semantic_id_table, warm_mask
from recsys.models.transition import (
    TransitionFields,
    add_transition_segment,
    batch_with_transition,
    transition_block,
    transition_history,
    with_transition,
)


class LossWeights(StrictModel):
    rec: float = 1.0
    quant: float = 1.0
    align_dual: float = 0.1
    align_self: float = 0.1
    cooc: float = 0.05
    debias_pop: float = 0.1
    debias_orth: float = 0.1
    reg: float = 1e-5


class DASConfig(TransitionFields):
    kind: Literal["das"] = "das"
    dim: int = 64
    pop_dim: int = Field(default=16, ge=0, description="conformity-factor columns of dim")
    layers: int = 2
    semantic_weight: float = Field(default=1.0, description="γ in the final representation")
    learn_semantic_weight: bool = Field(
        default=False,
        description="concat mode: γ is a trained scalar (kept positive, starting at"
        " semantic_weight), so the recommendation loss sets how much the semantic score"
        " counts even when the codewords themselves do not train (codebook_update: ema)",
    )
    temperature: float = 0.2
    rec_loss: Literal["bpr", "softmax"] = Field(
        default="bpr",
        description="recommendation loss on the final score: bpr (one sampled negative per"
        " pair) or softmax (in-batch sampled softmax over the batch's positives, on the"
        " same dot products that retrieval ranks by, divided by rec_temperature)",
    )
    rec_temperature: float = Field(default=1.0, gt=0, description="softmax rec_loss: τ")
    align_batch_size: int = Field(default=256, ge=2, description="rows used by InfoNCE terms")
    align_mask_duplicates: bool = Field(
        default=False,
        description="InfoNCE terms leave out of a row's negatives the columns whose user or"
        " item is the row's own (a popular item drawn twice, a user's other positives)",
    )
    input_dim: int = Field(default=64, ge=1, description="PCA size of each frozen feature block")
    dual: bool = Field(default=True, description="user semantic tower and user quantizer")
    code_embeddings: bool = Field(
        default=True,
        description="add learned per-level code embeddings (indexed by the jointly trained"
        " codes) to the codeword sum, as the two-stage model represents items",
    )
    propagate_semantic: bool = Field(
        default=False,
        description="score with LightGCN propagation of the combined (collaborative +"
        " semantic) ego embeddings, so that semantic-ID embeddings are smoothed over the"
        " graph as in the two-stage model; False: the semantic part is added after"
        " propagation",
    )
    item_id_weight: float = Field(
        default=1.0,
        ge=0,
        description="weight of a warm item's collaborative (ID) embedding in its final"
        " representation; 0: items are scored from their semantic IDs alone and the ID"
        " embeddings only teach the alignment losses",
    )
    freeze_sids_epoch: int | None = Field(
        default=None,
        ge=0,
        description="epoch from which the semantic IDs (items and users) are frozen: until"
        " then quantization and alignment are learned jointly (one stage); from then on"
        " the towers stop moving and the embeddings indexed by the IDs (code embeddings,"
        " user/item ID embeddings) keep training on stable IDs. None: never frozen",
    )
    refit_at_freeze: bool = Field(
        default=False,
        description="at the freeze, re-fit each quantizer by residual k-means (balanced"
        " last level, as RQ-KMeans) on its tower's outputs, so that the frozen IDs use"
        " every code",
    )
    semantic_input: Literal["blocks", "content"] = Field(
        default="blocks",
        description="blocks: each frozen feature block PCA-reduced to input_dim, fused by"
        " an MLP, then quantized; content: the content vectors themselves (normalised"
        " modality blocks, as the content and two-stage models use them) are quantized,"
        " so the semantic embeddings are codeword sums in content space and a user's is"
        " the quantized recency-weighted mean content of their history (needs"
        " semantic_combination: concat; item codebooks trained by gradient when the"
        " quantizer's codebook_update is grad)",
    )
    semantic_combination: Literal["add", "concat"] = Field(
        default="add",
        description="add: the semantic embedding is added to the collaborative interest"
        " factor; concat: final vectors are [collaborative ; γ·semantic] for users and"
        " [collaborative ; semantic] for items, so the score is the collaborative dot"
        " product plus γ times the semantic one, and the collaborative item embedding"
        " is the LightGCN propagation of (ID embedding if warm, weighted by"
        " item_id_weight) + per-level code embeddings of the item's semantic ID",
    )
    user_semantic: Literal["sid", "history"] = Field(
        default="sid",
        description="concat mode, the user's semantic vector in the score: sid, the user"
        " tower's semantic-ID embedding; history, the recency-weighted mean of the"
        " semantic-ID embeddings of the items in the user's history (refreshed with the"
        " valid items when scoring test). The user tower still gives users their"
        " semantic IDs and is aligned either way",
    )
    user_history_weight: float = Field(
        default=0.0,
        ge=0,
        description="concat mode: β; a user's collaborative vector is their propagated ID"
        " embedding plus β times the recency-weighted mean (history_decay) of their"
        " history items' propagated collaborative vectors (FISM/SVD++-style, refreshed"
        " with the valid items when scoring test); 0: the ID embedding alone",
    )
    history_leave_target_out: bool = Field(
        default=False,
        description="concat mode, training: a pair's user vector pools the user's history"
        " without the pair's own item (FISM's leave-one-out: the other items keep their"
        " recency weights, renormalised), as scoring never has the held-out item in the"
        " history; False: the whole training history, the pair's item included. Needs a"
        " pooled history (user_semantic: history or user_history_weight > 0)",
    )
    cold_semantic_weight: float = Field(
        default=1.0,
        gt=0,
        description="concat mode: κ; in scoring (not in training) the semantic half of an"
        " item without training interactions (cold, or new at serving time) is scaled by"
        " κ, so its score is c_u·c_i + κγ·s_u·s_i. A cold item's collaborative half is only"
        " its code embeddings, learned on warm items, so its content (semantic) half may"
        " deserve more weight than a warm item's; choose κ on a split whose valid items"
        " are cold (cold-10)",
    )
    popularity_weight: float = Field(
        default=0.0,
        ge=0,
        description="λ; scoring adds λ·(the item's predicted popularity: standardised log"
        " training count, regressed on the items that have training interactions, as the"
        " content model's popularity term). The predictor is chosen by popularity_source;"
        " not used in training",
    )
    popularity_source: Literal["semantic", "content"] = Field(
        default="semantic",
        description="what predicts an item's popularity for popularity_weight: semantic,"
        " a ridge regression (α = 1) on its semantic vector (codeword sum), so that a"
        " cold or new item's prior comes from its semantic ID alone; content, the content"
        " model's gradient-boosted trees on the raw frozen feature blocks (a scalar prior"
        " from the item's own features, still no ID embedding)",
    )
    popularity_in_training: bool = Field(
        default=False,
        description="popularity_source content: add the same λ·(predicted popularity) to"
        " the scores the recommendation loss trains on, so that the semantic (and"
        " collaborative) parts learn what the prior leaves unexplained instead of"
        " popularity again; False: the prior enters at scoring only",
    )
    content_dim: int | None = Field(
        default=None,
        ge=1,
        description="semantic_input content: PCA the content vectors to this many"
        " dimensions first (keeps wide content, e.g. 1,021-d on Beauty, cheap to score)",
    )
    modality_weights: dict[str, float] = Field(
        default_factory=dict, description="semantic_input content: weight of each block"
    )
    history_decay: float = Field(
        default=0.9, gt=0, le=1, description="recency weight of the user's history content"
    )
    item_fusion: FusionConfig = FusionConfig(hidden_dim=128, dropout=0.1, modality_dropout=0.1)
    user_fusion: FusionConfig = FusionConfig(hidden_dim=128, dropout=0.1)
    revive_codes: bool = Field(
        default=False,
        description="after each epoch's last training step (before validation), re-seed"
        " every code that no row's dropout-free assignment uses onto the rows with the"
        " largest quantisation error (a dataset-wide dead-code reset, items and users), so"
        " that the IDs evaluated and saved use every code the rows allow; training-time"
        " restarts (dead_code_steps) only see codes unused by the perturbed batch rows",
    )
    revive_method: Literal["row", "split"] = Field(
        default="row",
        description="revive_codes: how a dead code is re-seeded. row: onto one row's residual"
        " (largest error first), which zeroes that row's deeper residuals; split: it takes"
        " half of the most distorted live code's rows (2-means on their residuals) and"
        " starts from that code's code embedding, and at the last level it first parts"
        " rows that share a whole ID",
    )
    codes_from_eval_fusion: bool = Field(
        default=False,
        description="semantic_input blocks: while training, choose each entity's codes (and"
        " update the codebooks, restart dead codes) from its fusion output without dropout,"
        " as evaluation and serving do, so that a row gets the same ID in both; the"
        " dropout-perturbed output still takes the commitment loss and the straight-through"
        " gradient. False: codes from the perturbed output (codes then fed only by"
        " perturbed rows go unused at evaluation: about a tenth of them on ml-100k cold-10)",
    )
    item_quantizer: QuantizerConfig = QuantizerConfig(
        levels=3, codebook_size=256, sinkhorn_last_level=False, dead_code_steps=200
    )
    user_quantizer: QuantizerConfig = QuantizerConfig(
        levels=3, codebook_size=256, sinkhorn_last_level=False, dead_code_steps=200
    )
    weights: LossWeights = LossWeights()

    @model_validator(mode="after")
    def _check(self) -> DASConfig:
        if not 0 <= self.pop_dim < self.dim:
            raise ValueError("pop_dim must be in [0, dim)")
        if self.semantic_input == "content" and self.semantic_combination != "concat":
            raise ValueError("semantic_input: content needs semantic_combination: concat")
        if self.learn_semantic_weight and (
            self.semantic_combination != "concat" or self.semantic_weight <= 0
        ):
            raise ValueError("learn_semantic_weight needs concat and semantic_weight > 0")
        if self.popularity_in_training and (
            self.popularity_source != "content" or self.popularity_weight <= 0
        ):
            raise ValueError(
                "popularity_in_training needs popularity_source: content and popularity_weight > 0"
            )
        if self.cold_semantic_weight != 1.0 and self.semantic_combination != "concat":
            raise ValueError("cold_semantic_weight needs semantic_combination: concat")
        for name in ("user_history_weight", "transition_dim"):
            if getattr(self, name) > 0 and self.semantic_combination != "concat":
                raise ValueError(f"{name} needs semantic_combination: concat")
        pooled = self.user_semantic == "history" or self.user_history_weight > 0
        if self.history_leave_target_out and not (self.semantic_combination == "concat" and pooled):
            raise ValueError(
                "history_leave_target_out needs semantic_combination: concat and a pooled"
                " history (user_semantic: history or user_history_weight > 0)"
            )
        if self.revive_method != "row" and not self.revive_codes:
            raise ValueError("revive_method needs revive_codes: true")
        if self.semantic_combination == "concat" and self.propagate_semantic:
            raise ValueError(
                "semantic_combination: concat propagates the code embeddings"
                " already; propagate_semantic must be false"
            )
        return self

    @property
    def interest_dim(self) -> int:
        return self.dim - self.pop_dim


@dataclasses.dataclass
class ConcatVectors:
    """concat mode's representations, kept in parts: a final user row is ``[collab_users ;
    semantic_users]`` (``(U, D)``, ``(U, d_s)``: γ-weighted), a final item row
    ``[collab_items ; semantic_items]``; ``item_ego (I, D)``: the layer-0 collaborative item
    rows; ``collab_history (U, D)``: each user's pooled history of propagated item rows
    (None without user_history_weight). Training gathers the batch's rows part by part
    (concatenating whole tables was ~7% of a Beauty step); scoring takes the whole tables."""

    collab_users: Tensor
    semantic_users: Tensor
    collab_items: Tensor
    semantic_items: Tensor
    item_ego: Tensor
    collab_history: Tensor | None

    @property
    def users(self) -> Tensor:
        return torch.cat([self.collab_users, self.semantic_users], 1)  # (U, D + d_s)

    @property
    def items(self) -> Tensor:
        return torch.cat([self.collab_items, self.semantic_items], 1)  # (I, D + d_s)

    def user_rows(self, index: Tensor) -> Tensor:
        return torch.cat([rows(self.collab_users, index), rows(self.semantic_users, index)], 1)

    def item_rows(self, index: Tensor) -> Tensor:
        return torch.cat([rows(self.collab_items, index), rows(self.semantic_items, index)], 1)


@dataclasses.dataclass
class BlockTransform:
    """A frozen block's input transform: ``((x - mean) @ components.T) / scale`` (PCA
    when ``components`` is not None, else ``x / scale``); absent rows become zeros."""

    scale: float
    mean: np.ndarray | None = None
    components: np.ndarray | None = None

    def __call__(self, matrix: np.ndarray, present: np.ndarray) -> np.ndarray:
        x = np.asarray(matrix, dtype=np.float32)
        if self.components is not None:
            x = ((x - self.mean) @ self.components.T).astype(np.float32)
        x = x / self.scale
        x[~np.asarray(present, dtype=bool)] = 0.0
        return x


def fit_block_transforms(
    features: dict[str, tuple[np.ndarray, np.ndarray]], dim: int, seed: int
) -> dict[str, BlockTransform]:
    """Each frozen block reduced to ≤ ``dim`` columns by PCA fit on its present rows, then
    scaled to unit mean norm: a frozen input transform that keeps the towers small."""
    from sklearn.decomposition import PCA

    out = {}
    for name, (matrix, present) in features.items():
        x = np.asarray(matrix, dtype=np.float32)
        present = np.asarray(present, dtype=bool)
        k = min(dim, x.shape[1], max(1, int(present.sum()) - 1))
        transform = BlockTransform(scale=1.0)
        if x.shape[1] > k and present.sum() > k:
            pca = PCA(n_components=k, random_state=seed).fit(x[present])
            transform = BlockTransform(1.0, pca.mean_.astype(np.float32), pca.components_)
        reduced = transform(x, present)
        scale = np.linalg.norm(reduced[present], axis=1).mean() if present.any() else 1.0
        transform.scale = max(float(scale), 1e-8)
        out[name] = transform
    return out


def pca_blocks(features: dict[str, tuple[np.ndarray, np.ndarray]], dim: int, seed: int):
    """``{name: (reduced (N, ≤dim), present)}`` with :func:`fit_block_transforms`."""
    transforms = fit_block_transforms(features, dim, seed)
    return {
        name: (transforms[name](matrix, present), np.asarray(present, dtype=bool))
        for name, (matrix, present) in features.items()
    }


def _recency_weights(graph: TrainingGraph, decay: float) -> np.ndarray:
    """``(E,)``: ``decay^k`` for each training pair, k its rank from the user's latest."""
    return decay ** graph.recency_rank().astype(np.float64)


def history_means(item_blocks, graph: TrainingGraph, decay: float = 1.0):
    """Per item modality, the recency-weighted mean (weight ``decay^k`` for the k-th most
    recent item) over each user's training items where present:
    ``{"hist_<m>": ((U, D_m), present (U,))}``."""
    weights = _recency_weights(graph, decay)
    out = {}
    for name, (x, present) in item_blocks.items():
        keep = present[graph.train_items]
        users, items, w = graph.train_users[keep], graph.train_items[keep], weights[keep]
        total = np.zeros((graph.n_users, x.shape[1]), dtype=np.float64)
        np.add.at(total, users, w[:, None] * x[items])
        mass = np.bincount(users, weights=w, minlength=graph.n_users)
        mean = total / np.maximum(mass, 1e-12)[:, None]
        out[f"hist_{name}"] = (mean.astype(np.float32), mass > 0)
    return out


def history_pooling(graph: TrainingGraph, decay: float) -> Tensor:
    """Sparse ``(U, I)``: row u holds the recency weights ``decay^k`` (k-th most recent
    training item) of u's items, normalised to sum to 1 (empty for users without any)."""
    weights = _recency_weights(graph, decay)
    mass = np.bincount(graph.train_users, weights=weights, minlength=graph.n_users)
    values = weights / mass[graph.train_users]
    index = np.stack([graph.train_users, graph.train_items])
    matrix = torch.sparse_coo_tensor(
        torch.as_tensor(index), torch.as_tensor(values, dtype=torch.float32),
        (graph.n_users, graph.n_items),
    )  # fmt: skip
    return matrix.coalesce()


class BlockConcat(nn.Module):
    """The identity "fusion": input blocks side by side, absent rows as zeros."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names

    def forward(self, inputs: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        parts = [inputs[n][0].float() * inputs[n][1].to(torch.float32)[:, None] for n in self.names]
        return torch.cat(parts, dim=1)


class SemanticTower(nn.Module):
    """Fusion → residual quantizer (→ + code embeddings): an entity's semantic side, from
    its frozen input blocks. Shared by training (``_Tower``) and serving (the DAS item
    encoder), so both compute ``s`` the same way.

    Once frozen (:meth:`_Tower.freeze`), codes are assigned with the codebooks as they
    were at the freeze (``frozen_books``), whatever the codebooks learn afterwards, and
    nothing upstream of the codes trains any more."""

    def __init__(
        self,
        dims: dict[str, int],
        fusion: FusionConfig | None,
        quantizer: QuantizerConfig,
        out_dim: int,
        code_embeddings: bool = False,
        codes_from_eval_fusion: bool = False,
    ):
        super().__init__()
        self.identity = fusion is None
        self.codes_from_eval_fusion = codes_from_eval_fusion
        if self.identity:  # quantize the input blocks themselves (content space)
            if out_dim != sum(dims.values()):
                raise ValueError(f"identity tower: out_dim {out_dim} != input dims {dims}")
            self.fusion = BlockConcat(list(dims))
        else:
            self.fusion = ModalityFusion(dims, fusion.model_copy(update={"output_dim": out_dim}))
        self.quantizer = ResidualQuantizer.from_config(quantizer, out_dim)
        self.code_emb = None
        if code_embeddings:  # learned per-level tables indexed by the (current) codes
            self.code_emb = nn.ModuleList(
                nn.Embedding(quantizer.codebook_size, out_dim) for _ in range(quantizer.levels)
            )
            for emb in self.code_emb:
                nn.init.zeros_(emb.weight)
        self.register_buffer("frozen", torch.tensor(False))
        self.register_buffer("frozen_books", torch.zeros_like(self.quantizer.codebooks.data))

    def embed(self, inputs: dict[str, tuple[Tensor, Tensor]]):
        """inputs ``{block: ((B, D_b), present (B,))}`` → QuantizerOutput; its
        ``quantized`` ``(B, d)`` is the straight-through codeword sum (an identity tower,
        which has nothing upstream to train: the codeword sum itself, differentiable
        with respect to "grad" codebooks), plus Σ_l code_emb_l[c_l] when enabled."""
        if bool(self.frozen):
            with torch.no_grad():
                return self.from_codes(self.assign(self.fusion(inputs)))
        z, clean = self.fusion(inputs), None
        if self.codes_from_eval_fusion and self.training and not self.identity:
            clean = self.eval_fusion(inputs)  # the codes evaluation will assign
        out = self.quantizer(z, assign_from=clean)
        if self.identity:
            out = dataclasses.replace(out, quantized=out.codewords)
        if self.code_emb is not None:
            extra = sum(emb(out.codes[:, level]) for level, emb in enumerate(self.code_emb))
            out = dataclasses.replace(out, quantized=out.quantized + extra)
        return out

    @torch.no_grad()
    def eval_fusion(self, inputs: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        """``(B, d)``: the fusion without its (modality) dropout, whatever the mode."""
        was = self.fusion.training
        self.fusion.eval()
        try:
            return self.fusion(inputs)
        finally:
            self.fusion.train(was)

    @torch.no_grad()
    def assign(self, z: Tensor) -> Tensor:
        """``(B, d)`` → codes ``(B, L)``: nearest codes, with the frozen codebooks once
        frozen."""
        if not bool(self.frozen):
            return self.quantizer.encode(z)
        codes, residual = [], z
        for book in self.frozen_books:
            c = pairwise_sq_dists(residual, book).argmin(1)
            codes.append(c)
            residual = residual - book[c]
        return torch.stack(codes, 1)

    def from_codes(self, codes: Tensor) -> QuantizerOutput:
        """A frozen tower's output for given codes: codeword sum (trains "grad"
        codebooks, if any) + code embeddings; no quantizer loss."""
        quantized = self.quantizer.decode(codes)
        if self.code_emb is not None:
            quantized = quantized + sum(
                emb(codes[:, level]) for level, emb in enumerate(self.code_emb)
            )
        zero = quantized.new_zeros(())
        return QuantizerOutput(quantized, codes, zero, zero, zero, quantized.new_zeros(0))


class _Tower(SemanticTower):
    """A :class:`SemanticTower` that holds its frozen inputs (as buffers)."""

    def __init__(
        self,
        blocks,
        fusion: FusionConfig | None,
        quantizer: QuantizerConfig,
        out_dim: int,
        code_embeddings: bool = False,
        codes_from_eval_fusion: bool = False,
    ):
        dims = {name: int(x.shape[1]) for name, (x, _) in blocks.items()}
        super().__init__(dims, fusion, quantizer, out_dim, code_embeddings, codes_from_eval_fusion)
        self.names = list(blocks)
        self._store_inputs(blocks)
        # k-means initialisation on every row (not just a first batch), so that the codes
        # are defined from the start, including for evaluation before any training step.
        self.quantizer.init_codebooks(self._fused_all())
        # Set by freeze(); a buffer, so that a checkpoint restores the frozen IDs exactly.
        n = len(blocks[self.names[0]][0])
        self.register_buffer("frozen_codes", torch.zeros(n, quantizer.levels, dtype=torch.long))

    def inputs(self, rows: Tensor | None) -> dict[str, tuple[Tensor, Tensor]]:
        out = {}
        for i, name in enumerate(self.names):
            x, p = getattr(self, f"x{i}"), getattr(self, f"p{i}")
            out[name] = (x, p) if rows is None else (x[rows], p[rows])
        return out

    def forward(self, rows: Tensor | None = None):
        """rows ``(B,)`` (None: all) → :meth:`SemanticTower.embed` of their inputs (once
        frozen: of their stored codes, which is the same and cheaper)."""
        if not bool(self.frozen):
            return self.embed(self.inputs(rows))
        return self.from_codes(self.frozen_codes if rows is None else self.frozen_codes[rows])

    def _store_inputs(self, blocks) -> None:
        for i, name in enumerate(self.names):
            if name in blocks:
                x, present = blocks[name]
                self.register_buffer(f"x{i}", torch.as_tensor(x))
                self.register_buffer(f"p{i}", torch.as_tensor(present))

    def _fused_all(self) -> Tensor:
        """``(N, d)``: the eval-mode fusion of every row (no dropout)."""
        return self.eval_fusion(self.inputs(None))

    @torch.no_grad()
    def revive_unused_codes(self, method: Literal["row", "split"] = "row") -> int:
        """A dataset-wide dead-code reset over every row (none once frozen) → how many
        codes were re-seeded. ``row``: :meth:`ResidualQuantizer.revive_unused`; ``split``:
        :meth:`ResidualQuantizer.split_unused`, each new code's embedding row starting as
        its source code's, so the rows it takes over keep their code embedding."""
        if bool(self.frozen):
            return 0
        if method == "row":
            return self.quantizer.revive_unused(self._fused_all())
        moves = self.quantizer.split_unused(self._fused_all())
        if self.code_emb is not None:
            for level, target, source in moves:
                weight = self.code_emb[level].weight
                weight[target] = weight[source]
        return len(moves)

    @torch.no_grad()
    def _all_codes(self) -> Tensor:
        return self.assign(self._fused_all())

    @torch.no_grad()
    def set_inputs(self, blocks) -> None:
        """Replace some input blocks ``{name: (x, present)}`` (a user's history at test
        time); frozen codes follow them, assigned by the frozen tower."""
        self._store_inputs(blocks)
        if bool(self.frozen):
            self.frozen_codes.copy_(self._all_codes())

    @torch.no_grad()
    def codes(self) -> Tensor:
        return self.frozen_codes.clone() if bool(self.frozen) else self._all_codes()

    @torch.no_grad()
    def freeze(self, refit: bool = False) -> None:
        """Fix the semantic IDs for good: from now on codes are assigned with the
        codebooks as they are now, and the fusion no longer trains.

        ``refit``: first re-fit the codebooks by residual k-means on the tower's current
        outputs over every row (balanced last level, as RQ-KMeans), so that the frozen
        IDs use every code the data allows; the code embeddings, indexed by the codes
        they replace, restart from zero."""
        if refit:
            z = self._fused_all()
            self.quantizer.init_codebooks(z)
            self.quantizer.balance_last_level(z, self.quantizer.kmeans_iters)
            if self.code_emb is not None:
                for emb in self.code_emb:
                    emb.weight.zero_()
        self.frozen_books.copy_(self.quantizer.codebooks)
        self.frozen.fill_(True)
        self.frozen_codes.copy_(self._all_codes())


def _csr(src: np.ndarray, dst: np.ndarray, n_src: int) -> tuple[Tensor, Tensor]:
    order = np.argsort(src, kind="stable")
    indptr = np.zeros(n_src + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n_src), out=indptr[1:])
    return torch.as_tensor(indptr), torch.as_tensor(dst[order].astype(np.int64))


def _append_column(vectors: Tensor, column: Tensor) -> Tensor:
    """``(N, D)``, ``(N,)`` → ``(N, D + 1)``, the column cast to the vectors' dtype/device."""
    return torch.cat([vectors, column.to(vectors)[:, None]], 1)


def _standardized_log(counts: np.ndarray) -> Tensor:
    x = np.log1p(counts.astype(np.float64))
    return torch.as_tensor((x - x.mean()) / max(x.std(), 1e-8), dtype=torch.float32)


@register_model("das", DASConfig)
class DualAlignedSemanticIDs(Recommender):
    needs_item_features = True
    needs_user_features = True

    def __init__(self, config: DASConfig, graph: TrainingGraph) -> None:
        super().__init__()
        if graph.item_features is None:
            raise ValueError("das needs item features")
        self.config = config
        self.n_users, self.n_items = graph.n_users, graph.n_items
        d_int = config.interest_dim
        self.concat = config.semantic_combination == "concat"
        content_space = config.semantic_input == "content"
        self._item_transforms: dict[str, BlockTransform] = {}
        if content_space:
            content = content_item_matrix(graph.item_features, config.modality_weights)
            present = np.ones(len(content), dtype=bool)
            if config.content_dim is not None and content.shape[1] > config.content_dim:
                from sklearn.decomposition import PCA

                pca = PCA(n_components=config.content_dim, random_state=0).fit(content)
                transform = BlockTransform(1.0, pca.mean_.astype(np.float32), pca.components_)
                self._item_transforms["content"] = transform
                content = transform(content, present)
            item_blocks = {"content": (content.astype(np.float32), present)}
        else:
            self._item_transforms = fit_block_transforms(
                dict(graph.item_features), config.input_dim, seed=0
            )
            item_blocks = {
                name: (self._item_transforms[name](matrix, present), np.asarray(present, bool))
                for name, (matrix, present) in graph.item_features.items()
            }
        self._item_blocks = item_blocks  # frozen inputs, kept to rebuild user histories
        self.features, self.features_config = graph.item_features, graph.features_config
        # The semantic side's width: the content's own in content space.
        sem_dim = item_blocks["content"][0].shape[1] if content_space else d_int
        tower_codes = config.code_embeddings and not self.concat
        self.item_tower = _Tower(
            item_blocks,
            None if content_space else config.item_fusion,
            config.item_quantizer,
            sem_dim,
            tower_codes,
            config.codes_from_eval_fusion,
        )
        self.user_tower = None
        if config.dual:
            user_blocks = history_means(item_blocks, graph, config.history_decay)
            if graph.user_features is not None and not content_space:
                user_blocks.update(pca_blocks({"side": graph.user_features}, config.input_dim, 0))
            self.user_tower = _Tower(
                user_blocks,
                None if content_space else config.user_fusion,
                config.user_quantizer,
                sem_dim,
                tower_codes,
                config.codes_from_eval_fusion,
            )
        self.pool_history = self.concat and config.user_semantic == "history"
        self.collab_history = self.concat and config.user_history_weight > 0
        # either side pooling the history: test scoring refreshes the pooling with valid
        self.history_pooled = self.pool_history or self.collab_history
        if self.history_pooled:
            self.register_buffer("history_pool", None, persistent=False)
            self.register_buffer("history_keys", None, persistent=False)
            self._set_history_pool(history_pooling(graph, config.history_decay))
        self.transition = transition_block(  # concat only (validated)
            config, graph, config.item_quantizer.levels, config.item_quantizer.codebook_size
        )
        # concat: the collaborative item embedding holds the semantic ID's code embeddings
        self.item_code_emb = None
        if self.concat and config.code_embeddings:
            self.item_code_emb = nn.ModuleList(
                nn.Embedding(config.item_quantizer.codebook_size, config.dim)
                for _ in range(config.item_quantizer.levels)
            )
            for emb in self.item_code_emb:
                nn.init.xavier_uniform_(emb.weight)
            # TIGER's disambiguating suffix, as the two-stage model embeds it (zeros first:
            # colliding items start shared), for warm items only: a cold item's suffix
            # says nothing learnable about it
            self.item_suffix_emb = nn.Embedding(graph.n_items, config.dim)
            nn.init.zeros_(self.item_suffix_emb.weight)
            self.register_buffer("warm_items", warm_mask(graph))
            self._suffix_cache: tuple[Tensor, Tensor] | None = None
        # InfoNCE compares semantic and collaborative interest vectors: project when the
        # semantic side lives in another space.
        self.align_item: nn.Module = nn.Identity()
        self.align_user: nn.Module = nn.Identity()
        if sem_dim != d_int:
            self.align_item = nn.Linear(sem_dim, d_int, bias=False)
            self.align_user = nn.Linear(sem_dim, d_int, bias=False)
        self.log_semantic_weight = None
        if config.learn_semantic_weight:
            self.log_semantic_weight = nn.Parameter(torch.tensor(math.log(config.semantic_weight)))
        self.user = nn.Embedding(graph.n_users, config.dim)
        self.item = nn.Embedding(graph.n_items, config.dim)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)
        self.propagation = GraphPropagation(graph, config.layers)
        self.register_buffer("warm", warm_mask(graph) * config.item_id_weight)
        # scoring only: κ on the semantic half of items without training interactions
        cold = 1.0 - warm_mask(graph)
        scale = 1.0 + (config.cold_semantic_weight - 1.0) * cold
        self.register_buffer("item_semantic_scale", scale, persistent=False)
        self._item_counts = graph.item_counts()  # the popularity term's regression target
        self.content_popularity = None  # popularity_source content: fixed, fit once
        if config.popularity_weight > 0 and config.popularity_source == "content":
            raw = raw_feature_matrix(graph.item_features)
            self.content_popularity = popularity_gbdt(raw, self._item_counts)
            predicted = torch.as_tensor(self.content_popularity.predict(raw), dtype=torch.float32)
            self.register_buffer("content_popularity_column", predicted, persistent=False)
        self.register_buffer("item_pop", _standardized_log(graph.item_counts()))
        self.register_buffer("user_pop", _standardized_log(graph.user_counts()))
        self.pop_head = nn.Linear(max(config.pop_dim, 1), 1)
        u_ptr, u_items = _csr(graph.train_users, graph.train_items, graph.n_users)
        i_ptr, i_users = _csr(graph.train_items, graph.train_users, graph.n_items)
        for name, t in (
            ("u_ptr", u_ptr),
            ("u_items", u_items),
            ("i_ptr", i_ptr),
            ("i_users", i_users),
        ):
            self.register_buffer(name, t, persistent=False)

    def on_train_epoch_start(self, epoch: int) -> None:
        freeze_at = self.config.freeze_sids_epoch
        if freeze_at is None or epoch < freeze_at or bool(self.item_tower.frozen):
            return
        for tower in (self.item_tower, self.user_tower):
            if tower is not None:
                tower.freeze(refit=self.config.refit_at_freeze)

    @torch.no_grad()
    def after_epoch_steps(self) -> dict[str, Tensor]:
        if not self.config.revive_codes:
            return {}
        towers = {"item_tower": self.item_tower, "user_tower": self.user_tower}
        before = {
            f"{name}.{p_name}": p.detach().clone()
            for name, tower in towers.items()
            if tower is not None
            for p_name, p in tower.named_parameters()
        }
        method = self.config.revive_method
        self._revived = sum(t.revive_unused_codes(method) for t in towers.values() if t is not None)
        params = dict(self.named_parameters())
        edited = {name: params[name].detach() != old for name, old in before.items()}
        return {name: mask for name, mask in edited.items() if bool(mask.any())}

    def use_history(self, users: np.ndarray, items: np.ndarray) -> bool:
        """Recompute the user tower's history inputs from these pairs (train + valid when
        scoring test); codes of users may change accordingly (once frozen, encoded by
        the frozen tower)."""
        graph = TrainingGraph(self.n_users, self.n_items, users, items)
        if self.history_pooled:
            pooling = history_pooling(graph, self.config.history_decay)
            self._set_history_pool(pooling.to(self.history_pool.device))
        moved = transition_history(self.transition, users, items) or self.history_pooled
        if self.user_tower is None:
            return moved
        self.user_tower.set_inputs(
            history_means(self._item_blocks, graph, self.config.history_decay)
        )
        return True

    # ---------------------------------------------------------------- representations
    def _split(self, e: Tensor) -> tuple[Tensor, Tensor]:
        d = self.config.interest_dim
        return e[:, :d], e[:, d:]

    def _final(self, e: Tensor, s: Tensor | None, warm: Tensor | None) -> Tensor:
        interest, pop = self._split(e)
        if warm is not None:
            interest, pop = interest * warm[:, None], pop * warm[:, None]
        if s is not None:
            interest = interest + self.config.semantic_weight * s
        return torch.cat([interest, pop], dim=1)

    def _collaborative_item_ego(self, item_out) -> Tensor:
        """concat mode: ``(I, D)`` layer-0 collaborative item rows (warm items' ID rows,
        per-level code embeddings and, for warm items, the suffix embedding)."""
        ego = self.item.weight * self.warm[:, None]
        if self.item_code_emb is not None:
            for level, emb in enumerate(self.item_code_emb):
                ego = ego + emb(item_out.codes[:, level])
            suffix = self._suffixes(item_out.codes)
            ego = ego + self.item_suffix_emb(suffix) * self.warm_items[:, None]
        return ego

    def _suffixes(self, codes: Tensor) -> Tensor:
        """codes ``(I, L)`` → ``(I,)``: the disambiguating last column of the items'
        semantic IDs, recomputed only when the codes change (frozen IDs: once per run;
        the row-wise unique behind it was ~7% of a Beauty training step)."""
        cached = self._suffix_cache
        if cached is None or cached[0].device != codes.device or not torch.equal(cached[0], codes):
            suffix = assign_semantic_ids(codes)[:, -1].to(codes.device)
            self._suffix_cache = cached = (codes.detach().clone(), suffix)
        return cached[1]

    def _concat_vectors(self, item_out, user_out) -> ConcatVectors:
        """concat mode: final users and items, collaborative users, item ego and the
        users' pooled collaborative history."""
        ego = self._collaborative_item_ego(item_out)
        c_u, c_i = self.propagation(self.user.weight, ego)
        c_hist = None
        if self.collab_history:
            c_hist = sparse_matmul(self.history_pool, c_i)
            c_u = c_u + self.config.user_history_weight * c_hist
        gamma = self._gamma()
        s_i = item_out.quantized
        if self.pool_history:
            s_u = sparse_matmul(self.history_pool, s_i)
        elif user_out is not None:
            s_u = user_out.quantized
        else:  # item side only: no user semantic vector to pair with s_i
            s_u, s_i = c_u.new_zeros(len(c_u), 0), c_i.new_zeros(len(c_i), 0)
        return ConcatVectors(c_u, gamma * s_u, c_i, s_i, ego, c_hist)

    def _set_history_pool(self, pooling: Tensor) -> None:
        """The users' pooled history ``(U, I)`` and its entries' sorted ``user·I + item``
        keys (coalesced COO is row-major), for looking up a pair's own weight."""
        index = pooling.indices()
        self.history_pool, self.history_keys = pooling, index[0] * self.n_items + index[1]

    def history_target_weights(self, users: Tensor, items: Tensor) -> Tensor:
        """``(B,)``: the weight of each pair's item in its user's pooled history (a row of
        ``history_pool``, summing to 1); 0 where the item is not in that history."""
        values = self.history_pool.values()
        at, found = find_sorted(self.history_keys, users * self.n_items + items)
        return torch.where(found, values[at], values.new_zeros(()))

    def _leave_target_out(
        self, vectors: ConcatVectors, users: Tensor, pos: Tensor, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Training pairs' final and collaborative user rows ``(B, ·)`` with the pair's item
        ``pos (B,)`` (its final rows ``target (B, D + d_s)``, c_i then s_i, when already
        gathered) taken out of the user's pooled history: a pooled part
        ``h = Σ_j w_j x_j`` becomes ``(h − w_i x_i) / (1 − w_i)`` (0 when i was the whole
        history), the other items keeping their recency weights."""
        d, beta = self.config.dim, self.config.user_history_weight
        w = self.history_target_weights(users, pos)[:, None]
        rest = torch.where(w < 1, 1 / (1 - w).clamp(min=1e-12), torch.zeros_like(w))
        target = vectors.item_rows(pos) if target is None else target

        def change(pooled: Tensor, x: Tensor) -> Tensor:
            """(h − w x) / (1 − w) − h: what leaving the target out adds to h."""
            return (pooled - w * x) * rest - pooled

        collab = rows(vectors.collab_users, users)
        if vectors.collab_history is not None:
            collab = collab + beta * change(rows(vectors.collab_history, users), target[:, :d])
        semantic = rows(vectors.semantic_users, users)
        if self.pool_history:  # γ·s_u = Σ_j w_j (γ s_j)
            semantic = semantic + change(semantic, self._gamma() * target[:, d:])
        return torch.cat([collab, semantic], 1), collab

    def embeddings(self) -> tuple[Tensor, Tensor]:
        if self.concat:
            scored = self.user_tower is not None and not self.pool_history
            user_out = self.user_tower(None) if scored else None  # else unused here
            item_out = self.item_tower(None)
            vectors = self._concat_vectors(item_out, user_out)
            users, items = vectors.users, vectors.items
            d = self.config.dim
            items = torch.cat([items[:, :d], items[:, d:] * self.item_semantic_scale[:, None]], 1)
            users, items = with_transition(self.transition, users, items, item_out.codes)
            return self._with_popularity(users, items, item_out.quantized)
        s_i = self.item_tower(None).quantized
        s_u = self.user_tower(None).quantized if self.user_tower is not None else None
        if self.config.propagate_semantic:
            users, items = self.propagation(
                self._final(self.user.weight, s_u, None),
                self._final(self.item.weight, s_i, self.warm),
            )
        else:
            e_u, e_i = self.propagation(self.user.weight, self.item.weight)
            users, items = self._final(e_u, s_u, None), self._final(e_i, s_i, self.warm)
        return self._with_popularity(users, items, s_i)

    def _with_popularity(self, users: Tensor, items: Tensor, semantic: Tensor):
        """``[users ; λ]``, ``[items ; predicted popularity]`` (``semantic (I, d)``: the
        items' semantic vectors) when ``popularity_weight`` is on, else unchanged."""
        if self.config.popularity_weight <= 0:
            return users, items
        if self.content_popularity is not None:
            pop = self.content_popularity_column
        else:
            s = semantic.cpu().numpy()
            pop = torch.as_tensor(self.popularity_ridge(s).predict(s))
        return self._with_prior_weight(users), _append_column(items, pop)

    def _with_prior_weight(self, users: Tensor) -> Tensor:
        """``(U, D)`` → ``(U, D + 1)``: λ appended, the weight of the popularity column."""
        return _append_column(users, users.new_full((len(users),), self.config.popularity_weight))

    def popularity_ridge(self, semantic: np.ndarray):
        """The content model's popularity regressor (ridge, α = 1, on the warm items'
        standardised log training counts) fitted on the items' semantic vectors
        ``semantic (I, d)`` — their semantic-ID codeword sums."""
        return popularity_regressor(semantic, self._item_counts)

    # ------------------------------------------------------------------------ losses
    def _sample_neighbor(self, ptr: Tensor, nbrs: Tensor, rows: Tensor) -> Tensor:
        """A uniformly drawn training neighbour of each row (rows with none: themselves)."""
        start, deg = ptr[rows], ptr[rows + 1] - ptr[rows]
        offset = (torch.rand(rows.shape, device=rows.device) * deg.clamp(min=1)).long()
        picked = nbrs[(start + offset).clamp(max=max(len(nbrs) - 1, 0))]
        return torch.where(deg > 0, picked, rows)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.config
        users, pos = batch["users"], batch["pos_items"]
        neg = batch["neg_items"][:, 0]
        s_u = None
        if self.concat:
            # The item tower over all rows (the propagation needs every item's codes).
            item_out = self.item_tower(None)
            # The semantic vectors in the interest space are used by the alignment terms
            # only, which see the batch's first pairs (_aux_losses): projected there only.
            aligned = users[: cfg.align_batch_size]
            user_out, batch_users_only = None, False
            if self.user_tower is not None:
                # With the users' semantic side pooled from their histories, the user tower
                # only aligns: once frozen, it encodes just those users.
                batch_users_only = self.pool_history and bool(self.user_tower.frozen)
                user_out = self.user_tower(aligned if batch_users_only else None)
            vectors = self._concat_vectors(item_out, None if batch_users_only else user_out)
            ego = vectors.item_ego
            p_final, n_final = vectors.item_rows(pos), vectors.item_rows(neg)
            e_u, e_p = rows(vectors.collab_users, users), p_final[:, : cfg.dim]  # aligned
            if cfg.history_leave_target_out:
                u_final, e_u = self._leave_target_out(vectors, users, pos, p_final)
            else:
                u_final = vectors.user_rows(users)

            def s_items(index: Tensor) -> Tensor:  # projected only where it is needed
                return self.align_item(rows(item_out.quantized, index))

            s_pos = s_items(pos[: len(aligned)])
            terms: dict[str, Tensor] = {"quant_loss": item_out.loss}
            if user_out is not None:
                s_user = user_out.quantized
                s_u = self.align_user(s_user if batch_users_only else rows(s_user, aligned))
                terms["quant_loss"] = terms["quant_loss"] + user_out.loss
            # the pair's preceding items → its item
            u_final, p_final, n_final, reg = batch_with_transition(
                self.transition, batch, u_final, p_final, n_final, item_out.codes
            )
            terms["rec_loss"] = self._rec_loss(u_final, p_final, n_final, pos, neg)
            ego_rows = [rows(self.user.weight, users), rows(ego, pos), rows(ego, neg)]
            terms["reg_loss"] = l2_penalty(*ego_rows, *reg)
            return self._aux_losses(batch, terms, e_u, e_p, s_u, s_pos, s_items)
        e_u_all, e_i_all = self.propagation(self.user.weight, self.item.weight)
        e_u, e_p, e_n = e_u_all[users], e_i_all[pos], e_i_all[neg]
        if cfg.propagate_semantic:
            # Every node's semantic embedding enters the propagation: towers over all rows.
            item_out = self.item_tower(None)
            s_pos, s_neg = item_out.quantized[pos], item_out.quantized[neg]
            terms: dict[str, Tensor] = {"quant_loss": item_out.loss}
            s_u_all = None
            if self.user_tower is not None:
                user_out = self.user_tower(None)
                s_u_all = user_out.quantized
                s_u = s_u_all[users]
                terms["quant_loss"] = terms["quant_loss"] + user_out.loss
            f_u_all, f_i_all = self.propagation(
                self._final(self.user.weight, s_u_all, None),
                self._final(self.item.weight, item_out.quantized, self.warm),
            )
            u_final, p_final, n_final = f_u_all[users], f_i_all[pos], f_i_all[neg]
        else:
            # One tower pass over the batch's distinct items (and users): one EMA update.
            items, inverse = torch.unique(torch.cat([pos, neg]), return_inverse=True)
            item_out = self.item_tower(items)
            s_items = item_out.quantized
            s_pos, s_neg = s_items[inverse[: len(pos)]], s_items[inverse[len(pos) :]]
            terms = {"quant_loss": item_out.loss}
            if self.user_tower is not None:
                uniq_u, inv_u = torch.unique(users, return_inverse=True)
                user_out = self.user_tower(uniq_u)
                s_u = user_out.quantized[inv_u]
                terms["quant_loss"] = terms["quant_loss"] + user_out.loss
            u_final = self._final(e_u, s_u, None)
            p_final = self._final(e_p, s_pos, self.warm[pos])
            n_final = self._final(e_n, s_neg, self.warm[neg])
        terms["rec_loss"] = self._rec_loss(u_final, p_final, n_final, pos, neg)
        terms["reg_loss"] = l2_penalty(
            self.user.weight[users], self.item.weight[pos], self.item.weight[neg]
        )
        return self._aux_losses(
            batch, terms, e_u, e_p, s_u, s_pos, lambda j: self.item_tower(j).quantized
        )

    def _rec_loss(
        self, user: Tensor, pos: Tensor, neg: Tensor, pos_items: Tensor, neg_items: Tensor
    ) -> Tensor:
        """user, pos, neg: ``(B, D)`` final vectors of the batch's pairs and negatives;
        pos_items, neg_items: ``(B,)`` their item indices (for the popularity prior)."""
        if self.config.popularity_in_training:  # [user ; λ] · [item ; predicted pop]
            pop = self.content_popularity_column
            user = self._with_prior_weight(user)
            pos, neg = _append_column(pos, pop[pos_items]), _append_column(neg, pop[neg_items])
        if self.config.rec_loss == "softmax":
            return in_batch_softmax_loss(user, pos, self.config.rec_temperature)
        return bpr_loss((user * pos).sum(-1), (user * neg).sum(-1))

    def _aux_losses(self, batch, terms, e_u, e_p, s_u, s_pos, s_items):
        """Alignment, co-occurrence and debias terms and the weighted total. ``e_*``:
        collaborative vectors of the batch's users / positives; ``s_*``: their semantic
        vectors in the interest space (at least the first ``align_batch_size`` pairs');
        ``s_items``: item indices → their semantic vectors."""
        w, cfg = self.config.weights, self.config
        users, pos = batch["users"], batch["pos_items"]
        # Alignment on a subset of the batch: in-batch InfoNCE is quadratic in its size.
        a = torch.arange(min(len(users), cfg.align_batch_size), device=users.device)
        (ui, up), (ii, ip) = self._split(e_u[a]), self._split(e_p[a])
        uid, iid = users[a], pos[a]

        def nce(a_: Tensor, p_: Tensor, a_ids: Tensor | None, p_ids: Tensor | None) -> Tensor:
            """InfoNCE of the rows' entities ``a_ids`` / ``p_ids``: with
            align_mask_duplicates, false negatives (the row's own entity) are left out."""
            if not cfg.align_mask_duplicates:
                a_ids = p_ids = None
            return info_nce(a_, p_, cfg.temperature, a_ids, p_ids)

        zero = e_u.new_zeros(())
        terms["align_dual_loss"] = zero
        terms["align_self_loss"] = nce(s_pos[a], ii, iid, None)
        if s_u is not None:
            terms["align_dual_loss"] = nce(s_u[a], ii, uid, iid) + nce(ui, s_pos[a], uid, iid)
            terms["align_self_loss"] = terms["align_self_loss"] + nce(s_u[a], ui, uid, None)
        else:
            terms["align_dual_loss"] = nce(ui, s_pos[a], uid, iid)
        terms["cooc_loss"] = zero
        if w.cooc:
            j = self._sample_neighbor(self.u_ptr, self.u_items, users[a])
            s_j = s_items(j)
            terms["cooc_loss"] = nce(s_pos[a], s_j, iid, j)
            if self.user_tower is not None and s_u is not None:
                v = self._sample_neighbor(self.i_ptr, self.i_users, pos[a])
                s_v = self.align_user(self.user_tower(v).quantized)
                terms["cooc_loss"] = terms["cooc_loss"] + nce(s_u[a], s_v, uid, v)
        terms["debias_pop_loss"] = zero
        terms["debias_orth_loss"] = zero
        if cfg.pop_dim > 0:
            pred_i = self.pop_head(ip).squeeze(-1)
            pred_u = self.pop_head(up).squeeze(-1)
            terms["debias_pop_loss"] = F.mse_loss(pred_i, self.item_pop[pos[a]]) + F.mse_loss(
                pred_u, self.user_pop[users[a]]
            )
            # Orthogonality needs equal widths: compare the pop factor with the interest
            # factor's leading columns.
            k = min(cfg.pop_dim, cfg.interest_dim)
            terms["debias_orth_loss"] = orthogonality_loss(
                ii[:, :k], ip[:, :k]
            ) + orthogonality_loss(ui[:, :k], up[:, :k])
        total = (
            w.rec * terms["rec_loss"]
            + w.quant * terms["quant_loss"]
            + w.align_dual * terms["align_dual_loss"]
            + w.align_self * terms["align_self_loss"]
            + w.cooc * terms["cooc_loss"]
            + w.debias_pop * terms["debias_pop_loss"]
            + w.debias_orth * terms["debias_orth_loss"]
            + w.reg * terms["reg_loss"]
        )
        return {"loss": total, **terms}

    # ------------------------------------------------------------- semantic-ID health
    def _gamma(self) -> Tensor | float:
        """γ: the configured float, or the learned one as a tensor (so that it trains)."""
        if self.log_semantic_weight is None:
            return self.config.semantic_weight
        return self.log_semantic_weight.exp()

    def semantic_weight(self) -> float:
        """γ as it stands: the configured one, or the learned one."""
        gamma = self._gamma()
        return float(gamma.detach()) if isinstance(gamma, Tensor) else float(gamma)

    def epoch_metrics(self) -> dict[str, float]:
        codes = self.item_tower.codes()
        stats = codebook_stats(codes, self.config.item_quantizer.codebook_size)
        out = {f"sid_{k}": v for k, v in stats.items() if k != "n_items"}
        # Churn: items whose code tuple changed since the previous epoch's call (code
        # embeddings indexed by codes that keep moving learn slowly).
        previous = getattr(self, "_previous_codes", None)
        if previous is not None and previous.shape == codes.shape:
            out["sid_changed_frac"] = float((previous != codes).any(dim=1).float().mean())
        self._previous_codes = codes.clone()
        if self.log_semantic_weight is not None:
            out["semantic_weight"] = self.semantic_weight()
        if self.config.revive_codes:
            out["sid_revived_codes"] = float(getattr(self, "_revived", 0))
        return out

    def semantic_ids(self) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        out = {
            "items": semantic_id_table(
                self.item_tower.codes(), self.config.item_quantizer.codebook_size
            )
        }
        if self.user_tower is not None:
            out["users"] = semantic_id_table(
                self.user_tower.codes(), self.config.user_quantizer.codebook_size
            )
        return out

    # ------------------------------------------------------------------- serving
    def history_query(self) -> tuple[list[dict], dict[str, np.ndarray]] | None:
        """An anonymous user's query (``RUN/history_query/``) in concat mode: the user
        vector's formula without the user's own ID embedding (its propagated part folded
        in from their items, plus β × the recency-weighted history of collaborative item
        vectors; γ × that of semantic ones), the block's columns and the popularity
        weight λ. Add mode: the mean of their items (None), with λ on the popularity
        column when there is one."""
        if not self.concat:
            if self.config.popularity_weight <= 0:
                return None
            width = self.config.dim
            return [{"columns": [width, width + 1], "constant": self.config.popularity_weight}], {}
        cfg, d = self.config, self.config.dim
        with torch.no_grad():
            item_out = self.item_tower(None)
            ego = self._collaborative_item_ego(item_out)
            fold_in, arrays = fold_in_segment(self.propagation.fold_in_rows(self.user.weight, ego))
        segments: list[dict] = [fold_in]
        recency = {"pool": "items", "decay": cfg.history_decay, "window": None}
        if self.collab_history:
            segments.append({"columns": [0, d], **recency, "scale": cfg.user_history_weight})
        semantic = self.user_tower is not None or self.pool_history
        width = d + (item_out.quantized.shape[1] if semantic else 0)
        if self.pool_history:  # a user tower's semantic vector: left to the mean
            segments.append({"columns": [d, width], **recency, "scale": self.semantic_weight()})
        width = add_transition_segment(segments, arrays, self.transition, width, item_out.codes)
        if cfg.popularity_weight > 0:
            segments.append({"columns": [width, width + 1], "constant": cfg.popularity_weight})
        return segments, arrays

    def write_item_encoder(self, folder: Path) -> None:
        """What serving needs to embed a new item as training embeds a cold one: the
        content pipeline, the frozen block transforms, the item tower's weights (fusion,
        quantizer, code embeddings) and the final-representation settings (see
        ``recsys.models.das_encoder``)."""
        if self.features_config is None:
            return
        from recsys.models.content_encoder import write_content_vectors

        arrays = write_content_vectors(folder, self.features, self.features_config)
        if self.item_code_emb is not None:
            for level, emb in enumerate(self.item_code_emb):
                arrays[f"item_code_emb_{level}"] = emb.weight.detach().cpu().numpy()
        if self.transition is not None and self.transition.target_codes is not None:
            for level, emb in enumerate(self.transition.target_codes):
                arrays[f"transition_code_emb_{level}"] = emb.weight.detach().cpu().numpy()
        if self.content_popularity is not None:
            import joblib  # scikit-learn's own persistence, as the content model's encoder

            tmp = folder / "popularity.joblib.tmp"
            joblib.dump(self.content_popularity, tmp)
            tmp.replace(folder / "popularity.joblib")
        elif self.config.popularity_weight > 0:
            with torch.no_grad():
                ridge = self.popularity_ridge(self.item_tower(None).quantized.cpu().numpy())
            arrays["popularity_weights"] = ridge.coef_
            arrays["popularity_bias"] = np.array([ridge.intercept_])
        for name, t in self._item_transforms.items():
            arrays[f"scale_{name}"] = np.array([t.scale])
            if t.components is not None:
                arrays[f"mean_{name}"], arrays[f"components_{name}"] = t.mean, t.components
        np.savez(folder / "arrays.npz", **arrays)
        inputs = {f"x{i}" for i in range(len(self.item_tower.names))}
        inputs |= {f"p{i}" for i in range(len(self.item_tower.names))}
        inputs.add("frozen_codes")  # a new item is assigned by the (frozen) tower
        weights = {k: v for k, v in self.item_tower.state_dict().items() if k not in inputs}
        torch.save(weights, folder / "item_tower.pt")
        cfg = self.config
        spec = {
            "kind": "das",
            "module": "recsys.models.das_encoder",
            "modalities": list(self.features),
            "block_dims": {
                name: int(self._item_blocks[name][0].shape[1]) for name in self.item_tower.names
            },
            "fusion": None if self.item_tower.identity else cfg.item_fusion.model_dump(mode="json"),
            "semantic_input": cfg.semantic_input,
            "modality_weights": cfg.modality_weights,
            "semantic_combination": cfg.semantic_combination,
            "semantic_part": self.user_tower is not None or self.pool_history,
            "layers": cfg.layers,
            "quantizer": cfg.item_quantizer.model_dump(mode="json"),
            "interest_dim": cfg.interest_dim,
            "pop_dim": cfg.pop_dim,
            "popularity_weight": cfg.popularity_weight,
            "popularity_source": cfg.popularity_source,
            "semantic_weight": self.semantic_weight(),
            "cold_semantic_weight": cfg.cold_semantic_weight,
            "transition_dim": cfg.transition_dim if self.transition is not None else 0,
            "transition_codes": self.transition is not None and self.transition.uses_codes,
            "code_embeddings": cfg.code_embeddings,
            # a node without edges ends LightGCN's layer mean as ego / (layers + 1)
            "propagated_layers": cfg.layers if cfg.propagate_semantic else 0,
        }
        (folder / "encoder.json").write_text(json.dumps(spec, indent=2))
