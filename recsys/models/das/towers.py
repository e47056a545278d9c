"""DAS's semantic towers: an entity's frozen input blocks → fusion → residual quantizer
(→ + code embeddings). :class:`SemanticTower` is what serving runs on a new item
(``recsys.models.das_encoder``); :class:`InputTower` is the training model's, which holds
its rows' inputs and can freeze their semantic IDs.

This module must stay importable without the training model or torch-geometric: the
serving encoder imports it.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from recsys.models.fusion import FusionConfig, ModalityFusion
from recsys.models.quantizer import QuantizerConfig, ResidualQuantizer
from recsys.models.quantizer.core import QuantizerOutput, pairwise_sq_dists


class BlockConcat(nn.Module):
    """The identity "fusion": input blocks side by side, absent rows as zeros."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names

    def forward(self, inputs: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        parts = [inputs[n][0].float() * inputs[n][1].to(torch.float32)[:, None] for n in self.names]
        return torch.cat(parts, dim=1)


class SemanticTower(nn.Module):
    """Fusion → residual quantizer (→ + code embeddings): an entity's semantic side, from
    its frozen input blocks. Shared by training (:class:`InputTower`) and serving (the DAS
    item encoder), so both compute ``s`` the same way.

    Once frozen (:meth:`InputTower.freeze`), codes are assigned with the codebooks as they
    were at the freeze (``frozen_books``), whatever the codebooks learn afterwards, and
    nothing upstream of the codes trains any more."""

    def __init__(
        self,
        dims: dict[str, int],
        fusion: FusionConfig | None,
        quantizer: QuantizerConfig,
        out_dim: int,
        code_embeddings: bool = False,
    ):
        super().__init__()
        self.identity = fusion is None
        if self.identity:  # quantize the input blocks themselves (content space)
            if out_dim != sum(dims.values()):
                raise ValueError(f"identity tower: out_dim {out_dim} != input dims {dims}")
            self.fusion = BlockConcat(list(dims))
        else:
            self.fusion = ModalityFusion(dims, fusion.model_copy(update={"output_dim": out_dim}))
        self.quantizer = ResidualQuantizer.from_config(quantizer, out_dim)
        self.code_emb = None
        if code_embeddings:  # learned per-level tables indexed by the (current) codes
            self.code_emb = nn.ModuleList(
                nn.Embedding(quantizer.codebook_size, out_dim) for _ in range(quantizer.levels)
            )
            for emb in self.code_emb:
                nn.init.zeros_(emb.weight)
        self.register_buffer("frozen", torch.tensor(False))
        self.register_buffer("frozen_books", torch.zeros_like(self.quantizer.codebooks.data))

    def embed(self, inputs: dict[str, tuple[Tensor, Tensor]]):
        """inputs ``{block: ((B, D_b), present (B,))}`` → QuantizerOutput; its
        ``quantized`` ``(B, d)`` is the straight-through codeword sum (an identity tower,
        which has nothing upstream to train: the codeword sum itself, differentiable
        with respect to "grad" codebooks), plus Σ_l code_emb_l[c_l] when enabled."""
        if bool(self.frozen):
            with torch.no_grad():
                return self.from_codes(self.assign(self.fusion(inputs)))
        out = self.quantizer(self.fusion(inputs))
        if self.identity:
            out = dataclasses.replace(out, quantized=out.codewords)
        if self.code_emb is not None:
            extra = sum(emb(out.codes[:, level]) for level, emb in enumerate(self.code_emb))
            out = dataclasses.replace(out, quantized=out.quantized + extra)
        return out

    @torch.no_grad()
    def eval_fusion(self, inputs: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
        """``(B, d)``: the fusion without its (modality) dropout, whatever the mode."""
        was = self.fusion.training
        self.fusion.eval()
        try:
            return self.fusion(inputs)
        finally:
            self.fusion.train(was)

    @torch.no_grad()
    def assign(self, z: Tensor) -> Tensor:
        """``(B, d)`` → codes ``(B, L)``: nearest codes, with the frozen codebooks once
        frozen."""
        if not bool(self.frozen):
            return self.quantizer.encode(z)
        codes, residual = [], z
        for book in self.frozen_books:
            c = pairwise_sq_dists(residual, book).argmin(1)
            codes.append(c)
            residual = residual - book[c]
        return torch.stack(codes, 1)

    def from_codes(self, codes: Tensor, codewords: Tensor | None = None) -> QuantizerOutput:
        """A frozen tower's output for given codes: codeword sum (trains "grad"
        codebooks, if any; ``codewords``: that sum, already decoded) + code embeddings;
        no quantizer loss."""
        quantized = self.quantizer.decode(codes) if codewords is None else codewords
        if self.code_emb is not None:
            quantized = quantized + sum(
                emb(codes[:, level]) for level, emb in enumerate(self.code_emb)
            )
        zero = quantized.new_zeros(())
        return QuantizerOutput(quantized, codes, zero, zero, zero, quantized.new_zeros(0))


ROWS_AT_ONCE = 65_536  # rows the code assignment of every row takes at once: a level's
# (rows, codebook) distance tables ~64 MB each, not 1 GB each at a million rows


class InputTower(SemanticTower):
    """A :class:`SemanticTower` that holds its frozen inputs (as buffers)."""

    def __init__(
        self,
        blocks,
        fusion: FusionConfig | None,
        quantizer: QuantizerConfig,
        out_dim: int,
        code_embeddings: bool = False,
    ):
        dims = {name: int(x.shape[1]) for name, (x, _) in blocks.items()}
        super().__init__(dims, fusion, quantizer, out_dim, code_embeddings)
        self.names = list(blocks)
        self._store_inputs(blocks)
        # content rows, never changed by training: multi-process training need not copy
        # them between processes (recsys.train.distributed.skip_constant_buffers)
        self.input_buffers = [f"{x}{i}" for i in range(len(self.names)) for x in "xp"]
        # k-means initialisation on every row (not just a first batch), so that the codes
        # are defined from the start, including for evaluation before any training step.
        self.quantizer.init_codebooks(self._fused_all())
        # Set by freeze(); a buffer, so that a checkpoint restores the frozen IDs exactly.
        n = len(blocks[self.names[0]][0])
        self.register_buffer("frozen_codes", torch.zeros(n, quantizer.levels, dtype=torch.long))
        self._decoded: tuple[tuple, Tensor] | None = None  # see _frozen_codewords

    def inputs(self, rows: Tensor | None) -> dict[str, tuple[Tensor, Tensor]]:
        out = {}
        for i, name in enumerate(self.names):
            x, p = getattr(self, f"x{i}"), getattr(self, f"p{i}")
            out[name] = (x, p) if rows is None else (x[rows], p[rows])
        return out

    def forward(self, rows: Tensor | None = None):
        """rows ``(B,)`` (None: all) → :meth:`SemanticTower.embed` of their inputs (once
        frozen: of their stored codes, which is the same and cheaper)."""
        if not bool(self.frozen):
            return self.embed(self.inputs(rows))
        if rows is None:
            return self.from_codes(self.frozen_codes, self._frozen_codewords())
        return self.from_codes(self.frozen_codes[rows])

    def _frozen_codewords(self) -> Tensor | None:
        """``(N, d)``: every row's frozen codeword sum, decoded once and kept while neither
        the codes nor the codebooks change (EMA codebooks stop moving once frozen: the
        sums were recomputed at every step, ~3% of a Beauty DAS step); None when the
        codebooks train by gradient, in evaluation too: they move at every step, and the
        fused Adam step updates them without bumping their version counter, so a sum kept
        for evaluation went stale unseen (validation scored epoch 1's codebooks)."""
        books = self.quantizer.codebooks
        if books.requires_grad:
            return None
        codes = self.frozen_codes
        key = (id(codes), codes._version, id(books), books._version)
        if self._decoded is None or self._decoded[0] != key or self._decoded[1]._version:
            self._decoded = (key, self.quantizer.decode(codes).detach())
        return self._decoded[1]

    def _store_inputs(self, blocks) -> None:
        for i, name in enumerate(self.names):
            if name in blocks:
                x, present = blocks[name]
                self.register_buffer(f"x{i}", torch.as_tensor(x))
                self.register_buffer(f"p{i}", torch.as_tensor(present))

    def _fused_all(self) -> Tensor:
        """``(N, d)``: the eval-mode fusion of every row (no dropout). In one pass: a
        fused network's products over row chunks differ from the whole's in the last bit."""
        return self.eval_fusion(self.inputs(None))

    @torch.no_grad()
    def revive_unused_codes(self) -> int:
        """A dataset-wide dead-code reset over every row (none once frozen) → how many
        codes were re-seeded: :meth:`ResidualQuantizer.split_unused`, each new code's
        embedding row starting as its source code's, so the rows it takes over keep their
        code embedding."""
        if bool(self.frozen):
            return 0
        moves = self.quantizer.split_unused(self._fused_all())
        if self.code_emb is not None:
            for level, target, source in moves:
                weight = self.code_emb[level].weight
                weight[target] = weight[source]
        return len(moves)

    @torch.no_grad()
    def _all_codes(self) -> Tensor:
        """``(N, L)``: every row's codes, assigned in row chunks (each row's distances are
        the whole pass's, bit for bit)."""
        return torch.cat([self.assign(z) for z in self._fused_all().split(ROWS_AT_ONCE)])

    @torch.no_grad()
    def set_inputs(self, blocks) -> None:
        """Replace some input blocks ``{name: (x, present)}`` (a user's history at test
        time); frozen codes follow them, assigned by the frozen tower."""
        self._store_inputs(blocks)
        if bool(self.frozen):
            self.frozen_codes.copy_(self._all_codes())

    @torch.no_grad()
    def codes(self) -> Tensor:
        return self.frozen_codes.clone() if bool(self.frozen) else self._all_codes()

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix the semantic IDs for good: re-fit the codebooks by residual k-means on the
        tower's current outputs over every row (balanced last level, as RQ-KMeans), so
        that the frozen IDs use every code the data allows (the code embeddings, indexed
        by the codes they replace, restart from zero); from now on codes are assigned
        with these codebooks, and the fusion no longer trains."""
        z = self._fused_all()
        self.quantizer.init_codebooks(z)
        self.quantizer.balance_last_level(z, self.quantizer.kmeans_iters)
        if self.code_emb is not None:
            for emb in self.code_emb:
                emb.weight.zero_()
        self.frozen_books.copy_(self.quantizer.codebooks)
        self.frozen.fill_(True)
        self.frozen_codes.copy_(self._all_codes())
