"""Serving-side loader of the content model's item encoder (``RUN/item_encoder/``).

Embeds a new item exactly as training embedded the catalogue: the same frozen
extractors (text model, the saved tabular vocabulary), the same fill vector for a
missing modality, the same modality weights and popularity regressor.  The content
model has no semantic IDs, so ``encode`` returns None for them.

:class:`ContentVectors` (the frozen features → normalised content vector part) is shared
with the semantic-ID models' encoders, which quantize that vector.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.features.pipeline import FeaturesConfig, ItemFeatures, build_item_features
from recsys.features.tabular import TabularEncoder
from recsys.item_encoder import register_item_encoder
from recsys.models.content import content_item_matrix, fill_vectors, raw_feature_matrix


def write_content_vectors(folder: Path, features: ItemFeatures, features_config) -> dict:
    """Write what :class:`ContentVectors` reads (features config, tabular vocabulary);
    returns the fill vectors as arrays to store in ``arrays.npz``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "features.json").write_text(features_config.model_dump_json(indent=2))
    if features.tabular_encoder is not None:
        features.tabular_encoder.save(folder / "tabular.json")
    return {f"fill_{name}": vector for name, vector in fill_vectors(features).items()}


class ContentVectors:
    """New items' content → the normalised content vectors the model was trained on."""

    def __init__(self, folder: Path, modalities: list[str], weights: dict[str, float]):
        self.config = FeaturesConfig.model_validate_json((folder / "features.json").read_text())
        tab = folder / "tabular.json"
        self.tabular = TabularEncoder.load(tab) if tab.exists() else None
        arrays = np.load(folder / "arrays.npz")
        self.modalities = modalities
        self.fill = {m: arrays[f"fill_{m}"] for m in modalities}
        self.weights = weights
        self._text_encoder = None

    def features(self, items: pd.DataFrame) -> dict:
        features = build_item_features(
            items.reset_index(drop=True),
            self.config,
            cache_dir=None,
            tabular_encoder=self.tabular,
            text_encoder=self._text_model(),
        )
        return {m: features[m] for m in self.modalities}

    def vectors(self, features: dict) -> np.ndarray:
        """``(N, D)`` float64 content vectors (see ``content_item_matrix``)."""
        return content_item_matrix(features, self.weights, self.fill)

    def _text_model(self):
        if self.config.text is None:
            return None
        if self._text_encoder is None:  # load the sentence model once per process
            from recsys.features.text import TextEncoder

            self._text_encoder = TextEncoder(self.config.text)
        return self._text_encoder


class ContentItemEncoder:
    def __init__(self, folder: Path) -> None:
        spec = json.loads((folder / "encoder.json").read_text())
        self.content = ContentVectors(folder, spec["modalities"], spec["modality_weights"])
        arrays = np.load(folder / "arrays.npz")
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

    def encode(self, items: pd.DataFrame) -> tuple[np.ndarray, None]:
        """items: ``item_id`` + content columns → ``(N, D)`` float32 item vectors."""
        features = self.content.features(items)
        x = self.content.vectors(features)
        if self.popularity_weight > 0 and (self.ridge is not None or self.gbdt is not None):
            if self.gbdt is not None:
                pop = self.gbdt.predict(raw_feature_matrix(features))
            else:
                coef, intercept = self.ridge
                pop = x @ coef + intercept
            x = np.concatenate([x, self.popularity_weight * pop[:, None]], axis=1)
        return x.astype(np.float32), None


@register_item_encoder("content")
def load(folder: Path) -> ContentItemEncoder:
    return ContentItemEncoder(folder)
