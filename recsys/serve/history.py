"""The query of a user known only by their items (``POST /v1/recommendations``).

A model whose users are a function of their history ships ``RUN/history_query/``, whose
``query.json`` lists segments of the user vector, each computed from the request's history
(oldest first; ``k = 0`` below is the latest item, ``w_k ∝ decay^k`` over the last
``window`` items, or all of them when ``window`` is null, normalised to sum to 1)::

    {"segments": [
      {"columns": [a, b], "pool": "items", "decay": d, "window": null, "scale": s},
          s × Σ_k w_k v_{j_k}[a:b]: the history's own item vectors (L2-normalised
          instead of scaled with "normalize": true)
      {"columns": [a, b], "pool": "table", "table": "source", "decay": d, "window": W,
       "scale": s},
          s × Σ_k w_k T[j_k] over rows of ``arrays.npz["source"]`` (catalogue items); an
          item added since has no row (zeros)
      {"columns": [a, b], "constant": c}
    ]}

A pooling segment may also carry ``"count_power": p`` (0 ≤ p ≤ 1): its pooled vector is
multiplied by ``n^p``, ``n`` the number of items its window covers (with decay 1,
p = 0.5 gives ``n^(-1/2) Σ``: LightGCN's normalisation of a user folded into the graph).
Segments naming the same columns add up; columns no segment names are the plain mean of
the history's item vectors, which is also the whole query of a run without the folder.
Serving never imports training code for this: the model that wrote the folder described
its users in these terms.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from recsys.artifacts import RunFolder
from recsys.errors import ArtifactError


def history_query_dir(run: RunFolder) -> Path:
    return run.root / "history_query"


def recency_weights(n: int, decay: float, window: int | None) -> np.ndarray:
    """``(n,)`` weights of a history of ``n`` items, oldest first: ``decay^k`` for the
    k-th most recent of the last ``window`` (0 before), normalised to sum to 1."""
    age = np.arange(n)[::-1]
    weights = np.where(age < (window if window is not None else n), decay**age, 0.0)
    return weights / weights.sum()


class HistoryQuery:
    def __init__(self, folder: Path, dim: int) -> None:
        spec_path = folder / "query.json"
        try:
            spec = json.loads(spec_path.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{folder}: query.json is missing") from None
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{spec_path}: invalid JSON: {err}") from None
        arrays_path = folder / "arrays.npz"
        self.arrays: dict[str, np.ndarray] = {}
        if arrays_path.exists():
            with np.load(arrays_path) as arrays:
                self.arrays = {name: arrays[name] for name in arrays.files}
        self.segments: list[dict[str, Any]] = spec.get("segments", [])
        for i, segment in enumerate(self.segments):
            where = f"{spec_path}: segments[{i}]"
            a, b = segment.get("columns", (None, None))
            if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < b <= dim):
                raise ArtifactError(f"{where}: columns must be [a, b] with 0 <= a < b <= {dim}")
            if segment.get("pool") == "table":
                table = self.arrays.get(segment.get("table", ""))
                if table is None or table.ndim != 2 or table.shape[1] != b - a:
                    raise ArtifactError(f"{where}: arrays.npz has no ({b - a})-wide table")
            elif segment.get("pool") != "items" and "constant" not in segment:
                raise ArtifactError(f"{where}: needs pool 'items' or 'table', or a constant")
            decay = segment.get("decay")
            if "pool" in segment and not (isinstance(decay, int | float) and 0 < decay <= 1):
                raise ArtifactError(f"{where}: decay must lie in (0, 1], got {decay!r}")
            power = segment.get("count_power", 0.0)
            if not (isinstance(power, int | float) and 0 <= power <= 1):
                raise ArtifactError(f"{where}: count_power must lie in [0, 1], got {power!r}")

    @classmethod
    def load(cls, run: RunFolder, dim: int) -> HistoryQuery | None:
        folder = history_query_dir(run)
        return cls(folder, dim) if folder.exists() else None

    def _table_rows(self, name: str, items: np.ndarray) -> np.ndarray:
        """Rows of table ``name`` for item indices ``items (N,)``; zeros for items beyond
        the catalogue (added after training)."""
        table = self.arrays[name]
        rows = np.zeros((len(items), table.shape[1]))
        known = items < len(table)
        rows[known] = table[items[known]]
        return rows

    def query(self, vectors: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``(D,)`` float32 query of the history ``items (N,)`` (oldest first) whose item
        vectors are ``vectors (N, D)``."""
        query = vectors.mean(axis=0).astype(np.float64)
        for segment in self.segments:  # named columns: the sum of their segments
            a, b = segment["columns"]
            query[a:b] = 0.0
        for segment in self.segments:
            a, b = segment["columns"]
            if "constant" in segment:
                query[a:b] += float(segment["constant"])
                continue
            window = segment.get("window")
            weights = recency_weights(len(items), float(segment["decay"]), window)
            if segment["pool"] == "items":
                rows = vectors[:, a:b]
            else:
                rows = self._table_rows(segment["table"], items)
            pooled = weights @ rows
            if segment.get("normalize", False):
                pooled = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
            covered = len(items) if window is None else min(len(items), window)
            pooled = pooled * covered ** float(segment.get("count_power", 0.0))
            query[a:b] += float(segment.get("scale", 1.0)) * pooled
        return query.astype(np.float32)
