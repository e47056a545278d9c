"""FAISS indexes over a run's item embeddings; scores are inner products ``users @ items.T``.

Kinds (``IndexConfig.kind``) and the FAISS factory strings they build, for ``N`` items of
dimension ``D`` (metric: inner product):

============  ====================================  ==========================================
kind          factory                               parameters
============  ====================================  ==========================================
``flat``      ``Flat`` (``IndexFlatIP``)            exact
``hnsw``      ``HNSW{M}``                           M 32, efConstruction 64; efSearch (*)
``ivf``       ``IVF{nlist},Flat``                   nlist ≈ √N (≥ 39 items per list); nprobe (*)
``ivfpq``     ``IVF{nlist},PQ{m}x{bits}``           m = D / 4, bits 8 (fewer below 10k items),
                                                    over-fetch ×4 before exact rescoring;
                                                    nprobe (*)
``factory``   any factory string (``factory=...``)  as given
============  ====================================  ==========================================

(*) **Calibrated search parameters.** How many IVF lists to probe (or how wide HNSW's
search beam must be) for a given recall depends on the embedding distribution far more
than on ``N``: on Amazon Beauty, nprobe = nlist / 4 gives recall@10 0.97 for a trained
LightGCN but 0.89 for a briefly trained MF whose top-10 lists cover as much of the
catalogue. So when an index is built from a run (``build_for_run``), the search parameter
the config leaves unset is the smallest of a ladder (nprobe: nlist/64 .. nlist; efSearch:
16 .. 1024; rungs x1.4 apart) whose recall@10 against exact search, on a sample of the
run's own users, reaches ``target_recall`` (0.96). The choice and the recall it reached
are saved in the index's JSON (``calibration``). Without queries
(``ItemIndex.build(items)``), or with ``target_recall: null``, the fixed defaults apply:
nprobe = nlist / 4, efSearch = 128.

**Inner product, exactly.** Whatever the index, its hits are candidates: their scores are
recomputed as exact dot products from the stored item vectors and the list is ordered by
score descending, then item index ascending (``recsys.eval.ranking``'s order).
``mips_to_l2: true`` builds the index on the MIPS → nearest-neighbour reduction (Bachrach
et al., 2014): items become ``[x, sqrt(M² - |x|²)]`` and queries ``[q, 0]`` with ``M`` the
largest item norm, so that L2 nearest neighbours are exactly the inner-product best. It
helps IVF where a few popular items dominate the top-k lists (ML-100k LightGCN: recall
0.99 vs 0.77 at nprobe = nlist / 8) and hurts where the lists are spread out (Beauty
LightGCN: 0.95 vs 0.97 at nlist / 4), so it is off by default.

**Ids.** FAISS ids are item indices (rows of ``embeddings/items.npy``): every index is an
``IndexIDMap2`` over the base index, the catalogue is added with ids ``0..N-1`` and items
added later get ``N, N+1, ...`` (also for HNSW, whose own ids could not be chosen).

**Excluding seen items.** ``search`` over-fetches: it asks FAISS for ``k + max |exclude|
+ 1`` hits per query of the batch (times ``rerank_factor``), drops excluded ones and keeps
the best ``k``. An ``IDSelector`` would avoid the over-fetch but is per query (no batching
across users with different histories), slows HNSW's graph walk for large exclusion sets
and is not supported by every GPU index. A list comes back shorter than ``k`` (trailing
``-1`` ids, ``-inf`` scores) only when the index returned fewer hits than asked (an IVF
probe that visits fewer than ``k + |exclude|`` items).

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
    ef_search: int | None = Field(None, ge=1)
    pq_m: int | None = Field(None, ge=1)
    pq_bits: int | None = Field(None, ge=1, le=16)
    mips_to_l2: bool = False
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
    mips = config.mips_to_l2
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
        cls,
        items: np.ndarray,
        config: IndexConfig | None = None,
        fingerprint: str = "",
        queries: np.ndarray | None = None,
    ) -> ItemIndex:
        """Index ``items`` ``(N, D)``; FAISS id ``i`` is row ``i``.

        ``queries`` ``(Q, D)`` (user vectors) calibrate the search parameter the config
        leaves unset to ``config.target_recall`` (see the module doc)."""
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
        out = cls(index, items, meta, use_gpu=config.gpu)
        if queries is not None and config.target_recall is not None and spec["tunable"]:
            out.calibrate(queries, *spec["tunable"], target=config.target_recall)
        return out

    def calibrate(
        self, queries: np.ndarray, name: str, ladder: list[int], target: float, k: int = 10
    ) -> dict[str, Any]:
        """Set search parameter ``name`` to the first ``ladder`` value whose recall@k
        against exact search over ``queries`` ``(Q, D)`` reaches ``target`` (else the last
        value); record it in ``meta.params`` and ``meta.calibration``."""
        start = time.perf_counter()
        q = _as_matrix(queries, self.dim, "calibration queries")
        truth = _exact_topk(q, self.vectors, k)
        recall = float("nan")
        for value in ladder:
            self.meta.params[name] = value
            _set_params(self.search_index, {name: value}, self.on_gpu)
            ids, _ = self.search(q, k)
            hits = [len(set(a.tolist()) & b) / len(b) for a, b in zip(ids, truth, strict=True)]
            recall = float(np.mean(hits))
            if recall >= target:
                break
        else:
            log.warning("%s: recall@%d %.3f < %.3f at %s=%s", self.meta.name, k, recall, target,
                        name, ladder[-1])  # fmt: skip
        self.meta.calibration = {
            "param": name,
            "value": self.meta.params[name],
            f"recall@{k}": round(recall, 4),
            "target": target,
            "queries": len(q),
            "seconds": round(time.perf_counter() - start, 3),
        }
        return self.meta.calibration

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

        Ties with the ``k``-th score are resolved like ``recsys.eval.ranking`` (lower id
        first): when the last hit fetched ties with it, that query is searched again with
        twice the hits, until the tie is inside the fetched set.

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
        # One hit more than needed: when it ties with the k-th result, items tied with it
        # may lie beyond the fetched ones (FAISS cuts ties arbitrarily), so fetch more.
        fetch = min(self.ntotal, (k + n_ex) * self.meta.rerank_factor + 1)
        ids = np.full((b, k), -1, dtype=np.int64)
        scores = np.full((b, k), -np.inf, dtype=np.float32)
        rows = np.arange(b)
        while len(rows):
            _, hits = self.search_index.search(_prepare_queries(q[rows], self.meta), fetch)
            cand = hits
            if extra is not None:
                more = [extra[r] for r in rows]
                if any(len(e) for e in more):
                    cand = np.concatenate([cand, _pad(more)], axis=1)
            cand = _dedupe_rows(cand)
            if n_ex:
                cand = _drop(cand, [exclude[r] for r in rows], self.ntotal)  # type: ignore[index]
            ids[rows], scores[rows] = self._rescore_topk(q[rows], cand, k)
            if fetch >= self.ntotal:
                break
            last = hits[:, -1]
            full = last >= 0  # rows whose index returned all it was asked for
            last_score = np.einsum("bd,bd->b", q[rows[full]], self.vectors[last[full]])
            tied = last_score == scores[rows[full], -1]
            rows = rows[full][tied]
            fetch = min(self.ntotal, 2 * fetch)
        return ids, scores

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
    """Build over ``embeddings/items.npy``, calibrating on a seeded sample of the users."""
    users, items = run.embeddings()
    rng = np.random.default_rng(0)
    n = min(len(users), config.calibration_queries)
    queries = users[np.sort(rng.choice(len(users), size=n, replace=False))]
    return ItemIndex.build(items, config, run_fingerprint(run), queries)


def load_or_build(
    run: RunFolder, name: str, params: dict[str, int] | None = None, use_gpu: bool = True
) -> ItemIndex:
    """The saved ``RUN/index/<name>.faiss``; else, when ``name`` is a kind, a fresh build
    with default parameters (calibrated, not saved). Serving uses this."""
    if index_path(run, name).exists():
        return ItemIndex.load(run, name, params, use_gpu)
    if name not in ("flat", "ivf", "hnsw", "ivfpq"):
        raise ArtifactError(f"{index_path(run, name)} not found and {name!r} is not a kind")
    log.warning("%s: no saved %s index, building one in memory", run.root, name)
    index = build_for_run(run, IndexConfig(kind=name, gpu=use_gpu))  # type: ignore[arg-type]
    if params:
        index.meta.params = {**index.meta.params, **params}
        _set_params(index.search_index, index.meta.params, index.on_gpu)
    return index


# helpers ----------------------------------------------------------------------------------
def _exact_topk(q: np.ndarray, items: np.ndarray, k: int, batch: int = 512) -> list[set[int]]:
    """Brute-force top-``k`` id sets of ``q (B, D) @ items.T`` (ties: any of them)."""
    k = min(k, len(items))
    out: list[set[int]] = []
    for s in range(0, len(q), batch):
        scores = q[s : s + batch] @ items.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out.extend(set(row.tolist()) for row in top)
    return out


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
