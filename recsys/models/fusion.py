"""Trainable fusion of frozen item features into one item embedding.

Each modality ``m`` has a projection MLP ``D_m → hidden`` and a learned "missing"
embedding that replaces the projection wherever the modality's mask is False (the masked
input is zeroed before projecting, so whatever stands in it, even NaN, has no effect).
The projected modalities are concatenated → MLP → ``output_dim``.

Modality dropout (training only) hides each present modality with probability
``modality_dropout`` but never all of an item's present modalities.

Input: ``{modality: (features (B, D_m) float, present (B,) bool)}`` as produced by
``recsys.features.pipeline.ItemFeatures.to_torch``. A configured modality absent from the
dict is treated as missing for the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field
from torch import Tensor, nn

from recsys.config import StrictModel


class FusionConfig(StrictModel):
    """Item-feature fusion: per-modality projections, concatenated, then an MLP."""

    hidden_dim: int = Field(default=256, ge=1)
    output_dim: int = Field(default=128, ge=1)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    modality_dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="training-time prob. of hiding a modality"
    )

    @classmethod
    def from_saved(cls, data: dict) -> FusionConfig:
        """The config saved with a DAS item encoder; one written before the gated fusion
        was removed (issue 29) names ``kind: concat``, the only fusion left."""
        if data.get("kind") == "concat":
            data = {k: v for k, v in data.items() if k != "kind"}
        return cls.model_validate(data)


def modality_dropout_mask(
    present: Tensor, p: float, generator: torch.Generator | None = None
) -> Tensor:
    """Drop each present entry of ``present`` (B, M) with probability ``p``; an item that
    had at least one present modality keeps at least one (chosen at random among them)."""
    present = present.bool()
    if p <= 0 or present.numel() == 0:
        return present
    rand = torch.rand(present.shape, generator=generator, device=present.device)
    kept = present & (rand >= p)
    emptied = present.any(dim=1) & ~kept.any(dim=1)
    if emptied.any():
        # rescue one originally present modality per emptied item, uniformly at random
        scores = torch.rand(present.shape, generator=generator, device=present.device)
        scores = scores.masked_fill(~present, -1.0)
        pick = scores.argmax(dim=1)
        rescue = torch.zeros_like(present)
        rescue[torch.arange(present.shape[0], device=present.device), pick] = True
        kept = kept | (rescue & emptied[:, None])
    return kept


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out)
    )


class ModalityFusion(nn.Module):
    """Fuse ``{modality: (features, present)}`` into ``(B, output_dim)`` item embeddings."""

    def __init__(self, input_dims: Mapping[str, int], config: FusionConfig | None = None):
        super().__init__()
        if not input_dims:
            raise ValueError("ModalityFusion needs at least one modality")
        for name, dim in input_dims.items():
            if not name or "." in name or int(dim) < 1:
                raise ValueError(f"bad modality {name!r} with input dim {dim}")
        self.config = config = config or FusionConfig()
        self.modalities = list(input_dims)
        self.input_dims = {m: int(d) for m, d in input_dims.items()}
        h = config.hidden_dim
        self.projections = nn.ModuleDict(
            {
                m: nn.Sequential(_mlp(d, h, h, config.dropout), nn.LayerNorm(h))
                for m, d in self.input_dims.items()
            }
        )
        # same scale as the LayerNorm-ed projections; never zeros
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.randn(h)) for m in self.modalities})
        self.head = _mlp(len(self.modalities) * h, h, config.output_dim, config.dropout)

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    def _batch(
        self, inputs: Mapping[str, tuple[Tensor, Tensor | None]]
    ) -> tuple[int, torch.device]:
        unknown = sorted(set(inputs) - set(self.modalities))
        if unknown:
            raise KeyError(
                f"unknown modalities {unknown}; this fusion was built for {self.modalities}"
            )
        for m in self.modalities:
            if m in inputs:
                x = inputs[m][0]
                return x.shape[0], x.device
        raise ValueError(f"no input for any of the modalities {self.modalities}")

    def project(self, inputs: Mapping[str, tuple[Tensor, Tensor | None]]) -> tuple[Tensor, Tensor]:
        """``(z (B, M, hidden), present (B, M))`` after missing-embedding substitution and
        (in training) modality dropout; modality order is ``self.modalities``."""
        batch, device = self._batch(inputs)
        masks = []
        for m in self.modalities:
            if m not in inputs:
                masks.append(torch.zeros(batch, dtype=torch.bool, device=device))
                continue
            x, mask = inputs[m]
            if x.ndim != 2 or x.shape != (batch, self.input_dims[m]):
                raise ValueError(
                    f"modality {m!r}: expected features of shape ({batch}, {self.input_dims[m]}), "
                    f"got {tuple(x.shape)}"
                )
            if mask is None:
                mask = torch.ones(batch, dtype=torch.bool, device=device)
            if mask.shape != (batch,):
                raise ValueError(
                    f"modality {m!r}: expected a mask of shape ({batch},), got {tuple(mask.shape)}"
                )
            masks.append(mask.to(device=device).bool())
        present = torch.stack(masks, dim=1)
        if self.training and self.config.modality_dropout > 0:
            present = modality_dropout_mask(present, self.config.modality_dropout)
        zs = []
        for j, m in enumerate(self.modalities):
            keep = present[:, j : j + 1]
            missing = self.missing[m].expand(batch, -1)
            if m not in inputs:
                zs.append(missing)
                continue
            x = inputs[m][0].float()
            x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
            zs.append(torch.where(keep, self.projections[m](x), missing))
        return torch.stack(zs, dim=1), present

    def forward(self, inputs: Mapping[str, tuple[Tensor, Tensor | None]]) -> Tensor:
        z, _ = self.project(inputs)
        return self.head(z.flatten(start_dim=1))
