"""Sampled propagation: a training step propagates over a sampled neighbourhood of its
batch's nodes instead of the whole graph, so that a step's cost follows the batch and the
fanouts, not the catalogue (``fanouts`` in LightGCN's config).

The sampling is GraphSAGE's node-wise scheme as PyG's ``NeighborSampler`` runs it (hop by
hop from the seeds; a node reached again is not expanded again), on the normalised
adjacency LightGCN already holds. PyG's own sampler needs ``pyg-lib`` or ``torch-sparse``,
neither of which ships a wheel for this torch, so the draw is a few vectorised torch ops;
the convolution on the sampled edges is PyG's ``LGConv``.

A node with at most ``fanout`` neighbours keeps all of them (its propagated row is exact);
one with more draws ``fanout`` uniformly (with replacement), each kept edge weighted by
``degree / fanout``, so a sampled layer is an unbiased estimate of the full one. With every
fanout at least the largest degree the seeds' readout is the full graph's.
"""

from __future__ import annotations

import dataclasses

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor, nn

from recsys.config import StrictModel


class FanoutFields(StrictModel):
    """The sampled-propagation setting of a graph model with ``layers``."""

    fanouts: list[PositiveInt] | None = Field(
        default=None,
        description="sampled propagation (recsys.models.sampling): neighbours drawn per node"
        " at each hop of a training step, one entry per layer; None: every step propagates"
        " over the whole graph (validation and scoring always do)",
    )

    @model_validator(mode="after")
    def _one_fanout_per_layer(self) -> FanoutFields:
        layers = getattr(self, "layers", None)
        if self.fanouts is not None and len(self.fanouts) != layers:
            raise ValueError(
                f"fanouts has {len(self.fanouts)} entries but layers is {layers}: "
                "give one fanout per layer"
            )
        return self


@dataclasses.dataclass
class SampledGraph:
    """A seeds' sampled neighbourhood: ``nodes (n,)`` global ids, the seeds first in their
    given order; edges ``source → target (e,)`` as positions in ``nodes``, with their
    weights ``weight (e,)``."""

    nodes: Tensor
    source: Tensor
    target: Tensor
    weight: Tensor

    @property
    def edge_index(self) -> Tensor:
        """``(2, e)``: PyG's layout (row 0 the source, row 1 the target)."""
        return torch.stack([self.source, self.target])


class NeighborSampler:
    """Draws :class:`SampledGraph` s from a fixed sparse CSR adjacency ``(N, N)`` whose row
    ``v`` holds the weights of the messages ``v`` receives (LightGCN's symmetric
    ``D^-1/2 A D^-1/2``)."""

    def __init__(self, adjacency: Tensor) -> None:
        self.crow = adjacency.crow_indices()
        self.col = adjacency.col_indices()
        self.values = adjacency.values()
        # global id → position in the sample being drawn (-1: not in it); reset after use
        self._slot = torch.full((adjacency.shape[0],), -1, dtype=torch.long, device=self.col.device)

    def sample(self, seeds: Tensor, fanouts: list[int]) -> SampledGraph:
        """``seeds (s,)``: distinct global ids; ``fanouts``: neighbours drawn per node, one
        entry per hop."""
        nodes, frontier = [seeds], seeds
        self._slot[seeds] = torch.arange(len(seeds), device=seeds.device)
        known = len(seeds)
        sources, targets, weights = [], [], []
        for fanout in fanouts:
            source, target, weight = self._draw(frontier, fanout)
            sources.append(source)
            targets.append(target)
            weights.append(weight)
            new = torch.unique(source[self._slot[source] < 0])  # reached for the first time
            self._slot[new] = torch.arange(known, known + len(new), device=new.device)
            known += len(new)
            nodes.append(new)
            frontier = new
        sample = SampledGraph(
            torch.cat(nodes),
            self._slot[torch.cat(sources)],
            self._slot[torch.cat(targets)],
            torch.cat(weights),
        )
        self._slot[sample.nodes] = -1
        return sample

    def _draw(self, targets: Tensor, fanout: int) -> tuple[Tensor, Tensor, Tensor]:
        """The sampled in-edges of ``targets (t,)``: global ``(source, target)`` ids and
        weights."""
        start = self.crow[targets]
        degree = self.crow[targets + 1] - start
        whole = degree <= fanout
        # nodes with few neighbours: every edge, position start + 0..degree-1
        count = degree[whole]
        whole_at = expand_ranges(start[whole], count)
        whole_target = torch.repeat_interleave(targets[whole], count)
        # the others: `fanout` uniform draws each, weighted degree / fanout
        many = ~whole
        n_many = int(many.sum())
        draws = torch.rand(n_many, fanout, device=targets.device) * degree[many, None]
        drawn_at = (start[many, None] + draws.long()).flatten()
        drawn_target = targets[many].repeat_interleave(fanout)
        scale = (degree[many].to(self.values.dtype) / fanout).repeat_interleave(fanout)
        at = torch.cat([whole_at, drawn_at])
        weight = self.values[at] * torch.cat([torch.ones_like(whole_at, dtype=scale.dtype), scale])
        return self.col[at], torch.cat([whole_target, drawn_target]), weight


def expand_ranges(start: Tensor, count: Tensor) -> Tensor:
    """``start (r,)``, ``count (r,)`` → the positions ``start[k] + 0 .. count[k] - 1`` of
    every range, in order, concatenated ``(count.sum(),)``."""
    first = torch.repeat_interleave(start - (torch.cumsum(count, 0) - count), count)
    return first + torch.arange(len(first), device=start.device)


def sampler_for(adjacency: Tensor) -> NeighborSampler:
    """The :class:`NeighborSampler` of a fixed ``adjacency``, built once and kept on the
    tensor itself (as its scipy copy is): a moved or rebuilt matrix is a new tensor, so
    its sampler is never stale."""
    sampler = adjacency.__dict__.get("_neighbor_sampler")
    if sampler is None:
        sampler = adjacency.__dict__["_neighbor_sampler"] = NeighborSampler(adjacency)
    return sampler


def sampled_readout(
    x: Tensor, adjacency: Tensor, convs: nn.ModuleList, seeds: Tensor, fanouts: list[int]
) -> Tensor:
    """The layer-mean readout of ``seeds (s,)`` (distinct global ids) over one draw of
    their neighbourhood in ``adjacency``: ``x (N, D)`` → ``(s, D)``."""
    sample = sampler_for(adjacency).sample(seeds, fanouts)
    return sampled_layer_mean(x, sample, convs, len(seeds))


def sampled_layer_mean(
    x: Tensor, sample: SampledGraph, convs: nn.ModuleList, n_seeds: int
) -> Tensor:
    """LightGCN's readout of the seeds, the mean of ``x, Âx, Â²x, ...`` over the sampled
    edges only (one PyG ``LGConv`` per layer, ``normalize=False``: the weights are the
    sample's). ``x (N, D)``: every node's layer-0 row → ``(n_seeds, D)``."""
    h = x.index_select(0, sample.nodes)  # (n, D)
    out = h
    edge_index = sample.edge_index
    for conv in convs:
        h = conv(h, edge_index, sample.weight)  # (n, D): nodes without in-edges get 0
        out = out + h
    return out[:n_seeds] / (len(convs) + 1)
