"""FAISS indexes over a run's item embeddings; scores are inner products ``users @ items.T``.

Kinds (``IndexConfig.kind``) and the FAISS factory strings they build, for ``N`` items of
dimension ``D``:

============  ====================================  ==========================================
kind          factory                               defaults
============  ====================================  ==========================================
``flat``      ``Flat`` (``IndexFlatIP``)            exact
``hnsw``      ``HNSW{M}``                           M 32, efConstruction 64, efSearch 128
``ivf``       ``IVF{nlist},Flat``                   nlist ≈ √N (≥ 39 items per list), nprobe
                                                    = nlist / 4
``ivfpq``     ``IVF{nlist},PQ{m}x{bits}``           m = index dim / 4, bits = 8 (fewer for
                                                    small catalogues), rerank ×4
``factory``   any factory string (``factory=...``)  metric inner product
============  ====================================  ==========================================

**Inner product, exactly.** Whatever the index, its hits are candidates: their scores are
recomputed as exact dot products from the stored item vectors and the list is ordered by
score descending, then item index ascending (``recsys.eval.ranking``'s order). For IVF
kinds the index is built on the standard MIPS → nearest-neighbour reduction (Bachrach et
al., 2014): items become ``[x, sqrt(M² - |x|²)]`` and queries ``[q, 0]`` with ``M`` the
largest item norm, so that the L2 nearest neighbours are exactly the inner-product best.
Coarse quantisers clustered by inner product put most of a norm-skewed catalogue in a few
lists; on trained embeddings the reduction reaches the same recall with a few times fewer
probes. (``mips_to_l2`` switches it; HNSW and flat search the inner product directly.)

**Ids.** FAISS ids are item indices (rows of ``embeddings/items.npy``): every index is an
``IndexIDMap2`` over the base index, the catalogue is added with ids ``0..N-1`` and items
added later get ``N, N+1, ...`` (also for HNSW, whose own ids could not be chosen).

**Excluding seen items.** ``search`` over-fetches: it asks FAISS for ``k + max |exclude|``
hits per query of the batch (times ``rerank_factor``), drops excluded ones and keeps the
best ``k``. An ``IDSelector`` would avoid the over-fetch but is per query (no batching
across users with different histories), is slower inside HNSW's graph walk for large
exclusion sets and is not supported by every GPU index. A list can come back shorter than
``k`` (trailing ``-1`` ids, ``-inf`` scores) only when the index returned fewer hits than
asked (an IVF probe that visits fewer than ``k + |exclude|`` items).

**GPU.** With ``faiss.get_num_gpus() > 0`` (a faiss-gpu build) and ``gpu: true``, searches
run on ``index_cpu_to_all_gpus`` of the CPU index; HNSW stays on the CPU. The CPU index
stays the master copy: it is what is saved, cloned and extended.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
from pydantic import Field, model_validator

from recsys.artifacts import RunFolder
from recsys.config import StrictModel
from recsys.errors import ArtifactError, ConfigError, RecsysError
from recsys.index.fingerprint import run_fingerprint
from recsys.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1
IndexKind = Literal["flat", "ivf", "hnsw", "ivfpq", "factory"]
# Rows of (queries x candidates x dim) floats rescored at once: bounds rescoring memory.
_RESCORE_FLOATS = 1 << 24


class IndexConfig(StrictModel):
    """What to build. ``None`` fields are scaled to the catalogue (see the module doc)."""

    kind: IndexKind = "hnsw"
    factory: str | None = None  # kind "factory": a FAISS factory string, e.g. "OPQ16,IVF256,PQ16"
    name: str | None = None  # file stem under RUN/index/ (default: the kind)
    nlist: int | None = Field(None, ge=1)
    nprobe: int | None = Field(None, ge=1)
    hnsw_m: int = Field(32, ge=4, le=256)
    ef_construction: int = Field(64, ge=8)
    ef_search: int = Field(128, ge=1)
    pq_m: int | None = Field(None, ge=1)
    pq_bits: int | None = Field(None, ge=1, le=16)
    mips_to_l2: bool | None = None  # default: true for ivf / ivfpq
    rerank_factor: int | None = Field(None, ge=1, le=64)  # over-fetch x, default 4 for ivfpq
    gpu: bool = True  # use GPUs when faiss has them (HNSW: never)

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
    rerank_factor: int
    build_seconds: float
    index_bytes: int
    run_fingerprint: str
    faiss_version: str
    created: str


def _scaled_nlist(n: int) -> int:
    """≈ √N lists, each with ≥ 39 items (FAISS' minimum training points per centroid)."""
    return int(max(1, min(round(math.sqrt(n)), n // 39)))


def resolve(config: IndexConfig, n_items: int, dim: int) -> dict[str, Any]:
    """The factory string and parameters ``config`` means for ``n_items`` of ``dim``."""
    if n_items < 1:
        raise RecsysError("cannot index an empty catalogue")
    kind = config.kind
    mips = config.mips_to_l2 if config.mips_to_l2 is not None else kind in ("ivf", "ivfpq")
    index_dim = dim + 1 if mips else dim
    params: dict[str, int] = {}
    rerank = config.rerank_factor or (4 if kind == "ivfpq" else 1)
    if kind == "flat":
        factory = "Flat"
    elif kind == "hnsw":
        factory = f"HNSW{config.hnsw_m}"
        params = {"efConstruction": config.ef_construction, "efSearch": config.ef_search}
    elif kind in ("ivf", "ivfpq"):
        nlist = config.nlist or _scaled_nlist(n_items)
        if nlist > n_items:
            raise ConfigError(f"nlist {nlist} exceeds the {n_items} items to cluster")
        params = {"nprobe": min(nlist, config.nprobe or max(1, math.ceil(nlist / 4)))}
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
    return {
        "factory": factory,
        "mips_to_l2": mips,
        "index_dim": index_dim,
        "params": params,
        "rerank_factor": rerank,
    }


def _as_matrix(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise RecsysError(f"{what} must have shape (N, {dim}), got {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise RecsysError(f"{what} contain NaN or infinite values")
    return x


def _set_params(index: faiss.Index, params: dict[str, int], on_gpu: bool) -> None:
    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    for key, value in params.items():
        if key == "efConstruction":
            continue  # a build parameter
        try:
            space.set_index_parameter(index, key, value)
        except RuntimeError as err:
            raise ConfigError(f"index parameter {key}={value}: {err}") from None


class ItemIndex:
    """A FAISS index plus the item vectors it was built from.

    ``vectors`` ``(n, D)`` float32 are the exact item representations: hits are rescored
    with them, and items added with :meth:`add` are appended to them.
    """

    def __init__(
        self, index: faiss.Index, vectors: np.ndarray, meta: IndexMeta, use_gpu: bool = True
    ) -> None:
        self.cpu_index = index
        self.vectors = vectors
        self.meta = meta
        self.use_gpu = use_gpu
        self.search_index = index
        self.on_gpu = False
        self._to_gpu_if_possible()
        _set_params(self.search_index, meta.params, self.on_gpu)

    # construction -------------------------------------------------------------------
    @classmethod
    def build(
        cls, items: np.ndarray, config: IndexConfig | None = None, fingerprint: str = ""
    ) -> ItemIndex:
        """Index ``items`` ``(N, D)``; FAISS id ``i`` is row ``i``."""
        config = config or IndexConfig()
        items = np.asarray(items)
        if items.ndim != 2:
            raise RecsysError(f"items must be a 2-D (N, D) array, got shape {items.shape}")
        n, dim = items.shape
        items = _as_matrix(items, dim, "item embeddings")
        spec = resolve(config, n, dim)
        max_norm = float(np.linalg.norm(items, axis=1).max()) if spec["mips_to_l2"] else None
        metric = faiss.METRIC_L2 if spec["mips_to_l2"] else faiss.METRIC_INNER_PRODUCT
        meta = IndexMeta(
            name=config.stem,
            kind=config.kind,
            factory=spec["factory"],
            mips_to_l2=spec["mips_to_l2"],
            max_norm=max_norm,
            dim=dim,
            index_dim=spec["index_dim"],
            n_items=n,
            params=spec["params"],
            rerank_factor=spec["rerank_factor"],
            build_seconds=0.0,
            index_bytes=0,
            run_fingerprint=fingerprint,
            faiss_version=faiss.__version__,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        start = time.perf_counter()
        try:
            base = faiss.index_factory(meta.index_dim, meta.factory, metric)
        except RuntimeError as err:
            raise ConfigError(f"FAISS factory {meta.factory!r}: {err}") from None
        if "efConstruction" in meta.params:
            faiss.downcast_index(base).hnsw.efConstruction = meta.params["efConstruction"]
        index = faiss.IndexIDMap2(base)  # the Python wrapper keeps ``base`` alive
        x = _prepare_items(items, meta)
        if not base.is_trained:
            base.train(x)
        index.add_with_ids(x, np.arange(n, dtype=np.int64))
        meta.build_seconds = round(time.perf_counter() - start, 4)
        meta.index_bytes = int(faiss.serialize_index(index).nbytes)
        return cls(index, items, meta, use_gpu=config.gpu)

    def _to_gpu_if_possible(self) -> None:
        if self.meta.kind == "hnsw" or "HNSW" in self.meta.factory:
            return
        if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
            return
        if not self.use_gpu:
            return
        try:
            self.search_index = faiss.index_cpu_to_all_gpus(self.cpu_index)
            self.on_gpu = True
        except RuntimeError as err:  # e.g. a PQ layout the GPU kernels lack
            log.warning("index %s stays on the CPU: %s", self.meta.name, err)

    # properties ---------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.cpu_index.ntotal)

    @property
    def n_added(self) -> int:
        return self.ntotal - self.meta.n_items

    @property
    def dim(self) -> int:
        return self.meta.dim

    # searching ----------------------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: list[np.ndarray] | None = None,
        extra: list[np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per query by exact inner product among the index's hits.

        Args:
            queries: ``(B, D)`` user (or item) vectors.
            k: list length, >= 1.
            exclude: per query, item ids never returned (seen items, the query item).
            extra: per query, more candidate ids merged with the index's hits
                (e.g. semantic-ID neighbours); duplicates are dropped.

        Returns:
            ``ids (B, k)`` int64 and ``scores (B, k)`` float32, best first, ties by lower
            id; missing slots hold id ``-1`` and score ``-inf``.
        """
        if k < 1:
            raise RecsysError(f"k must be >= 1, got {k}")
        q = _as_matrix(queries, self.dim, "queries")
        b = len(q)
        for name, lists in (("exclude", exclude), ("extra", extra)):
            if lists is not None and len(lists) != b:
                raise RecsysError(f"{name} has {len(lists)} lists for {b} queries")
        if b == 0:
            return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
        n_ex = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        fetch = min(self.ntotal, (k + n_ex) * self.meta.rerank_factor)
        _, cand = self.search_index.search(_prepare_queries(q, self.meta), fetch)
        if extra is not None and any(len(e) for e in extra):
            cand = np.concatenate([cand, _pad(extra)], axis=1)
        cand = _dedupe_rows(cand)
        if exclude is not None and n_ex:
            cand = _drop(cand, exclude, self.ntotal)
        return self._rescore_topk(q, cand, k)

    def _rescore_topk(self, q: np.ndarray, cand: np.ndarray, k: int):
        b, c = cand.shape
        ids = np.full((b, k), -1, dtype=np.int64)
        scores = np.full((b, k), -np.inf, dtype=np.float32)
        step = max(1, _RESCORE_FLOATS // max(1, c * self.dim))
        for s in range(0, b, step):
            cb = cand[s : s + step]
            valid = cb >= 0
            sc = np.einsum("bd,bcd->bc", q[s : s + step], self.vectors[np.where(valid, cb, 0)])
            sc[~valid] = -np.inf
            order = np.lexsort((cb, -sc), axis=-1)[:, :k]  # score desc, then id asc
            top_ids = np.take_along_axis(cb, order, axis=1)
            top_sc = np.take_along_axis(sc, order, axis=1)
            top_ids[~np.isfinite(top_sc)] = -1
            width = top_ids.shape[1]
            ids[s : s + step, :width] = top_ids
            scores[s : s + step, :width] = top_sc
        return ids, scores

    # updating -----------------------------------------------------------------------
    def clone(self) -> ItemIndex:
        """A deep copy (the CPU index and the vectors), for copy-on-write updates."""
        new = ItemIndex.__new__(ItemIndex)
        new.cpu_index = faiss.clone_index(self.cpu_index)
        new.vectors = self.vectors.copy()
        new.meta = self.meta.model_copy(deep=True)
        new.use_gpu = self.use_gpu
        new.search_index, new.on_gpu = new.cpu_index, False
        new._to_gpu_if_possible()
        _set_params(new.search_index, new.meta.params, new.on_gpu)
        return new

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append ``vectors`` ``(M, D)`` in place; returns their ids ``(M,)``.

        In place: callers that serve concurrent searches add to a :meth:`clone` and swap.
        With the MIPS reduction, an item longer than the build-time maximum norm gets a
        zero extra coordinate: it is still found, but ranked by L2 as if slightly shorter.
        """
        x = _as_matrix(vectors, self.dim, "new item vectors")
        ids = np.arange(self.ntotal, self.ntotal + len(x), dtype=np.int64)
        self.cpu_index.add_with_ids(_prepare_items(x, self.meta), ids)
        self.vectors = np.concatenate([self.vectors, x])
        if self.on_gpu:  # the GPU copy is a snapshot of the CPU master: refresh it
            self._to_gpu_if_possible()
            _set_params(self.search_index, self.meta.params, self.on_gpu)
        return ids

    # persistence --------------------------------------------------------------------
    def save(self, run: RunFolder) -> Path:
        """Write ``RUN/index/<name>.faiss`` and ``<name>.json``, each atomically."""
        if self.n_added:
            raise RecsysError("an index with added items does not match the run; not saved")
        path = index_path(run, self.meta.name)
        with atomic_path(path) as tmp:
            faiss.write_index(self.cpu_index, str(tmp))
        atomic_write_json(path.with_suffix(".json"), self.meta.model_dump())
        return path

    @classmethod
    def load(
        cls,
        run: RunFolder,
        name: str,
        params: dict[str, int] | None = None,
        use_gpu: bool = True,
    ) -> ItemIndex:
        """Load a saved index, checking that it was built from this run's embeddings."""
        path = index_path(run, name)
        meta_path = path.with_suffix(".json")
        if not path.exists() or not meta_path.exists():
            raise ArtifactError(
                f"{path} not found; build it with: recsys index {run.root} --kind {name}"
            )
        meta = IndexMeta.model_validate(json.loads(meta_path.read_text()))
        if meta.format_version != INDEX_FORMAT_VERSION:
            raise ArtifactError(f"{meta_path}: format_version {meta.format_version}; rebuild it")
        _, items = run.embeddings()
        fingerprint = run_fingerprint(run)
        if meta.run_fingerprint != fingerprint or meta.n_items != len(items):
            raise ArtifactError(
                f"{path} was built from another version of this run (fingerprint"
                f" {meta.run_fingerprint} vs {fingerprint}); rebuild it with: recsys index"
                f" {run.root} --kind {meta.kind}"
            )
        index = faiss.read_index(str(path))
        if index.ntotal != meta.n_items or index.d != meta.index_dim:
            raise ArtifactError(f"{path} holds {index.ntotal} x {index.d}; {meta_path} disagrees")
        if params:
            meta.params = {**meta.params, **params}
        return cls(index, _as_matrix(items, meta.dim, "item embeddings"), meta, use_gpu)


def index_path(run: RunFolder, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise RecsysError(f"invalid index name {name!r}")
    return run.root / "index" / f"{name}.faiss"


def build_for_run(run: RunFolder, config: IndexConfig) -> ItemIndex:
    _, items = run.embeddings()
    return ItemIndex.build(items, config, run_fingerprint(run))


def load_or_build(run: RunFolder, name: str, params: dict[str, int] | None = None) -> ItemIndex:
    """The saved ``RUN/index/<name>.faiss``; else, when ``name`` is a kind, a fresh build
    with default parameters (not saved). Serving uses this."""
    if index_path(run, name).exists():
        return ItemIndex.load(run, name, params)
    if name not in ("flat", "ivf", "hnsw", "ivfpq"):
        raise ArtifactError(f"{index_path(run, name)} not found and {name!r} is not a kind")
    log.warning("%s: no saved %s index, building one in memory", run.root, name)
    index = build_for_run(run, IndexConfig(kind=name))  # type: ignore[arg-type]
    if params:
        index.meta.params = {**index.meta.params, **params}
        _set_params(index.search_index, index.meta.params, index.on_gpu)
    return index


# helpers ----------------------------------------------------------------------------------
def _prepare_items(x: np.ndarray, meta: IndexMeta) -> np.ndarray:
    """Items as FAISS sees them: ``[x, sqrt(M² - |x|²), 0...]`` under the MIPS reduction."""
    if not meta.mips_to_l2:
        return x
    out = np.zeros((len(x), meta.index_dim), dtype=np.float32)
    out[:, : meta.dim] = x
    sq = np.float64(meta.max_norm) ** 2 - np.einsum("nd,nd->n", x, x, dtype=np.float64)
    out[:, meta.dim] = np.sqrt(np.maximum(sq, 0.0))
    return out


def _prepare_queries(q: np.ndarray, meta: IndexMeta) -> np.ndarray:
    if not meta.mips_to_l2:
        return q
    out = np.zeros((len(q), meta.index_dim), dtype=np.float32)
    out[:, : meta.dim] = q
    return out


def _pad(lists: list[np.ndarray]) -> np.ndarray:
    width = max(len(x) for x in lists)
    out = np.full((len(lists), width), -1, dtype=np.int64)
    for row, x in enumerate(lists):
        out[row, : len(x)] = x
    return out


def _dedupe_rows(cand: np.ndarray) -> np.ndarray:
    """Sort each row and blank (``-1``) repeated ids."""
    cand = np.sort(cand, axis=1)
    dup = np.zeros_like(cand, dtype=bool)
    dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
    cand[dup] = -1
    return cand


def _drop(cand: np.ndarray, exclude: list[np.ndarray], ntotal: int) -> np.ndarray:
    """Blank the ids of ``cand`` ``(B, C)`` that row ``b``'s ``exclude[b]`` lists."""
    lens = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=len(exclude))
    ex = np.concatenate([np.asarray(e, dtype=np.int64).ravel() for e in exclude])
    rows = np.repeat(np.arange(len(exclude), dtype=np.int64), lens)
    ok = (ex >= 0) & (ex < ntotal)  # out-of-range ids exclude nothing (and must not alias)
    rows, ex = rows[ok], ex[ok]
    stride = ntotal + 1
    keys = rows * stride + ex
    cand_keys = np.arange(len(cand), dtype=np.int64)[:, None] * stride + cand
    hit = np.isin(cand_keys, keys) & (cand >= 0)
    cand = cand.copy()
    cand[hit] = -1
    return cand
