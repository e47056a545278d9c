#!/usr/bin/env python
"""Print docs/das-settings.md's table: every DAS setting, its default and which shipped
configs (every YAML under configs/ whose model is DAS, resolved through ``base:``) set a
value other than the default.

    python bench/das_settings.py > /tmp/table.md

Nested settings (loss weights, quantizers, fusions) are listed as ``parent.field``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel

from recsys.models.das import DASConfig
from recsys.train.config import load_run_config

ROOT = Path(__file__).resolve().parents[1]


def flat(model: BaseModel, prefix: str = "") -> dict[str, object]:
    """``{dotted field: value}`` over the config and its nested settings."""
    out: dict[str, object] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out.update(flat(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


# one line for the settings whose field carries no description
SHORT = {
    "kind": "model kind",
    "dim": "width D of the collaborative embeddings",
    "layers": "LightGCN propagation layers",
    "temperature": "InfoNCE temperature of the alignment and co-occurrence terms",
    "weights.rec": "weight of the BPR recommendation loss",
    "weights.quant": "weight of the quantizers' commitment/codebook losses",
    "weights.align_dual": "weight of InfoNCE s_u ↔ e_i^int and e_u^int ↔ s_i",
    "weights.align_self": "weight of InfoNCE s_i ↔ e_i^int and s_u ↔ e_u^int",
    "weights.cooc": "weight of InfoNCE between items sharing a user (users sharing an item)",
    "weights.debias_pop": "weight of the conformity factor's popularity regression",
    "weights.debias_orth": "weight of the conformity ⟂ interest term",
    "weights.reg": "L2 on the batch's ego embeddings",
    "fusion.hidden_dim": "fusion MLP hidden width",
    "fusion.output_dim": "fusion output width (DAS sets it to the semantic width)",
    "fusion.dropout": "fusion MLP dropout",
    "fusion.modality_dropout": "training-time probability of dropping a whole input block",
    "content_dim": "semantic_input content: PCA the content vectors to this many dimensions",
    "quantizer.kind": "quantizer trainer (DAS trains its quantizers jointly and ignores it)",
    "quantizer.levels": "residual quantizer levels L",
    "quantizer.codebook_size": "codes per level",
    "quantizer.beta": "commitment loss weight",
    "quantizer.codebook_update": "codebooks learned by EMA or by gradient",
    "quantizer.ema_decay": "EMA decay of the codebooks",
    "quantizer.seed": "k-means initialisation seed",
    "quantizer.dead_code_steps": "training-time restart of a code unused this many steps (0: off)",
    "quantizer.sinkhorn_last_level": "balanced (Sinkhorn) assignment at the last level in training",
    "quantizer.sinkhorn_iters": "Sinkhorn iterations",
    "quantizer.sinkhorn_epsilon": "Sinkhorn entropy",
    "quantizer.kmeans_iters": "k-means iterations of the initialisation and refit",
    "quantizer.kmeans_max_points": "rows sampled for k-means",
    "quantizer.code_dim": "RQ-VAE trainer only (unused by DAS)",
    "quantizer.hidden_dims": "RQ-VAE trainer only (unused by DAS)",
    "quantizer.epochs": "standalone quantizer training only (unused by DAS)",
    "quantizer.batch_size": "standalone quantizer training only (unused by DAS)",
    "quantizer.lr": "standalone quantizer training only (unused by DAS)",
    "quantizer.weight_decay": "standalone quantizer training only (unused by DAS)",
    "quantizer.encode_batch_size": "standalone quantizers' encode only (unused by DAS)",
}


def _short(key: str) -> str:
    """:data:`SHORT`'s line for a key, nested ones looked up by their last part."""
    if key in SHORT:
        return SHORT[key]
    head, _, last = key.rpartition(".")
    group = "fusion" if head.endswith("fusion") else "quantizer" if head else ""
    return SHORT.get(f"{group}.{last}", "")


def descriptions(model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """``{dotted field: one line}``: the field's description up to its first clause, or
    :data:`SHORT`'s."""
    out: dict[str, str] = {}
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out.update(descriptions(kind, f"{prefix}{name}."))
        else:
            text = " ".join((field.description or "").split())
            text = text.split(". ")[0].split("; ")[0].rstrip(".")
            out[f"{prefix}{name}"] = _short(f"{prefix}{name}") or text
    return out


def shipped() -> dict[str, DASConfig]:
    """``{path under configs/: resolved DAS config}``."""
    out = {}
    for path in sorted((ROOT / "configs").glob("**/*.yaml")):
        model = load_run_config(str(path)).model
        if model.kind == "das":
            out[str(path.relative_to(ROOT))] = model
    return out


def table() -> str:
    default = flat(DASConfig())
    about = descriptions(DASConfig)
    configs = {name: flat(cfg) for name, cfg in shipped().items()}
    lines = [
        "| setting | what it does | default | shipped configs with another value |",
        "|---|---|---|---|",
    ]
    for key, value in default.items():
        others = [f"`{n}` ({v[key]!r})" for n, v in configs.items() if v[key] != value]
        what = about.get(key, "").replace("|", "\\|")
        lines.append(f"| `{key}` | {what} | `{value!r}` | {', '.join(others) or '—'} |")
    return "\n".join(lines)


def main() -> int:
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
