"""Atomic file writes: a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = False) -> None:
    """``data`` under ``path``; ``durable``: flushed to the disk before the rename (a
    manifest whose files must exist after a power cut, not just after a crash)."""

    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())

    _atomic(path, write)


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_parquet(frame: pd.DataFrame, path: str | Path) -> None:
    _atomic(path, lambda p: frame.to_parquet(p, index=False))


def atomic_write_npy(path: str | Path, array: np.ndarray) -> None:
    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.save(fh, array, allow_pickle=False)

    _atomic(path, write)
