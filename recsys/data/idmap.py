"""Original string ids ↔ contiguous integer indices."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.errors import DataError
from recsys.io import atomic_write_parquet


def sort_ids(ids: Iterable[str]) -> list[str]:
    """Numeric ids sort as numbers ("2" < "10"), anything else lexicographically."""
    unique = set(ids)
    if all(s.isdigit() for s in unique):
        return sorted(unique, key=lambda s: (len(s.lstrip("0")), s.lstrip("0"), s))
    return sorted(unique)


class IdMap:
    """A bijection between original ids (strings) and indices ``0..n-1``."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = np.asarray(list(ids), dtype=object)
        self._index = {s: i for i, s in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise DataError("IdMap: ids are not unique")

    @classmethod
    def from_values(cls, values: Iterable[str]) -> IdMap:
        return cls(sort_ids(values))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, original_id: object) -> bool:
        return original_id in self._index

    def index(self, original_id: str) -> int:
        return self._index[original_id]

    def get(self, original_id: str) -> int | None:
        return self._index.get(original_id)

    def to_index(self, values: Iterable[str]) -> np.ndarray:
        """Map ids to indices; every id must be known.  Returns ``(N,)`` int64."""
        index = self._index
        try:
            return np.fromiter((index[v] for v in values), dtype=np.int64)
        except KeyError as err:
            raise DataError(f"unknown id {err.args[0]!r}") from None

    def to_ids(self, indices: np.ndarray) -> np.ndarray:
        return self.ids[np.asarray(indices, dtype=np.int64)]

    def save(self, path: str | Path) -> None:
        atomic_write_parquet(pd.DataFrame({"index": np.arange(len(self)), "id": self.ids}), path)

    @classmethod
    def load(cls, path: str | Path) -> IdMap:
        frame = pd.read_parquet(path)
        if not np.array_equal(frame["index"].to_numpy(), np.arange(len(frame))):
            raise DataError(f"{path}: index column is not 0..n-1")
        return cls(frame["id"].astype(str).tolist())
