"""What a trained DAS model hands to serving: the anonymous user's query
(``RUN/history_query/``, :mod:`recsys.serve.history`) and the item encoder that embeds a
new item (``RUN/item_encoder/``, read by :mod:`recsys.models.das_encoder`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from recsys.models.graph import fold_in_segment
from recsys.models.transition import add_transition_segment

if TYPE_CHECKING:
    from recsys.models.das.model import DualAlignedSemanticIDs


def history_query(
    model: DualAlignedSemanticIDs,
) -> tuple[list[dict], dict[str, np.ndarray]] | None:
    """An anonymous user's query (``RUN/history_query/``) in concat mode: the user
    vector's formula without the user's own ID embedding (its propagated part folded
    in from their items, plus β × the recency-weighted history of collaborative item
    vectors; γ × that of semantic ones), the block's columns and the popularity
    weight λ. Add mode: the mean of their items (None), with λ on the popularity
    column when there is one."""
    if not model.concat:
        if model.config.popularity_weight <= 0:
            return None
        width = model.config.dim
        return [{"columns": [width, width + 1], "constant": model.config.popularity_weight}], {}
    cfg, d = model.config, model.config.dim
    with torch.no_grad():
        item_out = model.item_tower(None)
        ego = model._collaborative_item_ego(item_out)
        fold_in, arrays = fold_in_segment(model.propagation.fold_in_rows(model.user.weight, ego))
    segments: list[dict] = [fold_in]
    recency = {"pool": "items", "decay": cfg.history_decay, "window": None}
    if model.collab_history:
        segments.append({"columns": [0, d], **recency, "scale": cfg.user_history_weight})
    semantic = model.user_tower is not None or model.pool_history
    width = d + (item_out.quantized.shape[1] if semantic else 0)
    if model.pool_history:  # a user tower's semantic vector: left to the mean
        segments.append({"columns": [d, width], **recency, "scale": model.semantic_weight()})
    width = add_transition_segment(segments, arrays, model.transition, width)
    if cfg.popularity_weight > 0:
        segments.append({"columns": [width, width + 1], "constant": cfg.popularity_weight})
    return segments, arrays


def write_item_encoder(model: DualAlignedSemanticIDs, folder: Path) -> None:
    """What serving needs to embed a new item as training embeds a cold one: the
    content pipeline, the frozen block transforms, the item tower's weights (fusion,
    quantizer, code embeddings) and the final-representation settings (see
    ``recsys.models.das_encoder``)."""
    if model.features_config is None:
        return
    from recsys.models.content_encoder import write_content_vectors

    arrays = write_content_vectors(folder, model.features, model.features_config)
    if model.item_code_emb is not None:
        for level, emb in enumerate(model.item_code_emb):
            arrays[f"item_code_emb_{level}"] = emb.weight.detach().cpu().numpy()
    if model.content_popularity is not None:
        import joblib  # scikit-learn's own persistence, as the content model's encoder

        tmp = folder / "popularity.joblib.tmp"
        joblib.dump(model.content_popularity, tmp)
        tmp.replace(folder / "popularity.joblib")
    elif model.config.popularity_weight > 0:
        with torch.no_grad():
            ridge = model.popularity_ridge(model.item_tower(None).quantized.cpu().numpy())
        arrays["popularity_weights"] = ridge.coef_
        arrays["popularity_bias"] = np.array([ridge.intercept_])
    for name, t in model.item_transforms.items():
        arrays[f"scale_{name}"] = np.array([t.scale])
        if t.components is not None:
            arrays[f"mean_{name}"], arrays[f"components_{name}"] = t.mean, t.components
    np.savez(folder / "arrays.npz", **arrays)
    inputs = {f"x{i}" for i in range(len(model.item_tower.names))}
    inputs |= {f"p{i}" for i in range(len(model.item_tower.names))}
    inputs.add("frozen_codes")  # a new item is assigned by the (frozen) tower
    weights = {k: v for k, v in model.item_tower.state_dict().items() if k not in inputs}
    torch.save(weights, folder / "item_tower.pt")
    cfg = model.config
    spec = {
        "kind": "das",
        "module": "recsys.models.das_encoder",
        "modalities": list(model.features),
        "block_dims": {
            name: int(model.item_blocks[name][0].shape[1]) for name in model.item_tower.names
        },
        "fusion": None if model.item_tower.identity else cfg.item_fusion.model_dump(mode="json"),
        "semantic_input": cfg.semantic_input,
        "semantic_combination": cfg.semantic_combination,
        "semantic_part": model.user_tower is not None or model.pool_history,
        "layers": cfg.layers,
        "quantizer": cfg.item_quantizer.model_dump(mode="json"),
        "interest_dim": cfg.interest_dim,
        "pop_dim": cfg.pop_dim,
        "popularity_weight": cfg.popularity_weight,
        "popularity_source": cfg.popularity_source,
        "semantic_weight": model.semantic_weight(),
        "cold_semantic_weight": cfg.cold_semantic_weight,
        "transition_dim": cfg.transition_dim if model.transition is not None else 0,
        "code_embeddings": cfg.code_embeddings,
    }
    (folder / "encoder.json").write_text(json.dumps(spec, indent=2))
