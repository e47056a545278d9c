"""An append-only JSON-lines file of added items, shared by the workers of one server.

Line 1 is a header naming the run (fingerprint) and the vector dimension; every other line
is one added item ``{"item_id", "vector", "semantic_id"}``. Vectors are float32 values
written as JSON numbers (exact round trip).

Locking (``fcntl.flock`` on the file): an adder takes the exclusive lock, first replays
the lines other workers appended (so every worker assigns the same FAISS ids, in journal
order), then appends its line, flushes and fsyncs. Readers catch up under the shared lock.
A line without its newline (a writer killed mid-write) is ignored and cut off by the next
adder.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from recsys.errors import ArtifactError

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
        out = []
        for n, line in enumerate(data[:end].splitlines()):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ArtifactError(f"{self.path}: corrupt line: {err}") from None
            if self.offset == 0 and n == 0:
                self._check_header(obj)
            else:
                out.append(self._record(obj))
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

    def _record(self, obj: dict) -> AddRecord:
        try:
            vector = np.asarray(obj["vector"], dtype=np.float32)
            sid = obj.get("semantic_id")
            record = AddRecord(str(obj["item_id"]), vector, None if sid is None else tuple(sid))
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{self.path}: bad record: {err}") from None
        if vector.shape != (self.dim,):
            raise ArtifactError(f"{self.path}: item {record.item_id!r} has a {vector.shape} vector")
        return record
