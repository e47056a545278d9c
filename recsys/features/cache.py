"""Disk cache for frozen item encoders.

Entries are keyed twice:

* by the **encoder fingerprint** (name, code version and every config value that changes
  the output, hashed into a stable digest): each fingerprint owns one folder, so changing
  the encoder config starts from an empty folder and recomputes every item;
* by a **content hash** of each item's input (the rendered text, or the image file bytes
  plus its path): inside a folder an item is recomputed only when its content changed.

Folder layout (``<cache_dir>/<name>-<digest>/``)::

    manifest.json          {"generation", "rows", "dim", "fingerprint": {...}}
    matrix-<gen>.npy       float32 (rows, dim)
    index-<gen>.parquet    one column ``content_hash``; row i describes matrix row i

Writers put a new generation's matrix and index in place first, then atomically replace
``manifest.json`` (temporary file + ``os.replace``), then delete the old generation; a
reader therefore always sees a complete, consistent pair. Entries are never evicted
implicitly (two item tables may share a folder); call :meth:`FeatureCache.prune`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from recsys.io import atomic_write_bytes, atomic_write_npy, atomic_write_parquet

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of a JSON-serialisable value; key order and Path/str spelling do not matter."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def content_hash(*parts: str | bytes) -> str:
    """sha256 over the given parts (length-prefixed, so ("ab", "c") != ("a", "bc"))."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class EncoderFingerprint:
    """What identifies an encoder's output: name, code version and output-relevant config."""

    name: str
    version: str
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return stable_hash({"name": self.name, "version": self.version, "config": self.config})

    @property
    def folder_name(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)
        return f"{safe}-{self.digest}"

    def to_json(self) -> dict[str, Any]:
        return json.loads(
            json.dumps(
                {"name": self.name, "version": self.version, "config": self.config},
                sort_keys=True,
                default=str,
            )
        )


@runtime_checkable
class Encoder(Protocol):
    """A frozen encoder the cache can wrap: payloads in, one float row per payload out."""

    @property
    def dim(self) -> int: ...

    def fingerprint(self) -> EncoderFingerprint: ...

    def encode(self, payloads: Sequence[Any]) -> np.ndarray: ...


class FeatureCache:
    """Per-encoder, content-addressed store of feature rows (see module docstring)."""

    def __init__(self, cache_dir: str | Path, fingerprint: EncoderFingerprint):
        self.fingerprint = fingerprint
        self.folder = Path(cache_dir) / fingerprint.folder_name
        self.last_hits = 0
        self.last_misses = 0

    # -- reading -------------------------------------------------------------------------
    def _read(self) -> tuple[list[str], np.ndarray | None]:
        manifest_path = self.folder / MANIFEST
        if not manifest_path.is_file():
            return [], None
        try:
            manifest = json.loads(manifest_path.read_text())
            gen = manifest["generation"]
            matrix = np.load(self.folder / f"matrix-{gen}.npy", allow_pickle=False)
            index = pd.read_parquet(self.folder / f"index-{gen}.parquet")
            hashes = index["content_hash"].astype(str).tolist()
            if matrix.ndim != 2 or matrix.shape[0] != len(hashes):
                raise ValueError(f"matrix {matrix.shape} does not match {len(hashes)} index rows")
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as err:
            log.warning("feature cache %s is unreadable (%s); recomputing", self.folder, err)
            return [], None
        return hashes, matrix

    def __len__(self) -> int:
        return len(self._read()[0])

    # -- writing -------------------------------------------------------------------------
    def _write(self, hashes: list[str], matrix: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        old = None
        manifest_path = self.folder / MANIFEST
        if manifest_path.is_file():
            try:
                old = json.loads(manifest_path.read_text()).get("generation")
            except (OSError, json.JSONDecodeError):
                old = None
        gen = uuid.uuid4().hex[:12]
        atomic_write_npy(self.folder / f"matrix-{gen}.npy", np.ascontiguousarray(matrix))
        index = pd.DataFrame({"content_hash": pd.Series(hashes, dtype=object)})
        atomic_write_parquet(index, self.folder / f"index-{gen}.parquet")
        manifest = {
            "generation": gen,
            "rows": int(matrix.shape[0]),
            "dim": int(matrix.shape[1]),
            "fingerprint": self.fingerprint.to_json(),
        }
        atomic_write_bytes(
            manifest_path, json.dumps(manifest, indent=2).encode("utf-8"), durable=True
        )
        if old and old != gen:
            for stale in (f"matrix-{old}.npy", f"index-{old}.parquet"):
                (self.folder / stale).unlink(missing_ok=True)

    # -- public --------------------------------------------------------------------------
    def get_or_compute(
        self,
        keys: Sequence[str],
        compute: Callable[[list[int]], np.ndarray],
    ) -> np.ndarray:
        """Rows for ``keys`` (content hashes), computing only those not on disk.

        ``compute(positions)`` receives positions into ``keys`` (one per distinct missing
        key) and returns a ``(len(positions), D)`` matrix. New rows are persisted before
        returning. The result is float32 ``(len(keys), D)`` in ``keys`` order.
        """
        keys = [str(k) for k in keys]
        hashes, matrix = self._read()
        where = {h: i for i, h in enumerate(hashes)}
        first_pos: dict[str, int] = {}
        for pos, key in enumerate(keys):
            if key not in where and key not in first_pos:
                first_pos[key] = pos
        miss_keys = list(first_pos)
        self.last_misses = len(miss_keys)
        self.last_hits = len({k for k in keys if k in where})
        if miss_keys:
            new = np.asarray(compute([first_pos[k] for k in miss_keys]), dtype=np.float32)
            if new.ndim != 2 or new.shape[0] != len(miss_keys):
                raise ValueError(
                    f"encoder {self.fingerprint.name!r} returned shape {new.shape} for "
                    f"{len(miss_keys)} inputs"
                )
            if matrix is not None and matrix.shape[1] != new.shape[1]:
                raise ValueError(
                    f"encoder {self.fingerprint.name!r} returned dim {new.shape[1]} but the cache "
                    f"in {self.folder} holds dim {matrix.shape[1]} for the same fingerprint"
                )
            start = 0 if matrix is None else matrix.shape[0]
            matrix = new if matrix is None else np.concatenate([matrix, new], axis=0)
            for i, k in enumerate(miss_keys):
                where[k] = start + i
            hashes = hashes + miss_keys
            self._write(hashes, matrix)
        if not keys:
            dim = 0 if matrix is None else matrix.shape[1]
            return np.zeros((0, dim), dtype=np.float32)
        assert matrix is not None
        rows = np.fromiter((where[k] for k in keys), dtype=np.int64, count=len(keys))
        return np.asarray(matrix[rows], dtype=np.float32)

    def prune(self, keep: Sequence[str]) -> int:
        """Drop every entry whose content hash is not in ``keep``; returns how many were dropped."""
        hashes, matrix = self._read()
        if matrix is None:
            return 0
        keep_set = set(keep)
        rows = [i for i, h in enumerate(hashes) if h in keep_set]
        dropped = len(hashes) - len(rows)
        if dropped:
            self._write([hashes[i] for i in rows], matrix[rows])
        return dropped


def cached_encode(
    encoder: Encoder,
    payloads: Sequence[Any],
    keys: Sequence[str],
    cache_dir: str | Path | None,
) -> np.ndarray:
    """``encoder.encode(payloads)`` through a :class:`FeatureCache` (no cache if ``cache_dir``
    is None); ``keys`` are the payloads' content hashes."""
    if len(payloads) != len(keys):
        raise ValueError(f"{len(payloads)} payloads but {len(keys)} keys")
    if not payloads:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    if cache_dir is None:
        return np.asarray(encoder.encode(list(payloads)), dtype=np.float32)
    cache = FeatureCache(cache_dir, encoder.fingerprint())
    out = cache.get_or_compute(keys, lambda pos: encoder.encode([payloads[i] for i in pos]))
    log.info(
        "%s features: %d cached, %d computed (%s)",
        cache.fingerprint.name,
        cache.last_hits,
        cache.last_misses,
        cache.folder,
    )
    return out
