"""Serving-side loader of the content model's item encoder (``RUN/item_encoder/``).

Embeds a new item exactly as training embedded the catalogue: the same frozen
extractors (text model, the saved tabular vocabulary), the same fill vector for a
missing modality, the same modality weights and popularity regressor.  The content
model has no semantic IDs, so ``encode`` returns None for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.features.pipeline import FeaturesConfig, build_item_features
from recsys.features.tabular import TabularEncoder
from recsys.models.content import content_item_matrix, raw_feature_matrix
from recsys.serve.content import register_item_encoder


class ContentItemEncoder:
    def __init__(self, folder: Path) -> None:
        spec = json.loads((folder / "encoder.json").read_text())
        self.config = FeaturesConfig.model_validate_json((folder / "features.json").read_text())
        tab = folder / "tabular.json"
        self.tabular = TabularEncoder.load(tab) if tab.exists() else None
        arrays = np.load(folder / "arrays.npz")
        self.modalities: list[str] = spec["modalities"]
        self.fill = {m: arrays[f"fill_{m}"] for m in self.modalities}
        self.weights: dict[str, float] = spec["modality_weights"]
        self.popularity_weight: float = spec["popularity_weight"]
        self.ridge = (
            (arrays["ridge_coef"], float(arrays["ridge_intercept"][0]))
            if ("ridge_coef" in arrays)
            else None
        )
        self.gbdt = None
        if spec.get("popularity_model", "ridge") == "gbdt" and self.popularity_weight > 0:
            import joblib

            self.gbdt = joblib.load(folder / "popularity.joblib")
        self._text_encoder = None

    def encode(self, items: pd.DataFrame) -> tuple[np.ndarray, None]:
        """items: ``item_id`` + content columns → ``(N, D)`` float32 item vectors."""
        features = build_item_features(
            items.reset_index(drop=True),
            self.config,
            cache_dir=None,
            tabular_encoder=self.tabular,
            text_encoder=self._text_model(),
        )
        ordered = {m: features[m] for m in self.modalities}
        x = content_item_matrix(ordered, self.weights, self.fill)
        if self.popularity_weight > 0 and (self.ridge is not None or self.gbdt is not None):
            if self.gbdt is not None:
                pop = self.gbdt.predict(raw_feature_matrix(ordered))
            else:
                coef, intercept = self.ridge
                pop = x @ coef + intercept
            x = np.concatenate([x, self.popularity_weight * pop[:, None]], axis=1)
        return x.astype(np.float32), None

    def _text_model(self):
        if self.config.text is None:
            return None
        if self._text_encoder is None:  # load the sentence model once per process
            from recsys.features.text import TextEncoder

            self._text_encoder = TextEncoder(self.config.text)
        return self._text_encoder


@register_item_encoder("content")
def load(folder: Path) -> ContentItemEncoder:
    return ContentItemEncoder(folder)
