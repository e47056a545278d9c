"""Content-only baseline: items from their frozen content features alone.

An item is the concatenation of its L2-normalised modality features (each block scaled
by the square root of its weight, so that a dot product is a weighted sum of per-modality
cosines); a user is the recency-weighted mean of their training items; scores are
cosine similarities.  Nothing is trained, and an item with no interactions is scored
exactly like any other: this is the cold-start yardstick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from recsys.config import StrictModel
from recsys.models.base import Recommender, TrainingGraph, register_model, weighted_row_sums


class ContentConfig(StrictModel):
    kind: Literal["content"] = "content"
    modality_weights: dict[str, float] = Field(
        default_factory=dict, description="modality → weight; unlisted modalities weigh 1"
    )
    recency_decay: float = Field(
        default=0.9, gt=0, le=1, description="weight of a history item = decay^(age rank)"
    )
    popularity_weight: float = Field(
        default=0.0,
        ge=0,
        description="λ: add λ·(popularity predicted from content) to every score; the"
        " predictor is a ridge regression of standardised log training counts on the"
        " content of items that have training interactions",
    )
    popularity_model: Literal["ridge", "gbdt"] = Field(
        default="ridge",
        description="ridge: linear, on the normalised content vector; gbdt: scikit-learn's"
        " HistGradientBoostingRegressor on the raw feature blocks (missing modality: NaN),"
        " which captures non-linear effects such as release date and vote counts",
    )


def content_item_matrix(
    features, weights: dict[str, float], fill: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """``(n_items, ΣD_m)``: normalised modality blocks; an item lacking a modality gets
    that modality's mean present vector (an explicit, documented fill, not zeros).

    ``fill``: per-modality fill vectors to use (new items at serving time); when None
    they are computed from these items' present rows.
    """
    blocks = []
    for name, (matrix, present) in features.items():
        weight = weights.get(name, 1.0)
        if weight == 0:
            continue
        x = matrix.astype(np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        if (~present).any():
            vector = (
                fill[name]
                if fill is not None
                else (x[present].mean(axis=0) if present.any() else np.zeros(x.shape[1]))
            )
            x[~present] = vector
        blocks.append(np.sqrt(weight) * x)
    if not blocks:
        raise ValueError("content model: every modality has weight 0")
    out = np.concatenate(blocks, axis=1)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def fill_vectors(features) -> dict[str, np.ndarray]:
    """The mean normalised present vector of each modality (what a missing one becomes)."""
    out = {}
    for name, (matrix, present) in features.items():
        x = matrix.astype(np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        out[name] = x[present].mean(axis=0) if present.any() else np.zeros(x.shape[1])
    return out


def recency_weighted_users(
    item_matrix: np.ndarray, graph: TrainingGraph, decay: float
) -> np.ndarray:
    """``(n_users, D)``: Σ decay^rank · item / Σ weights, then L2-normalised."""
    weights = decay ** graph.recency_rank().astype(np.float64)
    users = weighted_row_sums(
        graph.train_users, graph.train_items, weights, item_matrix, graph.n_users
    )
    return users / np.maximum(np.linalg.norm(users, axis=1, keepdims=True), 1e-12)


def popularity_target(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(warm mask, standardised log(1 + count) of the warm items): what the regressors fit
    (cold items have no training interactions, so they are left out)."""
    warm = counts > 0
    target = np.log1p(counts[warm])
    return warm, (target - target.mean()) / max(target.std(), 1e-8)


def popularity_regressor(items: np.ndarray, counts: np.ndarray):
    """Ridge regression of the popularity target on the normalised content vectors."""
    from sklearn.linear_model import Ridge

    warm, target = popularity_target(counts)
    return Ridge(alpha=1.0).fit(items[warm], target)


def raw_feature_matrix(features) -> np.ndarray:
    """``(n_items, ΣD_m)``: the frozen blocks side by side, NaN where a modality is missing
    (gradient-boosted trees route missing values themselves)."""
    blocks = []
    for matrix, present in features.values():
        x = np.array(matrix, dtype=np.float32)
        x[~np.asarray(present, dtype=bool)] = np.nan
        blocks.append(x)
    return np.concatenate(blocks, axis=1)


def popularity_gbdt(raw: np.ndarray, counts: np.ndarray, seed: int = 0):
    """Gradient-boosted trees (fixed settings, deterministic given ``seed``) for the same
    target as :func:`popularity_regressor`."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    warm, target = popularity_target(counts)
    model = HistGradientBoostingRegressor(
        max_iter=300, learning_rate=0.05, early_stopping=False, random_state=seed
    )
    return model.fit(raw[warm], target)


@register_model("content", ContentConfig)
class ContentOnly(Recommender):
    trainable = False
    needs_item_features = True

    def __init__(self, config: ContentConfig, graph: TrainingGraph) -> None:
        super().__init__()
        if graph.item_features is None:
            raise ValueError("content model needs item features")
        self.config = config
        self.features = graph.item_features
        self.features_config = graph.features_config
        self.fill = fill_vectors(graph.item_features)
        items = content_item_matrix(graph.item_features, config.modality_weights, self.fill)
        self.content = items
        self.regressor = None
        if config.popularity_weight > 0:
            if config.popularity_model == "gbdt":
                raw = raw_feature_matrix(graph.item_features)
                self.regressor = popularity_gbdt(raw, graph.item_counts())
                pop = self.regressor.predict(raw)
            else:
                self.regressor = popularity_regressor(items, graph.item_counts())
                pop = self.regressor.predict(items)
            items = np.concatenate([items, config.popularity_weight * pop[:, None]], axis=1)
        self.register_buffer("item_emb", torch.as_tensor(items, dtype=torch.float32))
        self.register_buffer("user_emb", self._users(graph))

    def _users(self, graph: TrainingGraph) -> Tensor:
        users = recency_weighted_users(self.content, graph, self.config.recency_decay)
        if self.regressor is not None:
            users = np.concatenate([users, np.ones((len(users), 1))], axis=1)
        return torch.as_tensor(users, dtype=torch.float32)

    def use_history(self, users: np.ndarray, items: np.ndarray) -> bool:
        graph = TrainingGraph(self.user_emb.shape[0], self.item_emb.shape[0], users, items)
        self.user_emb = self._users(graph)
        return True

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_emb, self.item_emb

    def history_query(self) -> tuple[list[dict], dict[str, np.ndarray]]:
        """An anonymous user's query (``RUN/history_query/``) as training builds users:
        the L2-normalised recency-weighted mean of their items' content, then 1 on the
        popularity column."""
        width = self.content.shape[1]
        recency = {"pool": "items", "decay": self.config.recency_decay, "window": None}
        segments: list[dict] = [{"columns": [0, width], **recency, "normalize": True}]
        if self.regressor is not None:
            segments.append({"columns": [width, width + 1], "constant": 1.0})
        return segments, {}

    def write_item_encoder(self, folder: Path) -> None:
        """What serving needs to embed a new item exactly as training embedded the
        catalogue: the features config, the tabular vocabulary, the fill vectors and the
        popularity regressor (see ``recsys.models.content_encoder``)."""
        if self.features_config is None:
            return
        from recsys.models.content_encoder import write_content_vectors

        arrays = write_content_vectors(folder, self.features, self.features_config)
        if self.regressor is not None and self.config.popularity_model == "ridge":
            arrays["ridge_coef"] = self.regressor.coef_
            arrays["ridge_intercept"] = np.atleast_1d(self.regressor.intercept_)
        if self.regressor is not None and self.config.popularity_model == "gbdt":
            import joblib  # scikit-learn's own persistence

            tmp = folder / "popularity.joblib.tmp"
            joblib.dump(self.regressor, tmp)
            tmp.replace(folder / "popularity.joblib")
        np.savez(folder / "arrays.npz", **arrays)
        spec = {
            "kind": "content",
            "module": "recsys.models.content_encoder",
            "modalities": list(self.features),
            "modality_weights": self.config.modality_weights,
            "popularity_weight": self.config.popularity_weight,
            "popularity_model": self.config.popularity_model,
        }
        (folder / "encoder.json").write_text(json.dumps(spec, indent=2))
