"""Models.  Built-in models register themselves when first asked for by kind."""

from recsys.models.base import (
    MODEL_REGISTRY,
    Recommender,
    TrainingGraph,
    build_model,
    model_kinds,
    model_spec,
    register_model,
)

__all__ = [
    "MODEL_REGISTRY",
    "Recommender",
    "TrainingGraph",
    "build_model",
    "model_kinds",
    "model_spec",
    "register_model",
]
