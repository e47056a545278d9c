"""DAS's configuration: the model's settings and its loss weights."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from recsys.config import StrictModel
from recsys.models.fanouts import FanoutFields
from recsys.models.fusion import FusionConfig
from recsys.models.quantizer import QuantizerConfig
from recsys.models.transition import TransitionFields


class LossWeights(StrictModel):
    rec: float = 1.0
    quant: float = 1.0
    align_dual: float = 0.1
    align_self: float = 0.1
    cooc: float = 0.05
    debias_pop: float = 0.1
    debias_orth: float = 0.1
    reg: float = 1e-5


class DASConfig(TransitionFields, FanoutFields):
    kind: Literal["das"] = "das"
    dim: int = 64
    pop_dim: int = Field(default=16, ge=0, description="conformity-factor columns of dim")
    layers: int = 2
    semantic_weight: float = Field(default=1.0, description="γ in the final representation")
    temperature: float = 0.2
    align_batch_size: int = Field(default=256, ge=2, description="rows used by InfoNCE terms")
    input_dim: int = Field(default=64, ge=1, description="PCA size of each frozen feature block")
    dual: bool = Field(default=True, description="user semantic tower and user quantizer")
    code_embeddings: bool = Field(
        default=True,
        description="add learned per-level code embeddings (indexed by the jointly trained"
        " codes) to the codeword sum, as the two-stage model represents items",
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
        " user/item ID embeddings) keep training on stable IDs. At the freeze each quantizer"
        " is re-fit by residual k-means (balanced last level, as RQ-KMeans) on its tower's"
        " outputs, so that the frozen IDs use every code. None: never frozen",
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
    history_fanout: PositiveInt | None = Field(
        default=None,
        description="with fanouts: a sampled step estimates each user's pooled history, without"
        " bias, from this many of their items drawn by their recency weights (a shorter"
        " history whole); None: the whole history. The history's items seed the step's"
        " sampled neighbourhood, so whole histories make it most of the graph",
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
    history_decay: float = Field(
        default=0.9, gt=0, le=1, description="recency weight of the user's history content"
    )
    item_fusion: FusionConfig = FusionConfig(hidden_dim=128, dropout=0.1, modality_dropout=0.1)
    user_fusion: FusionConfig = FusionConfig(hidden_dim=128, dropout=0.1)
    revive_codes: bool = Field(
        default=False,
        description="after each epoch's last training step (before validation), re-seed"
        " every code that no row's dropout-free assignment uses by splitting the most"
        " distorted live code's rows by 2-means (at the last level first parting rows that"
        " share a whole ID; a new code starts from its source code's code embedding: a"
        " dataset-wide dead-code reset, items and users), so"
        " that the IDs evaluated and saved use every code the rows allow; training-time"
        " restarts (dead_code_steps) only see codes unused by the perturbed batch rows",
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
        if self.popularity_in_training and (
            self.popularity_source != "content" or self.popularity_weight <= 0
        ):
            raise ValueError(
                "popularity_in_training needs popularity_source: content and popularity_weight > 0"
            )
        if self.cold_semantic_weight != 1.0 and self.semantic_combination != "concat":
            raise ValueError("cold_semantic_weight needs semantic_combination: concat")
        for name, on in (
            ("user_history_weight", self.user_history_weight > 0),
            ("transition_dim", self.transition_dim > 0),
            ("fanouts", self.fanouts is not None),
        ):
            if on and self.semantic_combination != "concat":
                raise ValueError(f"{name} needs semantic_combination: concat")
        if (
            self.fanouts is not None
            and self.freeze_sids_epoch != 0
            and self.item_quantizer.codebook_update == "ema"
        ):
            # a sampled step encodes its items in several calls: EMA codebooks would move
            # once per call, on overlapping rows
            raise ValueError(
                "fanouts needs item_quantizer.codebook_update: grad or freeze_sids_epoch: 0"
                " (a sampled step runs the item tower more than once)"
            )
        pooled = self.user_semantic == "history" or self.user_history_weight > 0
        if self.history_fanout is not None and not (self.fanouts is not None and pooled):
            raise ValueError(
                "history_fanout needs fanouts and a pooled history (user_semantic: history"
                " or user_history_weight > 0)"
            )
        if self.history_leave_target_out and not (self.semantic_combination == "concat" and pooled):
            raise ValueError(
                "history_leave_target_out needs semantic_combination: concat and a pooled"
                " history (user_semantic: history or user_history_weight > 0)"
            )
        return self
    @property
    def interest_dim(self) -> int:
        return self.dim - self.pop_dim
