"""Serving-side item encoder of the one-stage DAS model (``RUN/item_encoder/``).

A new item goes through what a cold item goes through in training: frozen extractors →
the saved block transforms (PCA + scale), or the content vectors themselves for
``semantic_input: content`` → the item tower (fusion, residual quantizer, per-level code
embeddings) in eval mode → ``s_i`` and its codes (assigned with the codebooks as they
were when the IDs were frozen, if they were). Its final representation has no ID
embedding (it has no interactions): ``[γ s_i ; 0]`` in ``add`` mode;
``[Σ_l code_emb_l[c_l] / (layers + 1) ; κ s_i]`` in ``concat`` mode (κ:
``cold_semantic_weight``), then a next-item transition block's columns (zeros: a new
item has no ID row); in either mode, with ``popularity_weight``, the popularity the
saved ridge predicts from ``s_i`` (or the saved trees from the raw features,
``popularity_source: content``).
Its semantic ID is the tower's codes with suffix 0 (the serving layer disambiguates it
against the catalogue).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recsys.item_encoder import register_item_encoder
from recsys.models.content import raw_feature_matrix
from recsys.models.content_encoder import ContentVectors
from recsys.models.das.inputs import BlockTransform
from recsys.models.das.towers import SemanticTower
from recsys.models.fusion import FusionConfig
from recsys.models.quantizer import QuantizerConfig


class DASItemEncoder:
    def __init__(self, folder: Path) -> None:
        spec = json.loads((folder / "encoder.json").read_text())
        self.content_space = spec.get("semantic_input", "blocks") == "content"
        self.content = ContentVectors(folder, spec["modalities"], {})
        arrays = np.load(folder / "arrays.npz")
        self.blocks = list(spec["block_dims"])
        self.transforms = {}
        for name in self.blocks:
            if f"scale_{name}" not in arrays:  # content space without PCA: no transform
                continue
            mean = arrays[f"mean_{name}"] if f"mean_{name}" in arrays else None
            comps = arrays[f"components_{name}"] if f"components_{name}" in arrays else None
            self.transforms[name] = BlockTransform(float(arrays[f"scale_{name}"][0]), mean, comps)
        dims = {k: int(v) for k, v in spec["block_dims"].items()}
        self.concat = spec.get("semantic_combination", "add") == "concat"
        fusion = spec["fusion"]
        self.tower = SemanticTower(
            dims,
            None if fusion is None else FusionConfig.from_saved(fusion),
            QuantizerConfig.from_saved(spec["quantizer"]),
            sum(dims.values()) if self.content_space else int(spec["interest_dim"]),
            bool(spec["code_embeddings"]) and not self.concat,
        )
        state = torch.load(folder / "item_tower.pt", map_location="cpu", weights_only=True)
        for name in ("frozen", "frozen_books"):  # encoders saved before freezing existed
            state.setdefault(name, self.tower.state_dict()[name])
        self.tower.load_state_dict(state, strict=True)
        self.tower.eval()
        self.code_tables = [
            arrays[f"item_code_emb_{level}"]
            for level in range(self.tower.quantizer.levels)
            if f"item_code_emb_{level}" in arrays
        ]
        self.semantic_part = bool(spec.get("semantic_part", True))
        self.layers = int(spec.get("layers", 0))
        self.semantic_weight = float(spec["semantic_weight"])
        self.cold_semantic_weight = float(spec.get("cold_semantic_weight", 1.0))
        self.popularity = None  # the ridge on s_i (popularity_source: semantic)
        if "popularity_weights" in arrays:
            self.popularity = (arrays["popularity_weights"], float(arrays["popularity_bias"][0]))
        self.content_popularity = None  # the trees on raw features (popularity_source: content)
        if (folder / "popularity.joblib").exists():
            import joblib

            self.content_popularity = joblib.load(folder / "popularity.joblib")
        self.pop_dim = int(spec["pop_dim"])
        self.transition_dim = int(spec.get("transition_dim", 0))

    def encode(self, items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """items → ``(N, dim)`` float32 embeddings, ``(N, levels + 1)`` semantic IDs."""
        features = self.content.features(items)
        if self.content_space:
            x = self.content.vectors(features).astype(np.float32)
            if "content" in self.transforms:
                x = self.transforms["content"](x, np.ones(len(x), dtype=bool))
            inputs = {"content": (torch.as_tensor(x), torch.ones(len(x), dtype=torch.bool))}
        else:
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
        sids = torch.cat([codes, codes.new_zeros(len(codes), 1)], dim=1).numpy().astype(np.int64)
        if self.concat:
            # [collaborative ; semantic]: no ID embedding, so the collaborative part is the
            # code embeddings, through LightGCN's layer mean for a node without edges.
            c = np.zeros((len(codes), 0), dtype=np.float64)
            if self.code_tables:
                c = sum(t[codes[:, level].numpy()] for level, t in enumerate(self.code_tables))
                c = c / (self.layers + 1)
            # κ on the semantic half: a new item has no training interactions
            semantic = s.numpy() * self.cold_semantic_weight if self.semantic_part else None
            parts = [c] if semantic is None else [c, semantic]
            if self.transition_dim:  # next-item block: a new item has no ID row
                parts.append(np.zeros((len(codes), self.transition_dim)))
            parts += self._popularity(s, features)
            return np.concatenate(parts, axis=1).astype(np.float32), sids
        final = torch.cat([self.semantic_weight * s, s.new_zeros(len(s), self.pop_dim)], dim=1)
        final = np.concatenate([final.numpy(), *self._popularity(s, features)], axis=1)
        return final.astype(np.float32), sids

    def _popularity(self, s: torch.Tensor, features: dict) -> list[np.ndarray]:
        """``[(N, 1)]``, the predicted popularity column when the model has one, else ``[]``."""
        if self.content_popularity is not None:  # trees on the item's raw features
            return [self.content_popularity.predict(raw_feature_matrix(features))[:, None]]
        if self.popularity is not None:  # the ridge prediction from the semantic ID
            weights, bias = self.popularity
            return [(s.double().numpy() @ weights + bias)[:, None]]
        return []


@register_item_encoder("das")
def load(folder: Path) -> DASItemEncoder:
    return DASItemEncoder(folder)
