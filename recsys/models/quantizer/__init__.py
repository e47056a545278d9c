"""Semantic IDs from item content embeddings: RQ-VAE and RQ-KMeans residual quantizers.

>>> q = build_quantizer(QuantizerConfig(kind="rqkmeans")).fit(embeddings)
>>> sids = assign_semantic_ids(q.encode(embeddings))   # (N, L+1), collision free
"""

from recsys.models.quantizer.config import QuantizerConfig
from recsys.models.quantizer.core import QuantizerOutput, ResidualQuantizer
from recsys.models.quantizer.ids import (
    SemanticIDMap,
    assign_semantic_ids,
    build_id_maps,
    codebook_stats,
)
from recsys.models.quantizer.kmeans import kmeans_centroids, pairwise_sq_dists, sinkhorn_assign
from recsys.models.quantizer.models import (
    RQVAE,
    RQKMeans,
    RQVAENet,
    RQVAEOutput,
    SemanticIDQuantizer,
    build_quantizer,
    load_quantizer,
)

__all__ = [
    "QuantizerConfig",
    "QuantizerOutput",
    "ResidualQuantizer",
    "RQKMeans",
    "RQVAE",
    "RQVAENet",
    "RQVAEOutput",
    "SemanticIDMap",
    "SemanticIDQuantizer",
    "assign_semantic_ids",
    "build_id_maps",
    "build_quantizer",
    "codebook_stats",
    "kmeans_centroids",
    "load_quantizer",
    "pairwise_sq_dists",
    "sinkhorn_assign",
]
