"""Semantic-ID-aware candidates: items sharing the prefixes a user's history uses most.

``RUN/semantic_ids/items.parquet`` (optional) holds one row per item: ``item_id`` (str),
``c0 .. c{L-1}`` (int codes, coarse to fine) and ``suffix`` (int, disambiguates items with
the same codes). A semantic ID is the tuple ``(c0, .., c{L-1}, suffix)``.

Candidates for a history: count the history items' prefixes of length ``p``, take the
``n_prefixes`` most frequent (ties: first seen in the history), and return the items of
those prefix buckets (most frequent prefix first, item index ascending within a bucket),
at most ``max_candidates``. Callers merge them with the ANN hits and rescore everything
by dot product (``ItemIndex.search(extra=...)``), so these candidates can only add items
the ANN missed; they never reorder by anything but the model's score.

``p`` defaults to the longest prefix whose buckets hold ``min_bucket`` items on average:
full IDs are unique, so the finest useful level depends on the codebook and catalogue.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from recsys.artifacts import RunFolder
from recsys.config import StrictModel
from recsys.data.idmap import IdMap
from recsys.errors import ArtifactError, RecsysError

log = logging.getLogger(__name__)

Prefix = tuple[int, ...]


class SemanticCandidatesConfig(StrictModel):
    enabled: bool = True
    prefix_len: int | None = Field(None, ge=1)
    min_bucket: float = Field(8.0, gt=0)
    n_prefixes: int = Field(3, ge=1)
    max_candidates: int = Field(200, ge=0)


def semantic_ids_path(run: RunFolder) -> Path:
    return run.root / "semantic_ids" / "items.parquet"


class SemanticIds:
    """Semantic IDs by item index: ``codes (n, L)`` int64, ``suffix (n,)``, ``present (n,)``
    (False for items without one). Immutable: :meth:`with_added` returns a new object."""

    def __init__(self, codes: np.ndarray, suffix: np.ndarray, present: np.ndarray) -> None:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] < 1:
            raise RecsysError(f"codes must be (n, L) with L >= 1, got shape {codes.shape}")
        self.codes = codes
        self.suffix = np.asarray(suffix, dtype=np.int64)
        self.present = np.asarray(present, dtype=bool)
        if not (len(self.suffix) == len(self.present) == len(codes)):
            raise RecsysError("codes, suffix and present must have the same length")
        self._buckets: dict[int, dict[Prefix, np.ndarray]] = {}
        self._max_suffix: dict[Prefix, int] | None = None
        self._prefix_len: dict[float, int] = {}  # min_bucket -> chosen length

    @property
    def levels(self) -> int:
        return self.codes.shape[1]

    def __len__(self) -> int:
        return len(self.codes)

    # loading ------------------------------------------------------------------------
    @classmethod
    def load(cls, run: RunFolder, item_map: IdMap) -> SemanticIds | None:
        """The run's semantic IDs aligned with ``item_map``, or None without the file."""
        path = semantic_ids_path(run)
        if not path.exists():
            return None
        frame = pd.read_parquet(path)
        levels = sorted(int(m[1]) for c in frame.columns if (m := re.fullmatch(r"c(\d+)", c)))
        if "item_id" not in frame or "suffix" not in frame or not levels:
            raise ArtifactError(f"{path}: needs columns item_id, c0..c{{L-1}}, suffix")
        if levels != list(range(len(levels))):
            raise ArtifactError(f"{path}: code columns must be c0..c{len(levels) - 1}")
        cols = [f"c{i}" for i in levels] + ["suffix"]
        for col in cols:
            if not pd.api.types.is_integer_dtype(frame[col]):
                raise ArtifactError(f"{path}: column {col} must be integer, is {frame[col].dtype}")
            if len(frame) and int(frame[col].min()) < 0:
                raise ArtifactError(f"{path}: column {col} has negative codes")
        ids = frame["item_id"].astype(str)
        if ids.duplicated().any():
            raise ArtifactError(f"{path}: item_id {ids[ids.duplicated()].iloc[0]!r} repeats")
        unknown = [i for i in ids if i not in item_map]
        if unknown:
            raise ArtifactError(
                f"{path}: {len(unknown)} item ids not in the run, e.g. {unknown[0]!r}"
            )
        idx = item_map.to_index(ids)
        n = len(item_map)
        codes = np.zeros((n, len(levels)), dtype=np.int64)
        suffix = np.zeros(n, dtype=np.int64)
        present = np.zeros(n, dtype=bool)
        codes[idx] = frame[cols[:-1]].to_numpy(np.int64)
        suffix[idx] = frame["suffix"].to_numpy(np.int64)
        present[idx] = True
        out = cls(codes, suffix, present)
        full = np.concatenate([codes[present], suffix[present, None]], axis=1)
        if len(np.unique(full, axis=0)) != len(full):
            log.warning("%s: semantic IDs are not unique across items", path)
        return out

    @classmethod
    def empty(cls, n_items: int, levels: int) -> SemanticIds:
        """No item has an ID yet (a run without semantic IDs whose encoder makes them)."""
        return cls(
            np.zeros((n_items, levels), np.int64),
            np.zeros(n_items, np.int64),
            np.zeros(n_items, bool),
        )

    # queries ------------------------------------------------------------------------
    def get(self, item: int) -> tuple[int, ...] | None:
        """``(c0, .., c{L-1}, suffix)`` of item index ``item``, or None."""
        if not 0 <= item < len(self) or not self.present[item]:
            return None
        return (*(int(c) for c in self.codes[item]), int(self.suffix[item]))

    def _pick_prefix_len(self, min_bucket: float) -> int:
        pres = self.codes[self.present]
        if len(pres) == 0:
            return 1
        for p in range(self.levels, 0, -1):
            n_buckets = len(np.unique(pres[:, :p], axis=0))
            if len(pres) / n_buckets >= min_bucket:
                return p
        return 1

    def prefix_len(self, config: SemanticCandidatesConfig) -> int:
        """The prefix length ``config`` means here (chosen once; kept across adds)."""
        if config.prefix_len is not None:
            return min(config.prefix_len, self.levels)
        if config.min_bucket not in self._prefix_len:
            self._prefix_len[config.min_bucket] = self._pick_prefix_len(config.min_bucket)
        return self._prefix_len[config.min_bucket]

    def buckets(self, p: int) -> dict[Prefix, np.ndarray]:
        """Prefix of length ``p`` → item indices with it, ascending (computed once)."""
        if not 1 <= p <= self.levels:
            raise RecsysError(f"prefix length must lie in [1, {self.levels}], got {p}")
        if p not in self._buckets:
            items = np.flatnonzero(self.present)
            keys = self.codes[items, :p]
            uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
            order = np.argsort(inverse.ravel(), kind="stable")
            splits = np.cumsum(np.bincount(inverse.ravel(), minlength=len(uniq)))[:-1]
            groups = np.split(items[order], splits)
            self._buckets[p] = {
                tuple(int(c) for c in key): grp for key, grp in zip(uniq, groups, strict=True)
            }
        return self._buckets[p]

    def candidates(self, history: np.ndarray, config: SemanticCandidatesConfig) -> np.ndarray:
        """Candidate item indices ``(C,)`` for a history of item indices (see module doc)."""
        if not config.enabled or config.max_candidates == 0:
            return np.empty(0, np.int64)
        history = np.asarray(history, dtype=np.int64)
        history = history[(history >= 0) & (history < len(self))]
        history = history[self.present[history]]
        if len(history) == 0:
            return np.empty(0, np.int64)
        p = self.prefix_len(config)
        counts = Counter(tuple(int(c) for c in row) for row in self.codes[history, :p])
        buckets = self.buckets(p)
        picked = [buckets[prefix] for prefix, _ in counts.most_common(config.n_prefixes)]
        return np.concatenate(picked)[: config.max_candidates]

    # updates ------------------------------------------------------------------------
    def with_added(self, sid: np.ndarray) -> tuple[SemanticIds, tuple[int, ...]]:
        """A copy with one more item (index ``len(self)``) whose ID is ``sid`` ``(L+1,)``.

        The codes are kept; the suffix is the encoder's unless another item already has
        that exact ID, in which case it becomes one more than the largest suffix used
        with these codes (TIGER's disambiguation), so IDs stay unique.
        """
        sid = np.asarray(sid, dtype=np.int64).ravel()
        if len(sid) != self.levels + 1:
            raise RecsysError(
                f"the encoder's semantic ID has {len(sid)} values; this run's have"
                f" {self.levels} codes + 1 suffix"
            )
        if (sid < 0).any():
            raise RecsysError("semantic ID codes must be non-negative")
        codes, suffix = sid[:-1], int(sid[-1])
        key = tuple(int(c) for c in codes)
        max_suffix = self._suffix_index()
        taken = self._taken(key, suffix)
        if taken:
            suffix = max_suffix[key] + 1
        new = SemanticIds(
            np.concatenate([self.codes, codes[None]]),
            np.append(self.suffix, suffix),
            np.append(self.present, True),
        )
        item = len(self)
        # Carry the caches over, touching only the buckets the new item joins.
        new._max_suffix = dict(max_suffix)
        new._max_suffix[key] = max(max_suffix.get(key, -1), suffix)
        for p, buckets in self._buckets.items():
            copy = dict(buckets)
            prefix = key[:p]
            copy[prefix] = np.append(copy.get(prefix, np.empty(0, np.int64)), item)
            new._buckets[p] = copy
        new._prefix_len = dict(self._prefix_len)
        return new, (*key, suffix)

    def _suffix_index(self) -> dict[Prefix, int]:
        if self._max_suffix is None:
            out: dict[Prefix, int] = {}
            for row, suf in zip(self.codes[self.present], self.suffix[self.present], strict=True):
                key = tuple(int(c) for c in row)
                out[key] = max(out.get(key, -1), int(suf))
            self._max_suffix = out
        return self._max_suffix

    def _taken(self, key: Prefix, suffix: int) -> bool:
        if key not in self._suffix_index():
            return False
        same = self.present & (self.suffix == suffix) & (self.codes == np.array(key)).all(axis=1)
        return bool(same.any())
