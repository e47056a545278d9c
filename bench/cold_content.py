"""Shared by the cold-10 bench scripts: the split and the content-model item matrix."""

from __future__ import annotations

import numpy as np

from recsys.data.dataset import DataConfig, SplitDataset, load_dataset
from recsys.features.pipeline import build_item_features
from recsys.features.presets import default_features
from recsys.models.content import content_item_matrix
from recsys.train.runner import feature_cache_dir


def cold10_content(dataset: str) -> tuple[SplitDataset, np.ndarray]:
    """``dataset``'s `cold-10` split and its ``(n_items, D)`` normalised content matrix
    (default features, every modality weight 1, as the content model builds it)."""
    ds = load_dataset(DataConfig(dataset=dataset, split="cold-10"))
    features = build_item_features(
        ds.item_table, default_features(dataset), cache_dir=feature_cache_dir()
    )
    return ds, content_item_matrix(features, {})
