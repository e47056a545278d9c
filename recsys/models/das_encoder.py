"""Serving-side item encoder of the one-stage DAS model (``RUN/item_encoder/``).

A new item goes through what a cold item goes through in training: frozen extractors →
the saved block transforms (PCA + scale) → the item tower (fusion, residual quantizer,
per-level code embeddings) in eval mode → ``s_i``; its final representation is
``[γ s_i ; 0]`` (no ID embedding: it has no interactions; divided by ``layers + 1`` when
the model propagates semantic embeddings, as LightGCN's layer mean does for a node
without edges), its semantic ID the tower's
codes with suffix 0 (the serving layer disambiguates it against the catalogue).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recsys.models.content_encoder import ContentVectors
from recsys.models.das import BlockTransform, SemanticTower
from recsys.models.fusion import FusionConfig
from recsys.models.quantizer import QuantizerConfig
from recsys.serve.content import register_item_encoder


class DASItemEncoder:
    def __init__(self, folder: Path) -> None:
        spec = json.loads((folder / "encoder.json").read_text())
        self.content = ContentVectors(folder, spec["modalities"], {})
        arrays = np.load(folder / "arrays.npz")
        self.blocks = list(spec["block_dims"])
        self.transforms = {}
        for name in self.blocks:
            mean = arrays[f"mean_{name}"] if f"mean_{name}" in arrays else None
            comps = arrays[f"components_{name}"] if f"components_{name}" in arrays else None
            self.transforms[name] = BlockTransform(float(arrays[f"scale_{name}"][0]), mean, comps)
        self.tower = SemanticTower(
            {k: int(v) for k, v in spec["block_dims"].items()},
            FusionConfig.model_validate(spec["fusion"]),
            QuantizerConfig.model_validate(spec["quantizer"]),
            int(spec["interest_dim"]),
            bool(spec["code_embeddings"]),
        )
        state = torch.load(folder / "item_tower.pt", map_location="cpu", weights_only=True)
        self.tower.load_state_dict(state, strict=True)
        self.tower.eval()
        self.semantic_weight = float(spec["semantic_weight"])
        self.pop_dim = int(spec["pop_dim"])
        self.layer_mean = 1.0 / (int(spec.get("propagated_layers", 0)) + 1)

    def encode(self, items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """items → ``(N, dim)`` float32 embeddings, ``(N, levels + 1)`` semantic IDs."""
        features = self.content.features(items)
        inputs = {
            name: (
                torch.as_tensor(self.transforms[name](*features[name])),
                torch.as_tensor(np.asarray(features[name][1], dtype=bool)),
            )
            for name in self.blocks
        }
        with torch.no_grad():
            out = self.tower.embed(inputs)
        s, codes = out.quantized, out.codes
        final = torch.cat([self.semantic_weight * s, s.new_zeros(len(s), self.pop_dim)], dim=1)
        final = final * self.layer_mean
        sids = torch.cat([codes, codes.new_zeros(len(codes), 1)], dim=1)
        return final.numpy().astype(np.float32), sids.numpy().astype(np.int64)


@register_item_encoder("das")
def load(folder: Path) -> DASItemEncoder:
    return DASItemEncoder(folder)
