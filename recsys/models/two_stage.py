"""Two-stage semantic IDs ("TIGER-style IDs, then CF"): the baseline DAS must beat.

Stage 1 fits a residual quantizer on the frozen item content and freezes the codes.
Stage 2 represents an item by the sum of learned per-level code embeddings (plus one for
the disambiguating suffix and, optionally, a linear projection of the content), and
trains it with LightGCN propagation and BPR (or in-batch softmax) against free user
embeddings.  An item never seen in training still has its codes, hence a representation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from recsys.models.base import Recommender, TrainingGraph, register_model
from recsys.models.content import content_item_matrix
from recsys.models.graph import fold_in_segment
from recsys.models.mf import PairwiseConfig, pairwise_loss
from recsys.models.quantizer import QuantizerConfig, build_quantizer
from recsys.models.semantic import GraphPropagation, semantic_id_table
from recsys.models.transition import (
    TransitionFields,
    add_transition_segment,
    batch_with_transition,
    transition_block,
    transition_history,
    with_transition,
)


class TwoStageConfig(PairwiseConfig, TransitionFields):
    kind: Literal["two_stage"] = "two_stage"
    layers: int = 2
    reg: float = 1e-5
    content_projection: bool = Field(
        default=False, description="add a linear projection of the content to the code sum"
    )
    modality_weights: dict[str, float] = Field(default_factory=dict)
    quantizer: QuantizerConfig = QuantizerConfig(kind="rqkmeans", levels=3, codebook_size=256)
    semantic_ids_from: str | None = Field(
        default=None,
        description="a finished run folder (same dataset) whose item semantic IDs replace"
        " stage 1: the codes are read from its semantic_ids/items.parquet instead of"
        " fitting the quantizer, so that different semantic-ID methods (e.g. a DAS run's"
        " jointly aligned IDs) are compared in the same downstream model; levels and"
        " codebook size must match `quantizer`. Such a run writes no item encoder",
    )


@register_model("two_stage", TwoStageConfig)
class TwoStageSemanticIDs(Recommender):
    needs_item_features = True

    def __init__(self, config: TwoStageConfig, graph: TrainingGraph) -> None:
        super().__init__()
        if graph.item_features is None:
            raise ValueError("two_stage needs item features")
        self.config = config
        self.features, self.features_config = graph.item_features, graph.features_config
        content = content_item_matrix(graph.item_features, config.modality_weights)
        # Stage 1: quantize the content once; the codes are frozen from here on.
        self.quantizer = None
        if config.semantic_ids_from is None:
            self.quantizer = build_quantizer(config.quantizer).fit(content.astype(np.float32))
            codes = self.quantizer.encode(content.astype(np.float32))
        else:
            if graph.item_codes is None:
                raise ValueError("semantic_ids_from: the runner did not load the codes")
            codes = torch.as_tensor(np.array(graph.item_codes, dtype=np.int64))
        sids, self.sid_stats = semantic_id_table(codes, config.quantizer.codebook_size)
        history = self.quantizer.history[-1:] if self.quantizer is not None else []
        self.sid_stats["quantizer_history"] = history
        self.register_buffer("sids", torch.as_tensor(sids, dtype=torch.long))
        k = config.quantizer.codebook_size
        self.code_emb = nn.ModuleList(
            nn.Embedding(k, config.dim) for _ in range(config.quantizer.levels)
        )
        self.suffix_emb = nn.Embedding(int(sids[:, -1].max()) + 1, config.dim)
        self.user = nn.Embedding(graph.n_users, config.dim)
        for emb in [*self.code_emb, self.user]:
            nn.init.xavier_uniform_(emb.weight)
        nn.init.zeros_(self.suffix_emb.weight)  # collisions start shared, then separate
        self.projection = None
        if config.content_projection:
            self.register_buffer("content", torch.as_tensor(content, dtype=torch.float32))
            self.projection = nn.Linear(content.shape[1], config.dim, bias=False)
        self.propagation = GraphPropagation(graph, config.layers)
        self.transition = transition_block(config, graph)

    def item_ego(self) -> Tensor:
        """``(n_items, dim)``: Σ_l code_emb_l[c_l] + suffix_emb[suffix] (+ W·content)."""
        out = self.suffix_emb(self.sids[:, -1])
        for level, emb in enumerate(self.code_emb):
            out = out + emb(self.sids[:, level])
        if self.projection is not None:
            out = out + self.projection(self.content)
        return out

    def embeddings(self) -> tuple[Tensor, Tensor]:
        users, items = self.propagation(self.user.weight, self.item_ego())
        return with_transition(self.transition, users, items)

    def use_history(self, users: np.ndarray, items: np.ndarray) -> bool:
        return transition_history(self.transition, users, items)

    def history_query(self) -> tuple[list[dict], dict[str, np.ndarray]]:
        """An anonymous user's query (``RUN/history_query/``): the propagated columns
        folded in from their items (``GraphPropagation.fold_in_rows``) and the block's
        columns as trained."""
        rows = self.propagation.fold_in_rows(self.user.weight, self.item_ego())
        segment, arrays = fold_in_segment(rows)
        segments = [segment]
        add_transition_segment(segments, arrays, self.transition, self.config.dim)
        return segments, arrays

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        ego_items = self.item_ego()
        users_all, items_all = self.propagation(self.user.weight, ego_items)
        users, pos = batch["users"], batch["pos_items"]
        reg_terms = [self.user.weight[users], ego_items[pos]]
        neg_emb = None
        if "neg_items" in batch:
            neg_emb = items_all[batch["neg_items"]]
            reg_terms.append(ego_items[batch["neg_items"].flatten()])
        u, p, n, reg = batch_with_transition(
            self.transition, batch, users_all[users], items_all[pos], neg_emb
        )
        return pairwise_loss(self.config, u, p, n, reg_terms + reg)  # type: ignore[arg-type]

    def semantic_ids(self) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        return {"items": (self.sids.cpu().numpy(), self.sid_stats)}

    def write_item_encoder(self, folder: Path) -> None:
        """What serving needs to embed a new item as training embedded a cold one: the
        content pipeline, the frozen quantizer, the code tables and the layer count (see
        ``recsys.models.two_stage_encoder``)."""
        if self.features_config is None or self.quantizer is None:
            return  # borrowed IDs: this run holds no quantizer to encode a new item
        from recsys.models.content_encoder import write_content_vectors

        arrays = write_content_vectors(folder, self.features, self.features_config)
        for level, emb in enumerate(self.code_emb):
            arrays[f"code_emb_{level}"] = emb.weight.detach().cpu().numpy()
        arrays["suffix_emb_0"] = self.suffix_emb.weight[0].detach().cpu().numpy()
        if self.projection is not None:
            arrays["projection"] = self.projection.weight.detach().cpu().numpy()
        np.savez(folder / "arrays.npz", **arrays)
        self.quantizer.save(folder / "quantizer.pt")
        spec = {
            "kind": "two_stage",
            "module": "recsys.models.two_stage_encoder",
            "modalities": list(self.features),
            "modality_weights": self.config.modality_weights,
            "layers": self.config.layers,
            "levels": self.config.quantizer.levels,
            "transition_dim": self.config.transition_dim,
        }
        (folder / "encoder.json").write_text(json.dumps(spec, indent=2))
