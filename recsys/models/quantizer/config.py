"""Configuration of the semantic-ID quantizers (RQ-VAE and RQ-KMeans)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recsys.config import StrictModel


class QuantizerConfig(StrictModel):
    """Settings shared by both quantizer variants.

    ``kind="rqvae"``: MLP encoder -> :class:`ResidualQuantizer` -> MLP decoder, trained with
    reconstruction + codebook + beta * commitment loss. ``kind="rqkmeans"``: residual k-means
    in the input space (FAISS per level), no networks; ``code_dim``, ``hidden_dims``,
    ``beta``, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``ema_decay`` and
    ``dead_code_steps`` are ignored.
    """

    kind: Literal["rqvae", "rqkmeans"] = "rqvae"
    levels: int = Field(3, ge=1, le=16)
    codebook_size: int = Field(256, ge=2)
    code_dim: int = Field(32, ge=1)
    hidden_dims: list[int] = Field(default_factory=lambda: [256, 128])
    beta: float = Field(0.25, ge=0.0)
    # "ema": codebooks are buffers updated by exponential moving averages of assigned
    # residuals (robust, independent of the outer optimiser); "grad": nn.Parameter
    # trained by the codebook loss ||sg(r) - e||^2 (the original VQ-VAE/RQ-VAE recipe).
    codebook_update: Literal["ema", "grad"] = "ema"
    ema_decay: float = Field(0.99, gt=0.0, lt=1.0)
    epochs: int = Field(50, ge=0)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = 0
    # A code not chosen by any item for this many consecutive training steps is re-seeded
    # from the batch items with the largest quantisation error at its level. 0 disables.
    dead_code_steps: int = Field(100, ge=0)
    # Balanced (Sinkhorn optimal-transport) assignment at the last level while training
    # (RQ-VAE) or as a balanced k-means refinement of the last level (RQ-KMeans).
    # Encoding is always the nearest code (argmin): an item's ID is a function of the item
    # alone, so encoding subsets or new items never changes existing IDs.
    sinkhorn_last_level: bool = True
    sinkhorn_iters: int = Field(50, ge=1)
    sinkhorn_epsilon: float = Field(0.05, gt=0.0)
    kmeans_iters: int = Field(25, ge=1)
    # k-means initialisation uses at most this many items (a seeded random subset).
    kmeans_max_points: int = Field(65536, ge=2)
    encode_batch_size: int = Field(8192, ge=1)

    @classmethod
    def from_saved(cls, data: dict) -> QuantizerConfig:
        """The config saved with an artifact (``quantizer.pt``, a DAS item encoder); one
        written before ``sinkhorn_at_encode`` was removed (issue 29) has it False, the
        only behaviour left."""
        if data.get("sinkhorn_at_encode") is False:
            data = {k: v for k, v in data.items() if k != "sinkhorn_at_encode"}
        return cls.model_validate(data)

    @model_validator(mode="after")
    def _check(self) -> QuantizerConfig:
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must be positive, got {self.hidden_dims}")
        return self
