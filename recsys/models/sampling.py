"""Sampled propagation: a training step propagates over a sampled neighbourhood of its
batch's nodes instead of the whole graph, so that a step's cost follows the batch and the
fanouts, not the catalogue (``fanouts`` in LightGCN's config).

The sampling is GraphSAGE's node-wise scheme as PyG's ``NeighborSampler`` runs it (hop by
hop from the seeds; a node reached again is not expanded again), on the normalised
adjacency LightGCN already holds. PyG's own sampler needs ``pyg-lib`` or ``torch-sparse``,
neither of which ships a wheel for this torch, so the draw is a few vectorised torch ops.
Each layer is one sparse-dense product (PyG's ``spmm``, what ``LGConv`` runs on a sparse
adjacency) over the sampled edges it needs, trimmed as PyG's ``trim_to_layer`` trims: layer
``l`` of ``L`` only produces the rows of nodes within ``L - l`` hops of the seeds.

A node with at most ``fanout`` neighbours keeps all of them (its propagated row is exact);
one with more draws ``fanout`` uniformly (with replacement), each kept edge weighted by
``degree / fanout``, so a sampled layer is an unbiased estimate of the full one. With every
fanout at least the largest degree the seeds' readout is the full graph's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor
from torch_geometric.utils import spmm


@dataclasses.dataclass
class SampledGraph:
    """A seeds' sampled neighbourhood: ``nodes (n,)`` global ids, the seeds first in their
    given order, then each hop's new nodes (``within[k]``: how many nodes lie within ``k``
    hops, ``within[0]`` the seeds); edges ``source → target (e,)`` as positions in
    ``nodes``, with their weights ``weight (e,)``, ordered by target (so by hop: the first
    ``drawn[k]`` edges are those of hops 1..k, into the nodes within ``k - 1`` hops)."""

    nodes: Tensor
    source: Tensor
    target: Tensor
    weight: Tensor
    within: list[int]
    drawn: list[int]

    def adjacency(self, hops: int) -> Tensor:
        """Sparse CSR ``(within[hops - 1], within[hops])``: the edges of hops ``1..hops``,
        row ``v`` the weighted messages node ``v`` receives."""
        rows, cols, edges = self.within[hops - 1], self.within[hops], self.drawn[hops]
        target = self.target[:edges]
        crow = torch.zeros(rows + 1, dtype=torch.long, device=target.device)
        crow[1:] = torch.cumsum(torch.bincount(target, minlength=rows), 0)
        return torch.sparse_csr_tensor(
            crow, self.source[:edges], self.weight[:edges], (rows, cols)
        )


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
        device = seeds.device
        nodes, frontier = [seeds], seeds
        self._slot[seeds] = torch.arange(len(seeds), device=device)
        known = len(seeds)
        sources, targets, weights = [], [], []
        within, drawn = [known], [0]
        first = 0  # the frontier holds positions first .. known - 1, in order
        for fanout in fanouts:
            # each target's edges come out together: the edges are ordered by target as drawn
            source, target, weight = self._draw(frontier, fanout)
            targets.append(first + target)
            at = self._slot[source]  # position in the sample, -1: reached for the first time
            fresh = at < 0
            # new nodes in id order (as PyG numbers them); `inverse` places every edge
            new, inverse = torch.unique(source[fresh], return_inverse=True)
            at[fresh] = known + inverse
            self._slot[new] = torch.arange(known, known + len(new), device=device)
            first, known = known, known + len(new)
            sources.append(at)
            weights.append(weight)
            within.append(known)
            drawn.append(drawn[-1] + len(source))
            nodes.append(new)
            frontier = new
        sample = SampledGraph(
            torch.cat(nodes),
            torch.cat(sources),
            torch.cat(targets),
            torch.cat(weights),
            within,
            drawn,
        )
        self._slot[sample.nodes] = -1
        return sample

    def _draw(self, targets: Tensor, fanout: int) -> tuple[Tensor, Tensor, Tensor]:
        """The sampled in-edges of ``targets (t,)``, grouped by target in their order:
        global source ids, the target's index in ``targets``, and weights."""
        start = self.crow[targets]
        degree = self.crow[targets + 1] - start
        many = degree > fanout
        # a node with few neighbours keeps every edge, one with many draws `fanout`
        count = torch.where(many, fanout, degree)
        target = torch.repeat_interleave(torch.arange(len(targets), device=targets.device), count)
        # position start + 0..degree-1 for the edges kept whole, drawn ones replaced below
        at = expand_ranges(start, count)
        drawn_edge = many[target]
        n_many = int(many.sum())
        # `fanout` uniform draws each, weighted degree / fanout
        draws = torch.rand(n_many, fanout, device=targets.device) * degree[many, None]
        at[drawn_edge] = (start[many, None] + draws.long()).flatten()
        scale = torch.where(many, degree.to(self.values.dtype) / fanout, 1.0)
        return self.col[at], target, self.values[at] * scale[target]


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


Layer0 = Tensor | Callable[[Tensor], Tensor]  # a table (N, D), or global ids → their rows


def sampled_readout(x: Layer0, adjacency: Tensor, seeds: Tensor, fanouts: list[int]) -> Tensor:
    """The layer-mean readout of ``seeds (s,)`` (distinct global ids) over one draw of
    their neighbourhood in ``adjacency``, one layer per fanout: ``x (N, D)`` → ``(s, D)``."""
    sample = sampler_for(adjacency).sample(seeds, fanouts)
    return sampled_layer_mean(x, sample, len(seeds))


def sampled_layer_mean(x: Layer0, sample: SampledGraph, n_seeds: int) -> Tensor:
    """LightGCN's readout of the seeds, the mean of ``x, Âx, Â²x, ...`` over the sampled
    edges only, one layer per hop of the sample. ``x``: every node's layer-0 row ``(N, D)``,
    or a function giving the rows of the sampled nodes (so that only those are computed or
    read) → ``(n_seeds, D)``."""
    h = x(sample.nodes) if callable(x) else x.index_select(0, sample.nodes)  # (n, D)
    out = h[:n_seeds]
    layers = len(sample.within) - 1
    for layer in range(1, layers + 1):
        # (within[L-l], within[L-l+1]) @ (within[L-l+1], D): the rows later layers read
        h = spmm(sample.adjacency(layers - layer + 1), h, reduce="sum")
        out = out + h[:n_seeds]
    return out / (layers + 1)
