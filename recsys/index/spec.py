"""What a FAISS index is built from (``IndexConfig``), what was built (``IndexMeta``, the JSON
beside ``RUN/index/<name>.faiss``) and how a config resolves to a factory string and
parameters for a catalogue (see ``recsys.index.faiss_index`` for the kinds)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from recsys.config import StrictModel
from recsys.errors import ConfigError, RecsysError

if TYPE_CHECKING:
    from recsys.artifacts import RunFolder

INDEX_FORMAT_VERSION = 1
IndexKind = Literal["flat", "ivf", "hnsw", "ivfpq", "factory"]


class IndexConfig(StrictModel):
    """What to build. ``None`` fields are scaled to the catalogue (see the module doc)."""

    kind: IndexKind = "hnsw"
    factory: str | None = None  # kind "factory": a FAISS factory string, e.g. "OPQ16,IVF256,PQ16"
    name: str | None = None  # file stem under RUN/index/ (default: the kind)
    nlist: int | None = Field(None, ge=1)
    nprobe: int | None = Field(None, ge=1)
    hnsw_m: int = Field(32, ge=4, le=256)
    ef_construction: int = Field(64, ge=8)
    ef_search: int | None = Field(None, ge=1)
    pq_m: int | None = Field(None, ge=1)
    pq_bits: int | None = Field(None, ge=1, le=16)
    mips_to_l2: bool | None = None  # None: HNSW tries both when calibrating (module doc)
    rerank_factor: int | None = Field(None, ge=1, le=64)  # over-fetch x, default 4 for ivfpq
    gpu: bool = True  # use GPUs when faiss has them (HNSW: never)
    target_recall: float | None = Field(0.96, gt=0, le=1)  # calibrate unset search params
    calibration_queries: int = Field(2000, ge=10)  # users sampled for the calibration

    @model_validator(mode="after")
    def _factory_iff_kind(self) -> IndexConfig:
        if (self.kind == "factory") != (self.factory is not None):
            raise ValueError("set factory=... exactly when kind is 'factory'")
        return self

    @property
    def stem(self) -> str:
        return self.name or self.kind


class IndexMeta(StrictModel):
    """The JSON written next to ``RUN/index/<name>.faiss``."""

    format_version: int = INDEX_FORMAT_VERSION
    name: str
    kind: str
    factory: str
    metric: Literal["inner_product"] = "inner_product"
    mips_to_l2: bool
    max_norm: float | None  # M of the MIPS reduction
    dim: int  # item embedding dimension
    index_dim: int  # dimension FAISS sees (dim + 1 + padding with mips_to_l2)
    n_items: int
    params: dict[str, int]  # search/build parameters: nprobe, efSearch, efConstruction
    calibration: dict[str, Any] | None = None  # how the search parameter was chosen
    rerank_factor: int
    build_seconds: float
    index_bytes: int
    run_fingerprint: str
    faiss_version: str
    created: str


def ladder(low: int, high: int) -> list[int]:
    """Calibration rungs from ``low`` to ``high``, about x1.4 apart: 1, 2, 3, 4, 6, 8, 11 .."""
    out = [low]
    while out[-1] < high:
        out.append(min(high, max(out[-1] + 1, round(out[-1] * 1.4))))
    return out


def _scaled_nlist(n: int) -> int:
    """≈ √N lists, each with ≥ 39 items (FAISS' minimum training points per centroid)."""
    return int(max(1, min(round(math.sqrt(n)), n // 39)))


def resolve(config: IndexConfig, n_items: int, dim: int) -> dict[str, Any]:
    """The factory string and parameters ``config`` means for ``n_items`` of ``dim``."""
    if n_items < 1:
        raise RecsysError("cannot index an empty catalogue")
    kind = config.kind
    mips = bool(config.mips_to_l2)  # None (auto) is resolved by ItemIndex.build
    index_dim = dim + 1 if mips else dim
    params: dict[str, int] = {}
    tunable: tuple[str, list[int]] | None = None  # a search parameter left to calibration
    rerank = config.rerank_factor or (4 if kind == "ivfpq" else 1)
    if kind == "flat":
        factory = "Flat"
    elif kind == "hnsw":
        factory = f"HNSW{config.hnsw_m}"
        params = {"efConstruction": config.ef_construction, "efSearch": config.ef_search or 128}
        if config.ef_search is None:
            tunable = ("efSearch", ladder(16, 1024))
    elif kind in ("ivf", "ivfpq"):
        nlist = config.nlist or _scaled_nlist(n_items)
        if nlist > n_items:
            raise ConfigError(f"nlist {nlist} exceeds the {n_items} items to cluster")
        params = {"nprobe": min(nlist, config.nprobe or max(1, math.ceil(nlist / 4)))}
        if config.nprobe is None:
            tunable = ("nprobe", ladder(max(1, nlist // 64), nlist))
        if kind == "ivf":
            factory = f"IVF{nlist},Flat"
        else:
            m = config.pq_m or max(1, math.ceil(index_dim / 4))
            index_dim = math.ceil(index_dim / m) * m  # zero padding: PQ needs m | dim
            # 2^bits centroids per sub-quantiser want >= 39 training points each.
            bits = config.pq_bits or int(min(8, max(4, math.floor(math.log2(n_items / 39)))))
            if 2**bits > n_items:
                raise ConfigError(f"pq_bits {bits} needs >= {2**bits} items, have {n_items}")
            factory = f"IVF{nlist},PQ{m}x{bits}"
    else:
        factory = str(config.factory)
        if config.nprobe is not None:
            params["nprobe"] = config.nprobe
        if config.ef_search is not None:
            params["efSearch"] = config.ef_search
    return {
        "factory": factory,
        "mips_to_l2": mips,
        "index_dim": index_dim,
        "params": params,
        "rerank_factor": rerank,
        "tunable": tunable,
    }




def _calibrated_recall(meta: IndexMeta) -> float | None:
    calibration = meta.calibration or {}
    return next((v for key, v in calibration.items() if key.startswith("recall@")), None)


def index_path(run: RunFolder, name: str) -> Path:
    """``RUN/index/<name>.faiss``, for a plain name (no path, not hidden)."""
    if not name or "/" in name or name.startswith("."):
        raise RecsysError(f"invalid index name {name!r}")
    return run.root / "index" / f"{name}.faiss"
