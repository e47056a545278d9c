"""Most-popular baseline: every user gets the items with the most training interactions."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from recsys.config import StrictModel
from recsys.models.base import Recommender, TrainingGraph, register_model


class PopularityConfig(StrictModel):
    kind: Literal["popularity"] = "popularity"


@register_model("popularity", PopularityConfig)
class Popularity(Recommender):
    """Score = training interaction count, as a 1-d dot product (user vector = 1)."""

    trainable = False

    def __init__(self, config: PopularityConfig, graph: TrainingGraph) -> None:
        super().__init__()
        counts = torch.as_tensor(graph.item_counts(), dtype=torch.float32)
        self.register_buffer("item_counts", counts.unsqueeze(1))
        self.register_buffer("user_ones", torch.ones(graph.n_users, 1))

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_ones, self.item_counts
