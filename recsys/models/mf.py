"""Matrix factorisation trained with BPR (or in-batch softmax)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from recsys.config import StrictModel
from recsys.models.base import Recommender, TrainingGraph, register_model
from recsys.models.losses import bpr_loss, in_batch_softmax_loss, l2_penalty


class PairwiseConfig(StrictModel):
    """Embedding size and the ranking loss shared by MF, LightGCN and the two-stage model."""

    dim: int = 64
    reg: float = 1e-4
    loss: Literal["bpr", "softmax"] = "bpr"
    temperature: float = 0.2


class MFConfig(PairwiseConfig):
    kind: Literal["mf"] = "mf"


def pairwise_loss(
    config: PairwiseConfig, user: Tensor, pos: Tensor, neg: Tensor | None, reg_terms: list[Tensor]
) -> dict[str, Tensor]:
    """Shared by MF, LightGCN and the two-stage model.

    user, pos: ``(B, D)``; neg: ``(B, N, D)`` or None.
    """
    if config.loss == "bpr":
        if neg is None:
            raise ValueError(
                "loss 'bpr' needs sampled negatives (trainer.sampling.negatives: sampled)"
            )
        rec = bpr_loss((user * pos).sum(-1), (user.unsqueeze(1) * neg).sum(-1))
    else:
        rec = in_batch_softmax_loss(
            nn.functional.normalize(user, dim=-1),
            nn.functional.normalize(pos, dim=-1),
            config.temperature,
        )
    reg = config.reg * l2_penalty(*reg_terms)
    return {"loss": rec + reg, "rec_loss": rec, "reg_loss": reg}


@register_model("mf", MFConfig)
class MatrixFactorization(Recommender):
    def __init__(self, config: MFConfig, graph: TrainingGraph) -> None:
        super().__init__()
        self.config = config
        self.user = nn.Embedding(graph.n_users, config.dim)
        self.item = nn.Embedding(graph.n_items, config.dim)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user.weight, self.item.weight

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        u = self.user(batch["users"])
        p = self.item(batch["pos_items"])
        n = self.item(batch["neg_items"]) if "neg_items" in batch else None
        reg_terms = [u, p] + ([n.flatten(0, 1)] if n is not None else [])
        return pairwise_loss(self.config, u, p, n, reg_terms)
