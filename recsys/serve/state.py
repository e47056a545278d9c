"""What the API serves: the run's users, the item catalogue and its index.

**Concurrency: copy-on-write.** Everything a read needs about items (ids, index, vectors,
semantic IDs) is one immutable :class:`Snapshot`; a request reads ``state.snapshot`` once
and uses that object throughout. Adding an item clones the index and id arrays, extends
the clone and publishes it with one attribute assignment, under a writer lock that only
adders take. Reads therefore never wait for an add (and never see half of one); adds are
serialised, and each costs a copy of the index (O(catalogue)): fine for occasional adds,
not for bulk loading (rebuild the index from a new run for that). An add that fails at
any step publishes nothing: the previous snapshot stays.

**Durable adds, several workers.** Added items are appended to a journal (see
``recsys.serve.journal``), by default ``RUN/serving/added_items.jsonl`` (``adds_journal``
/ ``recsys serve --adds-journal FILE`` puts it elsewhere; ``none`` keeps adds in memory, lost
on restart). It is replayed at start, and each uvicorn worker (a process that loads the
run folder itself) replays new lines before serving a request, so an add is visible to
the next request on any worker and survives restarts. A default journal written for an
earlier training of the same run folder is moved aside (its vectors belong to the old
model); a corrupt line is skipped with a warning, counted in ``/readyz`` and in the
``recsys_journal_skipped_lines`` metric, and never fails a request.

**Known users** are scored with their trained vector and never get an item they
interacted with (all labels: train, valid and test). **Anonymous users** are the mean of
their history items' vectors: for MF this is the least-squares fold-in direction up to
scale, and for LightGCN one propagation step from the items (the first layer of the
user's embedding) up to normalisation; the ranking ignores the scale.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import scipy.sparse as sp
from filelock import FileLock

from recsys.artifacts import RunFolder
from recsys.data.idmap import IdMap
from recsys.data.splits import TEST, TRAIN, VALID
from recsys.errors import DataError, RecsysError
from recsys.index.faiss_index import ItemIndex
from recsys.index.fingerprint import run_fingerprint
from recsys.index.run_index import load_or_build
from recsys.index.semantic import SemanticIds
from recsys.item_encoder import ItemContentEncoder, content_fields, load_item_encoder
from recsys.serve.config import ServeConfig
from recsys.serve.content import content_frame
from recsys.serve.history import HistoryQuery
from recsys.serve.journal import AddJournal, AddRecord, stale_journal_run
from recsys.serve.schemas import ItemContent

log = logging.getLogger(__name__)


class UnknownIdError(RecsysError):
    """404: an unknown user or item id."""


class InvalidInputError(RecsysError):
    """422: input the server understood but cannot use; ``loc`` names the field."""

    def __init__(self, message: str, loc: tuple[str | int, ...] = ("body",)) -> None:
        super().__init__(message)
        self.loc = loc


class TooLargeError(RecsysError):
    """413: a list longer than the configured maximum."""


class ConflictError(RecsysError):
    """409: the request conflicts with the catalogue (an existing item id ...)."""


class NotSupportedError(RecsysError):
    """501: this run cannot do that (no content encoder)."""


@dataclass(frozen=True)
class ItemIds:
    """Original item ids: the run's catalogue, then the items added while serving."""

    base: IdMap
    added: tuple[str, ...] = ()
    added_index: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.base) + len(self.added)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.base or item_id in self.added_index

    def get(self, item_id: str) -> int | None:
        idx = self.base.get(item_id)
        return idx if idx is not None else self.added_index.get(item_id)

    def to_ids(self, indices: np.ndarray) -> list[str]:
        n = len(self.base)
        return [str(self.base.ids[i]) if i < n else self.added[i - n] for i in indices.tolist()]

    def with_items(self, item_ids: list[str]) -> ItemIds:
        index = dict(self.added_index)
        index.update((item_id, len(self) + n) for n, item_id in enumerate(item_ids))
        return ItemIds(self.base, (*self.added, *item_ids), index)


@dataclass(frozen=True)
class Snapshot:
    """The item side at one moment; never mutated after publication."""

    items: ItemIds
    index: ItemIndex
    sids: SemanticIds | None

    def with_items(
        self, new: list[tuple[str, np.ndarray, np.ndarray | tuple[int, ...] | None]]
    ) -> tuple[Snapshot, list[tuple[int, ...] | None]]:
        """A copy with items ``(item_id, vector (D,), semantic ID (L+1,) or None)``
        appended in order (one index clone for all of them); returns their final IDs."""
        sids, final = self.sids, []
        for _, _, sid in new:
            if sid is not None:
                sid_arr = np.asarray(sid, dtype=np.int64).ravel()
                if sids is None:  # the run had none: only added items will have IDs
                    sids = SemanticIds.empty(len(self.items) + len(final), len(sid_arr) - 1)
                sids, final_sid = sids.with_added(sid_arr)
            else:
                final_sid = None
                if sids is not None:
                    sids = SemanticIds(
                        np.concatenate([sids.codes, np.zeros((1, sids.levels), np.int64)]),
                        np.append(sids.suffix, 0),
                        np.append(sids.present, False),
                    )
            final.append(final_sid)
        index = self.index.clone()
        index.add(np.stack([vector for _, vector, _ in new]))
        items = self.items.with_items([item_id for item_id, _, _ in new])
        return Snapshot(items, index, sids), final


class ServingState:
    """The loaded run plus the current snapshot; methods raise the errors above."""

    def __init__(
        self,
        run: RunFolder,
        config: ServeConfig,
        encoder: ItemContentEncoder | None,
        user_map: IdMap,
        user_vectors: np.ndarray,
        seen: sp.csr_matrix,
        snapshot: Snapshot,
    ) -> None:
        self.run, self.config, self.encoder = run, config, encoder
        self.user_map, self.user_vectors, self.seen = user_map, user_vectors, seen
        self.snapshot = snapshot
        self.history_query = HistoryQuery.load(run, snapshot.index.vectors.shape[1])
        self.content_fields = content_fields(run)  # (text, tabular) the encoder reads
        self._write_lock = threading.Lock()
        self.journal: AddJournal | None = None
        path = journal_path(run, config)
        if path is not None:
            fingerprint, dim = run_fingerprint(run), snapshot.index.dim
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{path}.lock"):  # workers starting together set aside once
                if config.adds_journal == "auto":
                    set_aside_stale_journal(path, fingerprint, dim)
                self.journal = AddJournal(path, fingerprint, dim)
            self.sync(blocking=True)

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        config: ServeConfig | None = None,
        encoder: ItemContentEncoder | None | str = "auto",
    ) -> ServingState:
        """Read the run folder and load (or build) the index. ``encoder="auto"``: the
        run's own (``load_item_encoder``); pass one to inject it, or None for none."""
        config = config or ServeConfig()
        run = RunFolder(Path(run_dir))
        run.manifest()
        faiss.omp_set_num_threads(config.search_threads)
        users, _ = run.embeddings()
        user_map, item_map = run.user_map(), run.item_map()
        index = load_or_build(run, config.index, dict(config.index_params) or None, config.gpu)
        sids = SemanticIds.load(run, item_map)
        if encoder == "auto":
            encoder = load_item_encoder(run)
        seen = run.matrix(TRAIN, VALID, TEST)
        snapshot = Snapshot(ItemIds(item_map), index, sids)
        return cls(run, config, encoder, user_map, users, seen, snapshot)  # type: ignore[arg-type]

    # reads ----------------------------------------------------------------------------
    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.config.max_k:
            raise InvalidInputError(f"k must lie in [1, {self.config.max_k}], got {k}", ("k",))

    def journal_status(self) -> dict | None:
        """The adds journal as ``/readyz`` reports it (None without one)."""
        if self.journal is None:
            return None
        return {"path": str(self.journal.path), "skipped_lines": self.journal.skipped}

    def _recommend(
        self, snap: Snapshot, query: np.ndarray, k: int, exclude: np.ndarray, history: np.ndarray
    ) -> list[tuple[str, float]]:
        # OpenMP thread counts are per calling thread: set it in this (pool) thread, or
        # FAISS would fan one small search out over every core and spin-wait on barriers.
        faiss.omp_set_num_threads(self.config.search_threads)
        extra = None
        if snap.sids is not None and self.config.semantic.enabled:
            extra = [snap.sids.candidates(history, self.config.semantic)]
        ids, scores = snap.index.search(query[None], k, exclude=[exclude], extra=extra)
        keep = ids[0] >= 0
        names = snap.items.to_ids(ids[0][keep])
        return list(zip(names, scores[0][keep].astype(float).tolist(), strict=True))

    def recommend_user(self, user_id: str, k: int) -> list[tuple[str, float]]:
        self.check_k(k)
        self.sync()
        u = self.user_map.get(user_id)
        if u is None:
            raise UnknownIdError(f"unknown user {user_id!r}")
        seen = self.seen.indices[self.seen.indptr[u] : self.seen.indptr[u + 1]].astype(np.int64)
        return self._recommend(self.snapshot, self.user_vectors[u], k, seen, seen)

    def recommend_history(
        self, history: list[str], k: int, exclude: list[str]
    ) -> list[tuple[str, float]]:
        self.check_k(k)
        limit = self.config.max_history
        for name, values in (("history", history), ("exclude", exclude)):
            if len(values) > limit:
                raise TooLargeError(f"{name} has {len(values)} items; at most {limit} allowed")
        if not history:
            raise InvalidInputError("history must name at least one item", ("body", "history"))
        self.sync()
        snap = self.snapshot
        hist = []
        for item_id in history:
            idx = snap.items.get(item_id)
            if idx is None:
                raise UnknownIdError(f"unknown item {item_id!r} in history")
            hist.append(idx)
        hist_arr = np.asarray(hist, dtype=np.int64)
        extra_ex = [i for i in (snap.items.get(x) for x in exclude) if i is not None]
        excluded = np.unique(np.concatenate([hist_arr, np.asarray(extra_ex, dtype=np.int64)]))
        if self.history_query is None:
            query = snap.index.vectors[hist_arr].mean(axis=0)
        else:  # the model's own user of these items, in this order
            query = self.history_query.query(snap.index.vectors[hist_arr], hist_arr)
        return self._recommend(snap, query, k, excluded, hist_arr)

    def similar(self, item_id: str, k: int) -> list[tuple[str, float]]:
        self.check_k(k)
        self.sync()
        snap = self.snapshot
        idx = snap.items.get(item_id)
        if idx is None:
            raise UnknownIdError(f"unknown item {item_id!r}")
        me = np.asarray([idx], dtype=np.int64)
        return self._recommend(snap, snap.index.vectors[idx], k, me, me)

    def semantic_id(self, item_id: str) -> tuple[int, ...]:
        self.sync()
        snap = self.snapshot
        idx = snap.items.get(item_id)
        if idx is None:
            raise UnknownIdError(f"unknown item {item_id!r}")
        if snap.sids is None:
            raise UnknownIdError(
                f"this run has no semantic IDs ({self.run.root}/semantic_ids/items.parquet)"
            )
        sid = snap.sids.get(idx)
        if sid is None:
            raise UnknownIdError(f"item {item_id!r} has no semantic ID")
        return sid

    # adds -----------------------------------------------------------------------------
    def sync(self, blocking: bool = False) -> None:
        """Replay items other workers appended to the journal (no-op without one).

        Non-blocking by default: when this worker is adding an item right now, or
        another worker holds the journal, the request is served from the current
        snapshot instead of waiting."""
        if self.journal is None or not self.journal.has_new():
            return
        if not self._write_lock.acquire(blocking=blocking):
            return
        try:
            with self.journal.locked(exclusive=False, blocking=blocking) as fh:
                if fh is not None:
                    self._apply(self.journal.read_new(fh))
        finally:
            self._write_lock.release()

    def _apply(self, records: list[AddRecord]) -> None:
        snap, fresh, seen = self.snapshot, [], set()
        for rec in records:
            if rec.item_id in snap.items or rec.item_id in seen:
                log.warning("journal: item %r already in the catalogue; skipped", rec.item_id)
                continue
            seen.add(rec.item_id)
            fresh.append((rec.item_id, rec.vector, rec.semantic_id))
        if fresh:
            self.snapshot, _ = snap.with_items(fresh)

    def add_item(self, content: ItemContent) -> tuple[tuple[int, ...] | None, int]:
        """Encode and add one item; returns ``(semantic ID or None, catalogue size)``."""
        if self.encoder is None:
            raise NotSupportedError(
                f"this run has no content encoder ({self.run.root}/item_encoder/ is missing);"
                " items cannot be added"
            )
        self.sync()
        if content.item_id in self.snapshot.items:
            raise ConflictError(f"item {content.item_id!r} already exists")
        text_fields, tabular_fields = self.content_fields
        missing_text = {f: None for f in text_fields if f not in content.text}
        missing_tab = {f: None for f in tabular_fields if f not in content.tabular}
        if missing_text or missing_tab:  # a field the encoder reads, not given: no value
            content = content.model_copy(
                update={
                    "text": {**content.text, **missing_text},
                    "tabular": {**content.tabular, **missing_tab},
                }
            )
        if content.image_path is not None:  # the encoder gets the resolved path
            image = self._check_image_path(content.image_path)
            content = content.model_copy(update={"image_path": image})
        try:
            frame = content_frame([content])
            vectors, sids = self.encoder.encode(frame)
        except (DataError, ValueError, KeyError, TypeError) as err:
            raise InvalidInputError(f"the content encoder rejected item: {err}") from None
        vector = self._check_vector(vectors)
        sid = None
        if sids is not None:
            sids = np.asarray(sids)
            if sids.ndim != 2 or len(sids) != 1 or not np.issubdtype(sids.dtype, np.integer):
                raise ConflictError(f"the content encoder returned semantic IDs {sids.shape}")
            sid = sids[0]
        with self._write_lock:
            if len(self.snapshot.items.added) >= self.config.max_added_items:
                raise ConflictError(
                    f"{self.config.max_added_items} items were added already (max_added_items)"
                )
            if self.journal is None:
                new, final_sid = self._build(content.item_id, vector, sid)
            else:
                with self.journal.locked(exclusive=True) as fh:
                    assert fh is not None
                    self._apply(self.journal.read_new(fh))
                    new, final_sid = self._build(content.item_id, vector, sid)
                    self.journal.append(fh, AddRecord(content.item_id, vector, final_sid))
            self.snapshot = new
        return final_sid, len(new.items)

    def _build(self, item_id: str, vector: np.ndarray, sid: np.ndarray | None):
        snap = self.snapshot
        if item_id in snap.items:
            raise ConflictError(f"item {item_id!r} already exists")
        if sid is not None and snap.sids is not None and len(sid) != snap.sids.levels + 1:
            raise ConflictError(
                f"the content encoder's semantic IDs have {len(sid)} values; the run's have"
                f" {snap.sids.levels + 1}"
            )
        try:
            new, (final_sid,) = snap.with_items([(item_id, vector, sid)])
        except RecsysError as err:
            raise ConflictError(str(err)) from None
        return new, final_sid

    def _check_vector(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors)
        dim = self.snapshot.index.dim
        if vectors.shape != (1, dim):
            raise ConflictError(
                f"the content encoder returned vectors of shape {vectors.shape}; the index"
                f" holds ({dim},) vectors"
            )
        vector = vectors[0].astype(np.float32)
        if not np.isfinite(vector).all():
            raise InvalidInputError("the content encoder produced non-finite values for item")
        return vector

    def _check_image_path(self, image_path: str) -> str:
        root, loc = self.config.image_root, ("body", "image_path")
        if root is None:
            raise InvalidInputError(
                "image paths are not accepted (the server has no image_root)", loc
            )
        try:  # a NUL byte or an over-long name is the client's error, not a 500
            resolved = (Path(root) / image_path).resolve()
            inside = resolved.is_relative_to(Path(root).resolve())
            is_file = inside and resolved.is_file()
        except (ValueError, OSError) as err:
            raise InvalidInputError(f"image path {image_path!r}: {err}", loc) from None
        if not inside:
            raise InvalidInputError(f"image path {image_path!r} lies outside the image root", loc)
        if not is_file:
            raise InvalidInputError(f"image path {image_path!r} is not a file", loc)
        return str(resolved)


def journal_path(run: RunFolder, config: ServeConfig) -> Path | None:
    """Where added items are journaled: ``RUN/serving/added_items.jsonl`` by default."""
    if config.adds_journal is None:
        return None
    if config.adds_journal == "auto":
        return run.root / "serving" / "added_items.jsonl"
    return Path(config.adds_journal)


def set_aside_stale_journal(path: Path, fingerprint: str, dim: int) -> None:
    """Rename a default journal whose header names another training of this run folder
    (the run was retrained in place) to ``<name>.<old fingerprint>``, with a warning."""
    stale = stale_journal_run(path, fingerprint, dim)
    if stale is not None:
        aside = path.with_name(f"{path.name}.{stale or 'unknown'}")
        log.warning("%s was written for another training of this run; moved to %s", path, aside)
        path.replace(aside)
