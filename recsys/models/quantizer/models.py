"""RQ-VAE and RQ-KMeans behind one fit / encode / decode / save / load interface."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from recsys.errors import ArtifactError, DataError
from recsys.models.quantizer.config import QuantizerConfig
from recsys.models.quantizer.core import QuantizerOutput, ResidualQuantizer
from recsys.models.quantizer.ids import assign_semantic_ids, codebook_stats

FORMAT = "recsys.quantizer"
FORMAT_VERSION = 1


def _as_input(x: np.ndarray | Tensor, dim: int | None = None) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2:
        raise DataError(f"embeddings must be a 2-D (N, D) array, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise DataError("embeddings are empty (N = 0)")
    if dim is not None and t.shape[1] != dim:
        raise DataError(f"embeddings have {t.shape[1]} dimensions, the quantizer expects {dim}")
    t = t.detach().to("cpu", torch.float32)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(1).nonzero()[0])
        raise DataError(f"embeddings contain NaN or inf (first bad row: {bad})")
    return t


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class SemanticIDQuantizer:
    """Common interface: ``fit(x)``, ``encode(x)``, ``decode(codes)``, ``save``/``load``.

    ``history`` holds one flat dict of scalars per epoch (``codebook_stats`` plus
    ``recon_error``, ``residual_norm_l{l}`` and, for RQ-VAE, the mean training losses).
    Everything runs on CPU and is deterministic given ``config.seed``.
    """

    kind: ClassVar[str]

    def __init__(self, config: QuantizerConfig | None = None, **overrides: Any) -> None:
        cfg = config or QuantizerConfig(kind=self.kind)  # type: ignore[arg-type]
        if overrides:
            cfg = QuantizerConfig.model_validate({**cfg.model_dump(), **overrides})
        if cfg.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs kind={self.kind!r}, got {cfg.kind!r}")
        self.config = cfg
        self.input_dim: int | None = None
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ subclass hooks
    def fit(self, x: np.ndarray | Tensor) -> SemanticIDQuantizer:
        raise NotImplementedError

    def _build(self, input_dim: int) -> None:
        raise NotImplementedError

    def _module(self) -> nn.Module:
        """The nn.Module whose state_dict is saved."""
        raise NotImplementedError

    @property
    def quantizer(self) -> ResidualQuantizer:
        raise NotImplementedError

    def _latent(self, x: Tensor) -> Tensor:
        """Input (N, D) -> the space the residual quantizer works in."""
        return x

    def _from_latent(self, z: Tensor) -> Tensor:
        return z

    # ------------------------------------------------------------------ shared API
    @property
    def levels(self) -> int:
        return self.config.levels

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def is_fitted(self) -> bool:
        return self.input_dim is not None and bool(self.quantizer.initialized)

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(x) or load(path)")

    @torch.no_grad()
    def _latents(self, x: Tensor) -> Tensor:
        self._module().eval()
        bs = self.config.encode_batch_size
        return torch.cat([self._latent(x[i : i + bs]) for i in range(0, x.shape[0], bs)])

    @torch.no_grad()
    def encode(self, x: np.ndarray | Tensor) -> Tensor:
        """Codes (N, L) int64: each row's own nearest-code choice, independent of what
        else is encoded."""
        self._require_fitted()
        z = self._latents(_as_input(x, self.input_dim))
        q = self.quantizer
        bs = self.config.encode_batch_size
        return torch.cat([q.encode(z[i : i + bs]) for i in range(0, z.shape[0], bs)])

    @torch.no_grad()
    def decode(self, codes: Tensor | np.ndarray, n_levels: int | None = None) -> Tensor:
        """Reconstruction (N, D) in the input space from codes (N, L).

        Semantic IDs (N, L+1) are accepted too (the disambiguating column is ignored).
        ``n_levels`` uses only the first levels (a coarser reconstruction).
        """
        self._require_fitted()
        c = torch.as_tensor(codes)
        if c.dim() != 2 or c.shape[1] not in (self.levels, self.levels + 1):
            raise ValueError(
                f"codes must be (N, {self.levels}) or (N, {self.levels + 1}), got {tuple(c.shape)}"
            )
        self._module().eval()
        return self._from_latent(self.quantizer.decode(c[:, : self.levels], n_levels))

    def semantic_ids(self, x: np.ndarray | Tensor) -> Tensor:
        """``assign_semantic_ids(encode(x))``: collision-free IDs (N, L+1)."""
        return assign_semantic_ids(self.encode(x))

    @torch.no_grad()
    def stats(self, x: np.ndarray | Tensor) -> dict[str, float]:
        """``codebook_stats(encode(x))`` plus ``recon_error`` (squared error summed over
        dimensions, averaged over items, in the input space) and ``residual_norm_l{l}``
        (mean norm of what levels 0..l leave unexplained, in the quantizer's space)."""
        x = _as_input(x, self.input_dim)
        codes = self.encode(x)
        out = codebook_stats(codes, self.codebook_size)
        out["recon_error"] = float((self.decode(codes) - x).pow(2).sum(1).mean())
        residual = self._latents(x)
        for level in range(self.levels):
            residual = residual - self.quantizer.codebooks[level][codes[:, level]]
            out[f"residual_norm_l{level}"] = float(residual.norm(dim=1).mean())
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write config, input dim, weights/codebooks and history to one file (atomically)."""
        self._require_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "config": self.config.model_dump(),
            "input_dim": self.input_dim,
            "state_dict": {
                k: v.detach().cpu().clone() for k, v in self._module().state_dict().items()
            },
            "history": self.history,
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(blob, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | Path) -> SemanticIDQuantizer:
        """Load what :meth:`save` wrote; ``SemanticIDQuantizer.load`` dispatches on kind."""
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"quantizer file not found: {path}")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unpickling failure is the file's fault
            raise ArtifactError(f"{path}: not a readable quantizer file: {err}") from err
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ArtifactError(f"{path}: not a recsys quantizer file")
        if blob.get("version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{path}: quantizer format version {blob.get('version')}, "
                f"this recsys reads version {FORMAT_VERSION}"
            )
        target = _KINDS.get(blob.get("kind", ""))
        if target is None or not issubclass(target, cls):
            raise ArtifactError(
                f"{path}: holds a {blob.get('kind')!r} quantizer, not a {cls.__name__}"
            )
        obj = target(QuantizerConfig.from_saved(blob["config"]))
        obj._build(int(blob["input_dim"]))
        try:
            obj._module().load_state_dict(blob["state_dict"], strict=True)
        except RuntimeError as err:
            raise ArtifactError(f"{path}: weights do not match the config: {err}") from err
        obj._module().eval()
        obj.history = list(blob.get("history", []))
        return obj


# ---------------------------------------------------------------------------- RQ-VAE
@dataclass
class RQVAEOutput:
    x_hat: Tensor  # (B, D) reconstruction
    z: Tensor  # (B, d) encoder output
    quant: QuantizerOutput
    recon_loss: Tensor  # squared error summed over dimensions, averaged over the batch
    loss: Tensor  # recon_loss + codebook_loss + beta * commitment_loss


class RQVAENet(nn.Module):
    """MLP encoder -> ResidualQuantizer -> MLP decoder (mirror of the encoder)."""

    def __init__(self, input_dim: int, cfg: QuantizerConfig) -> None:
        super().__init__()
        dims = [input_dim, *cfg.hidden_dims, cfg.code_dim]
        self.encoder = _mlp(dims)
        self.decoder = _mlp(dims[::-1])
        self.quantizer = ResidualQuantizer.from_config(cfg, cfg.code_dim)

    def forward(self, x: Tensor) -> RQVAEOutput:
        z = self.encoder(x)
        q = self.quantizer(z)
        x_hat = self.decoder(q.quantized)
        recon = (x_hat - x).pow(2).sum(1).mean()
        return RQVAEOutput(x_hat=x_hat, z=z, quant=q, recon_loss=recon, loss=recon + q.loss)


class RQVAE(SemanticIDQuantizer):
    """RQ-VAE (TIGER): k-means-initialised residual codebooks on a learned MLP latent."""

    kind = "rqvae"

    def __init__(self, config: QuantizerConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.net: RQVAENet | None = None

    def _build(self, input_dim: int) -> None:
        self.input_dim = input_dim
        self.net = RQVAENet(input_dim, self.config)

    def _module(self) -> nn.Module:
        if self.net is None:
            raise RuntimeError("RQVAE is not fitted: call fit(x) or load(path)")
        return self.net

    @property
    def quantizer(self) -> ResidualQuantizer:
        if self.net is None:
            raise RuntimeError("RQVAE is not fitted: call fit(x) or load(path)")
        return self.net.quantizer

    def _latent(self, x: Tensor) -> Tensor:
        assert self.net is not None
        return self.net.encoder(x)

    def _from_latent(self, z: Tensor) -> Tensor:
        assert self.net is not None
        return self.net.decoder(z)

    def fit(self, x: np.ndarray | Tensor) -> RQVAE:
        """Train from scratch on ``x`` (N, D); the global torch RNG is left untouched."""
        cfg = self.config
        x = _as_input(x)
        n = x.shape[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self._build(x.shape[1])
        net = self.net
        assert net is not None
        gen = torch.Generator().manual_seed(cfg.seed)
        net.quantizer.init_codebooks(self._latents(x))
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.history = []
        for epoch in range(cfg.epochs):
            net.train()
            sums = {"loss": 0.0, "recon_loss": 0.0, "commitment_loss": 0.0, "codebook_loss": 0.0}
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                out = net(x[idx])
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
                b = idx.numel()
                sums["loss"] += float(out.loss.detach()) * b
                sums["recon_loss"] += float(out.recon_loss.detach()) * b
                sums["commitment_loss"] += float(out.quant.commitment_loss.detach()) * b
                sums["codebook_loss"] += float(out.quant.codebook_loss.detach()) * b
            row: dict[str, float] = {"epoch": float(epoch)}
            row.update({f"train_{k}": v / n for k, v in sums.items()})
            row.update(self.stats(x))
            self.history.append(row)
        net.eval()
        return self


# ---------------------------------------------------------------------------- RQ-KMeans
class RQKMeans(SemanticIDQuantizer):
    """Residual k-means in the input space (FAISS per level); decode = sum of centroids.

    With ``sinkhorn_last_level`` the last level is refined by balanced k-means (Sinkhorn
    assignment + centroid update, ``kmeans_iters`` rounds).
    """

    kind = "rqkmeans"

    def __init__(self, config: QuantizerConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self._q: ResidualQuantizer | None = None

    def _build(self, input_dim: int) -> None:
        self.input_dim = input_dim
        self._q = ResidualQuantizer.from_config(self.config, input_dim)

    def _module(self) -> nn.Module:
        return self.quantizer

    @property
    def quantizer(self) -> ResidualQuantizer:
        if self._q is None:
            raise RuntimeError("RQKMeans is not fitted: call fit(x) or load(path)")
        return self._q

    def fit(self, x: np.ndarray | Tensor) -> RQKMeans:
        cfg = self.config
        x = _as_input(x)
        self._build(x.shape[1])
        q = self.quantizer
        q.init_codebooks(x)
        if cfg.sinkhorn_last_level:
            q.balance_last_level(x, cfg.kmeans_iters)
        q.eval()
        self.history = [{"epoch": 0.0, **self.stats(x)}]
        return self


_KINDS: dict[str, type[SemanticIDQuantizer]] = {"rqvae": RQVAE, "rqkmeans": RQKMeans}


def build_quantizer(config: QuantizerConfig) -> SemanticIDQuantizer:
    """An unfitted RQVAE or RQKMeans for ``config.kind``."""
    return _KINDS[config.kind](config)


def load_quantizer(path: str | Path) -> SemanticIDQuantizer:
    """``SemanticIDQuantizer.load(path)``: whichever kind the file holds."""
    return SemanticIDQuantizer.load(path)
