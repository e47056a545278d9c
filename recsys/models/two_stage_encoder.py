"""Serving-side item encoder of the two-stage semantic-ID model (``RUN/item_encoder/``).

A new item gets its semantic ID from the frozen quantizer applied to its content vector,
and the embedding a cold item gets in training: the sum of its per-level code embeddings,
the suffix-0 embedding (the one every item without a collision uses) and, when the model
has it, the content projection; then LightGCN's layer mean, which for a node without
edges divides the ego embedding by ``layers + 1``; then a next-item transition block's
columns: zeros (a new item has no ID row).
The semantic ID is returned with suffix 0; the serving layer disambiguates it against
the catalogue.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.item_encoder import register_item_encoder
from recsys.models.content_encoder import ContentVectors
from recsys.models.quantizer import load_quantizer


class TwoStageItemEncoder:
    def __init__(self, folder: Path) -> None:
        spec = json.loads((folder / "encoder.json").read_text())
        self.content = ContentVectors(folder, spec["modalities"], spec["modality_weights"])
        self.quantizer = load_quantizer(folder / "quantizer.pt")
        arrays = np.load(folder / "arrays.npz")
        self.code_emb = [arrays[f"code_emb_{level}"] for level in range(spec["levels"])]
        self.suffix = arrays["suffix_emb_0"]
        self.projection = arrays["projection"] if "projection" in arrays else None
        self.layers = int(spec["layers"])
        self.transition_dim = int(spec.get("transition_dim", 0))

    def encode(self, items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """items → ``(N, dim)`` float32 embeddings, ``(N, levels + 1)`` semantic IDs."""
        x = self.content.vectors(self.content.features(items)).astype(np.float32)
        codes = self.quantizer.encode(x).cpu().numpy()
        ego = np.tile(self.suffix, (len(x), 1)).astype(np.float64)
        for level, table in enumerate(self.code_emb):
            ego += table[codes[:, level]]
        if self.projection is not None:
            ego += x @ self.projection.T
        sids = np.concatenate([codes, np.zeros((len(x), 1), dtype=codes.dtype)], axis=1)
        block = np.zeros((len(x), self.transition_dim))  # next-item block: no ID row
        final = np.concatenate([ego / (self.layers + 1), block], axis=1)
        return final.astype(np.float32), sids.astype(np.int64)


@register_item_encoder("two_stage")
def load(folder: Path) -> TwoStageItemEncoder:
    return TwoStageItemEncoder(folder)
