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
LightGCN: 0.95 vs 0.97 at nlist / 4), so IVF leaves it off by default. HNSW turns it on by
default (``mips_to_l2: null``) neither way, because neither wins everywhere: on MovieLens
latest-small LightGCN a graph on inner products (not a metric) strands low-norm items and
deep queries fail (top-20 with seen items excluded, efSearch 2 × fetch: mean recall 0.86,
355 of 671 users below 0.95; on the reduction 0.9997, none below), while on Beauty LightGCN
the reduction tops out at recall@10 0.80 (efSearch 1024) where inner products reach 0.96.
So a calibrated HNSW build (queries given) first tries inner products and, if they miss
the target, also the reduction, and keeps the better; without queries it uses inner
products.

**Ids.** FAISS ids are item indices (rows of ``embeddings/items.npy``): every index is an
``IndexIDMap2`` over the base index, the catalogue is added with ids ``0..N-1`` and items
added later get ``N, N+1, ...`` (also for HNSW, whose own ids could not be chosen).

**Excluding seen items.** ``search`` over-fetches: it asks FAISS for ``fetch = k + max
|exclude| + 1`` hits per query of the batch (times ``rerank_factor``), drops excluded ones
and keeps the best ``k``; a batch is searched in groups of queries whose ``k + |exclude| +
1`` lies within the same power of two, so that one heavy user does not deepen the search
of a whole batch (a batch export of power-law users would otherwise search every user as
deep as its heaviest). The unseen top-``k`` of a user who has seen ``n`` items lies
about ``k + n`` deep in the unfiltered ranking, and an approximate index asked for that
depth with the breadth calibrated for ``k`` finds little of it (a user with 1,700 seen items
got 2 of the exact top-20). So the breadth grows with the depth asked: HNSW searches with
``efSearch = max(calibrated, 2 × fetch)``, IVF probes ``nprobe × fetch / (k × rerank + 1)``
lists (at most all), and a query deeper than ``exact_depth`` (5%) of the catalogue is
scored exactly against every item, which is then no dearer than the graph walk. An
``IDSelector`` would avoid the over-fetch but is per query (no batching across users with
different histories), is not supported by every GPU index, and needs the same breadth to
reach the same items (measured: identical recall at equal efSearch). A list comes back
shorter than ``k`` (trailing ``-1`` ids, ``-inf`` scores) only when the index returned fewer
hits than asked (an IVF probe that visits fewer than ``k + |exclude|`` items).

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
from typing import Any

import faiss
import numpy as np

from recsys.artifacts import RunFolder
from recsys.errors import ArtifactError, ConfigError, RecsysError
from recsys.index.candidates import (
    _as_matrix,
    _dedupe_rows,
    _drop,
    _pad,
    _prepare_items,
    _prepare_queries,
)
from recsys.index.fingerprint import run_fingerprint
from recsys.index.spec import (  # noqa: F401 (re-exported: the index's public names)
    INDEX_FORMAT_VERSION,
    IndexConfig,
    IndexKind,
    IndexMeta,
    _calibrated_recall,
    index_path,
    ladder,
    resolve,
)
from recsys.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

# Rows of (queries x candidates x dim) floats rescored at once: bounds rescoring memory.
_RESCORE_FLOATS = 1 << 24
# A query that must reach deeper than this fraction of the catalogue is scored exactly.
EXACT_DEPTH = 0.05
# Serving's "auto" index: exact up to this many items (a scan costs about a graph walk).
AUTO_EXACT_ITEMS = 50_000
# HNSW's beam for a query ``fetch`` hits deep: wide enough to find them (see the module doc).
_EF_PER_FETCH = 2



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
        exclude: list[np.ndarray] | None = None,
    ) -> ItemIndex:
        """Index ``items`` ``(N, D)``; FAISS id ``i`` is row ``i``.

        ``queries`` ``(Q, D)`` (user vectors) calibrate the search parameter the config
        leaves unset to ``config.target_recall`` (see the module doc); ``exclude`` lists
        each query's seen items, left out as serving leaves them out."""
        config = config or IndexConfig()
        calibrated = queries is not None and config.target_recall is not None
        if config.mips_to_l2 is None and config.kind == "hnsw" and calibrated:
            ip = cls.build(
                items, config.model_copy(update={"mips_to_l2": False}), fingerprint, queries,
                exclude,
            )  # fmt: skip
            ip_recall = _calibrated_recall(ip.meta)
            if ip_recall is None or ip_recall >= config.target_recall:
                return ip
            l2 = cls.build(
                items, config.model_copy(update={"mips_to_l2": True}), fingerprint, queries,
                exclude,
            )  # fmt: skip
            l2_recall = _calibrated_recall(l2.meta)
            return l2 if l2_recall is not None and l2_recall > ip_recall else ip
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
        if calibrated and spec["tunable"]:
            out.calibrate(queries, *spec["tunable"], target=config.target_recall, exclude=exclude)
        return out

    def calibrate(
        self,
        queries: np.ndarray,
        name: str,
        rungs: list[int],
        target: float,
        k: int = 10,
        exclude: list[np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Set search parameter ``name`` to the first of ``rungs`` whose recall@k
        against exact search over ``queries`` ``(Q, D)`` reaches ``target`` (else the last
        value), both as they are and, given ``exclude``, with each query's list left out as
        serving leaves seen items out (the lower of the two counts); record it in
        ``meta.params`` and ``meta.calibration``."""
        start = time.perf_counter()
        q = _as_matrix(queries, self.dim, "calibration queries")
        tasks = []  # (exclusions, exact top-k sets): plain, and as served (both must reach it)
        for ex in [None] if exclude is None else [None, exclude]:
            exact, _ = self._exact_topk_excluding(q, k, ex)
            tasks.append((ex, [set(row[row >= 0].tolist()) or {-1} for row in exact]))
        recall = float("nan")
        for value in rungs:
            self.meta.params[name] = value
            _set_params(self.search_index, {name: value}, self.on_gpu)
            recalls = []
            for ex, truth in tasks:
                ids, _ = self.search(q, k, exclude=ex)
                hits = [len(set(a.tolist()) & b) / len(b) for a, b in zip(ids, truth, strict=True)]
                recalls.append(np.mean(hits))
            recall = float(min(recalls))
            if recall >= target:
                break
        else:
            log.warning("%s: recall@%d %.3f < %.3f at %s=%s", self.meta.name, k, recall, target,
                        name, rungs[-1])  # fmt: skip
        self.meta.calibration = {
            "param": name,
            "value": self.meta.params[name],
            f"recall@{k}": round(recall, 4),
            "target": target,
            "queries": len(q),
            "seen_excluded": exclude is not None,
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
        n_ex = np.zeros(b, dtype=np.int64)
        if exclude is not None:
            n_ex = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=b)
        ids = np.full((b, k), -1, dtype=np.int64)
        scores = np.full((b, k), -np.inf, dtype=np.float32)
        depth_class = np.ceil(np.log2(k + n_ex + 1)).astype(np.int64)
        if len(np.unique(depth_class)) > 1:  # each class over-fetches for its own depth
            for c in np.unique(depth_class):
                sel = np.flatnonzero(depth_class == c)
                more = None if extra is None else [extra[r] for r in sel]
                ids[sel], scores[sel] = self.search(q[sel], k, [exclude[r] for r in sel], more)
            return ids, scores
        deep = k + n_ex + 1 > EXACT_DEPTH * self.ntotal
        if deep.any():  # exactly: cheaper than a beam that deep, and never misses
            rows = np.flatnonzero(deep)
            ids[rows], scores[rows] = self._exact_topk_excluding(
                q[rows], k, None if exclude is None else [exclude[r] for r in rows]
            )
        rows = np.flatnonzero(~deep)
        if not len(rows):
            return ids, scores
        depth = k + int(n_ex[rows].max())
        # One hit more than needed: when it ties with the k-th result, items tied with it
        # may lie beyond the fetched ones (FAISS cuts ties arbitrarily), so fetch more.
        fetch = min(self.ntotal, depth * self.meta.rerank_factor + 1)
        while len(rows):
            params = self._breadth(fetch, k)
            _, hits = self.search_index.search(
                _prepare_queries(q[rows], self.meta), fetch, params=params
            )
            cand = hits
            if extra is not None:
                more = [extra[r] for r in rows]
                if any(len(e) for e in more):
                    cand = np.concatenate([cand, _pad(more)], axis=1)
            cand = _dedupe_rows(cand)
            if exclude is not None and n_ex[rows].any():
                cand = _drop(cand, [exclude[r] for r in rows], self.ntotal)
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

    def _breadth(self, fetch: int, k: int) -> faiss.SearchParameters | None:
        """Per-call search parameters wide enough to reach ``fetch`` hits deep (CPU HNSW
        and IVF; other indexes search with their set parameters)."""
        if self.on_gpu:
            return None
        params, factory = self.meta.params, self.meta.factory
        if "efSearch" in params and factory.startswith("HNSW"):
            return faiss.SearchParametersHNSW(
                efSearch=max(params["efSearch"], _EF_PER_FETCH * fetch)
            )
        if "nprobe" in params and factory.startswith("IVF"):
            nlist = faiss.extract_index_ivf(self.cpu_index).nlist
            base = k * self.meta.rerank_factor + 1  # the depth nprobe was calibrated for
            nprobe = math.ceil(params["nprobe"] * max(1.0, fetch / base))
            return faiss.SearchParametersIVF(nprobe=min(nlist, nprobe))
        return None

    def _exact_topk_excluding(
        self, q: np.ndarray, k: int, exclude: list[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` of ``q (B, D)`` over every item, ``exclude[b]`` left out; order
        as :meth:`search` (score descending, then id ascending)."""
        b, n = len(q), self.ntotal
        ids = np.full((b, k), -1, dtype=np.int64)
        scores = np.full((b, k), -np.inf, dtype=np.float32)
        step = max(1, _RESCORE_FLOATS // max(1, n))
        for s in range(0, b, step):
            sc = q[s : s + step] @ self.vectors.T  # (step, N)
            if exclude is not None:
                for r, ex in enumerate(exclude[s : s + step]):
                    ex = np.asarray(ex, dtype=np.int64).ravel()
                    sc[r, ex[(ex >= 0) & (ex < n)]] = -np.inf
            kk = min(k, n)
            # Everything tied with the k-th score competes, then lower ids win (lexsort).
            kth = -np.partition(-sc, kk - 1, axis=1)[:, kk - 1 : kk]
            for r in range(len(sc)):
                cand = np.flatnonzero(sc[r] >= kth[r])
                order = np.lexsort((cand, -sc[r, cand]))[:kk]
                top, top_sc = cand[order], sc[r, cand[order]]
                top[~np.isfinite(top_sc)] = -1
                ids[s + r, : len(top)], scores[s + r, : len(top)] = top, top_sc
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
