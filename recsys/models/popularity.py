"""Most-popular baseline: every user gets the items with the most training interactions."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from recsys.config import StrictModel
from recsys.models.base import Recommender, TrainingGraph, register_model


class PopularityConfig(StrictModel):
    kind: Literal["popularity"] = "popularity"
    counts_from: Literal["train", "test-oracle"] = Field(
        default="train",
        description="test-oracle counts the test interactions themselves: a leaky reference"
        " point for cold-start (cold items have no training counts), never a model",
    )


@register_model("popularity", PopularityConfig)
class Popularity(Recommender):
    """Score = training interaction count, as a 1-d dot product (user vector = 1)."""

    trainable = False

    def __init__(self, config: PopularityConfig, graph: TrainingGraph) -> None:
        super().__init__()
        counts_np = graph.item_counts() if config.counts_from == "train" else graph.test_item_counts
        if counts_np is None:
            raise ValueError("popularity counts_from=test-oracle needs the test interactions")
        counts = torch.as_tensor(counts_np, dtype=torch.float32)
        self.register_buffer("item_counts", counts.unsqueeze(1))
        self.register_buffer("user_ones", torch.ones(graph.n_users, 1))

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_ones, self.item_counts
