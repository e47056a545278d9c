"""An append-only JSON-lines file of added items, shared by the workers of one server.

Line 1 is a header naming the run (fingerprint) and the vector dimension; every other line
is one added item ``{"item_id", "vector", "semantic_id"}``. Vectors are float32 values
written as JSON numbers (exact round trip).

Locking (``fcntl.flock`` on the file): an adder takes the exclusive lock, first replays
the lines other workers appended (so every worker assigns the same FAISS ids, in journal
order), then appends its line, flushes and fsyncs. Readers catch up under the shared lock.
A line without its newline (a writer killed mid-write) is ignored and cut off by the next
adder. A complete line that is not a valid record (a disk error, a hand edit, a foreign
writer) is skipped with a warning and counted in ``skipped``: it costs that one item, never
a request. A bad header still refuses the file, which may belong to something else.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from recsys.errors import ArtifactError

log = logging.getLogger(__name__)

KIND = "recsys-added-items"
VERSION = 1


@dataclass
class AddRecord:
    item_id: str
    vector: np.ndarray  # (D,) float32
    semantic_id: tuple[int, ...] | None

    def to_json(self) -> str:
        return json.dumps(
            {
                "item_id": self.item_id,
                "vector": [float(v) for v in self.vector],
                "semantic_id": None if self.semantic_id is None else list(self.semantic_id),
            },
            separators=(",", ":"),
        )


class AddJournal:
    def __init__(self, path: str | Path, fingerprint: str, dim: int) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.dim = dim
        self.offset = 0  # bytes consumed (complete lines only)
        self.skipped = 0  # complete lines that were not valid records
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.locked(exclusive=True) as fh:
            assert fh is not None
            if b"\n" not in fh.readline():  # new, or a header cut short by a crash
                fh.seek(0)
                fh.truncate()
                header = {"kind": KIND, "version": VERSION, "run": fingerprint, "dim": dim}
                fh.write((json.dumps(header) + "\n").encode())
                fh.flush()
                os.fsync(fh.fileno())

    @contextmanager
    def locked(self, exclusive: bool, blocking: bool = True) -> Iterator[IO[bytes] | None]:
        """The open file under a shared/exclusive lock; None if ``blocking`` is False
        and the lock is taken."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+b") as fh:
            flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            try:
                fcntl.flock(fh, flags | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield None
                return
            try:
                yield fh
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def has_new(self) -> bool:
        """Did the file grow since the last read? (one ``stat``, no lock)"""
        try:
            return self.path.stat().st_size > self.offset
        except FileNotFoundError:
            return False

    def read_new(self, fh: IO[bytes]) -> list[AddRecord]:
        """Complete lines after ``offset`` (call with a lock held)."""
        fh.seek(self.offset)
        data = fh.read()
        end = data.rfind(b"\n") + 1  # ignore a trailing partial line
        out, at = [], self.offset
        for n, line in enumerate(data[:end].split(b"\n")[:-1]):
            start, at = at, at + len(line) + 1
            if self.offset == 0 and n == 0:
                try:
                    self._check_header(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ArtifactError(f"{self.path}: corrupt header line: {err}") from None
                continue
            try:
                out.append(self._record(json.loads(line)))
            except (json.JSONDecodeError, UnicodeDecodeError, ArtifactError) as err:
                self.skipped += 1
                log.warning("%s: skipped a corrupt line at byte %d: %s", self.path, start, err)
        self.offset += end
        return out

    def append(self, fh: IO[bytes], record: AddRecord) -> None:
        """Append one line (call with the exclusive lock held, after :meth:`read_new`)."""
        fh.seek(0, os.SEEK_END)
        if fh.tell() != self.offset:  # a partial line left by a killed writer
            fh.truncate(self.offset)
        fh.seek(self.offset)
        fh.write((record.to_json() + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())
        self.offset = fh.tell()

    def _check_header(self, obj: dict) -> None:
        if not isinstance(obj, dict) or obj.get("kind") != KIND:
            raise ArtifactError(f"{self.path}: not a {KIND} journal (bad header line)")
        if obj.get("version") != VERSION:
            raise ArtifactError(f"{self.path}: journal version {obj.get('version')}")
        if obj.get("run") != self.fingerprint or obj.get("dim") != self.dim:
            raise ArtifactError(
                f"{self.path} belongs to another run (fingerprint {obj.get('run')}, dim"
                f" {obj.get('dim')}; this run: {self.fingerprint}, dim {self.dim})"
            )

    def _record(self, obj: object) -> AddRecord:
        try:
            assert isinstance(obj, dict), "not an object"
            item_id, sid = obj["item_id"], obj.get("semantic_id")
            assert isinstance(item_id, str) and item_id, "item_id must be a non-empty string"
            vector = np.asarray(obj["vector"], dtype=np.float32)
            if sid is not None:
                sid = tuple(int(c) for c in sid)
        except (AssertionError, KeyError, TypeError, ValueError, OverflowError) as err:
            raise ArtifactError(f"bad record: {err}") from None
        if vector.shape != (self.dim,) or not np.isfinite(vector).all():
            raise ArtifactError(f"item {item_id!r} has a {vector.shape} or non-finite vector")
        return AddRecord(item_id, vector, sid)


def stale_journal_run(path: Path, fingerprint: str, dim: int) -> str | None:
    """The fingerprint a journal's header names when it is not this run's (``""`` for an
    unreadable header); None when the journal is this run's, or absent or empty."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
    except FileNotFoundError:
        return None
    if b"\n" not in first:
        return None  # empty, or a header cut short: AddJournal rewrites it
    try:
        header = json.loads(first)
        assert isinstance(header, dict) and header.get("kind") == KIND
    except (json.JSONDecodeError, UnicodeDecodeError, AssertionError):
        return ""
    if header.get("run") == fingerprint and header.get("dim") == dim:
        return None
    return str(header.get("run") or "")
