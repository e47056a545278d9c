"""The sampled-propagation settings of a graph model (``fanouts``, ``sparse_updates``):
configuration only, apart from :mod:`recsys.models.sampling` so that loading a model's
config (serving does, for DAS's item encoder) never imports torch-geometric."""

from __future__ import annotations

from pydantic import Field, PositiveInt, model_validator

from recsys.config import StrictModel


class FanoutFields(StrictModel):
    """The sampled-propagation setting of a graph model with ``layers``."""

    fanouts: list[PositiveInt] | None = Field(
        default=None,
        description="sampled propagation (recsys.models.sampling): neighbours drawn per node"
        " at each hop of a training step, one entry per layer; None: every step propagates"
        " over the whole graph (validation and scoring always do)",
    )

    sparse_updates: bool = Field(
        default=False,
        description="with fanouts: a step reads its embedding rows with sparse gradients and"
        " Adam updates only those rows (lazy Adam, recsys.train.optim), so that a step's cost"
        " follows the batch, not the catalogue; False: every row every step (dense Adam)",
    )

    @model_validator(mode="after")
    def _one_fanout_per_layer(self) -> FanoutFields:
        layers = getattr(self, "layers", None)
        if self.fanouts is not None and len(self.fanouts) != layers:
            raise ValueError(
                f"fanouts has {len(self.fanouts)} entries but layers is {layers}: "
                "give one fanout per layer"
            )
        if self.sparse_updates and self.fanouts is None:
            raise ValueError(
                "sparse_updates needs fanouts: a whole-graph step reads every row anyway"
            )
        return self
