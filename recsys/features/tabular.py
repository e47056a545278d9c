"""Tabular item features: multi-hot categorical/multi-valued fields, standardised numerics.

* ``categorical``: one value per item → one-hot over the field's vocabulary.
* ``multi_valued``: genres, attributes, category paths → multi-hot. A value may be a list,
  or a string split on the field's separator (default ``"|"``). Nested lists are
  category paths: ``[["Beauty", "Makeup", "Nails"]]`` gives the tokens ``Beauty``,
  ``Beauty > Makeup`` and ``Beauty > Makeup > Nails`` (every prefix, so siblings share
  their parents' columns).
* ``numeric``: ``(x - mean) / std`` with mean/std (population, ddof=0) fit on the table;
  a missing value becomes 0 and sets the field's ``<field>__missing`` indicator column.
  Fields also listed in ``log_numeric`` are mapped to ``sign(x)·log(1 + |x|)`` first
  (counts, budgets and vote totals are heavy-tailed: raw, one blockbuster sets the scale).
* ``dates``: column → ``strptime`` format (None: let pandas infer); the date becomes days
  since 1970-01-01 and is then treated like a numeric field (standardised, indicator).

The vocabulary keeps values seen in at least ``min_count`` items, ordered by count then
value. Values not in it at transform time are ignored and counted (``unseen_counts``).
Column names: ``"<field>=<value>"`` for (multi-)hot columns, ``"<field>"`` and
``"<field>__missing"`` for numerics.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from recsys.config import StrictModel
from recsys.errors import ArtifactError, DataError
from recsys.features.text import check_columns
from recsys.features.values import is_missing
from recsys.io import atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT = "recsys.features.tabular"
FORMAT_VERSION = 1


class TabularConfig(StrictModel):
    """Which item columns become tabular features, and how."""

    categorical: list[str] = Field(default_factory=list)
    multi_valued: list[str] = Field(default_factory=list)
    numeric: list[str] = Field(default_factory=list)
    log_numeric: list[str] = Field(
        default_factory=list, description="numeric fields log-transformed before scaling"
    )
    dates: dict[str, str | None] = Field(
        default_factory=dict, description="date column → strptime format (None: inferred)"
    )
    min_count: int = Field(default=1, ge=1, description="drop values seen in fewer items")
    separator: str = Field(default="|", min_length=1, description="splits string values")
    separators: dict[str, str] = Field(
        default_factory=dict, description="per-field separator overrides"
    )
    path_separator: str = Field(default=" > ", description="joins category-path prefixes")

    @model_validator(mode="after")
    def _check(self) -> TabularConfig:
        fields = self.categorical + self.multi_valued + self.numeric + list(self.dates)
        if not fields:
            raise ValueError("name at least one categorical, multi_valued or numeric column")
        dupes = sorted({f for f in fields if fields.count(f) > 1})
        if dupes:
            raise ValueError(f"columns listed more than once: {', '.join(dupes)}")
        not_numeric = sorted(set(self.log_numeric) - set(self.numeric))
        if not_numeric:
            raise ValueError(f"log_numeric columns not in numeric: {', '.join(not_numeric)}")
        unknown = sorted(set(self.separators) - set(self.multi_valued))
        if unknown:
            raise ValueError(f"separators for columns not in multi_valued: {', '.join(unknown)}")
        if any(not s for s in self.separators.values()):
            raise ValueError("separators must be non-empty")
        return self


def _is_listlike(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def _token(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _item_label(items: pd.DataFrame, row: int) -> str:
    if "item_id" in items.columns:
        return f"item {items['item_id'].iloc[row]!r} (row {row})"
    return f"row {row}"


class TabularEncoder:
    """Fit a vocabulary and numeric statistics on an item table; transform tables with it."""

    def __init__(self, config: TabularConfig):
        self.config = config
        self.vocab: dict[str, list[str]] = {}
        self.stats: dict[str, dict[str, float]] = {}
        self.unseen_counts: dict[str, int] = {}
        self._fitted = False

    # -- value parsing -------------------------------------------------------------------
    def _multi_tokens(self, field: str, value: Any) -> list[str]:
        if is_missing(value):
            return []
        if isinstance(value, str):
            sep = self.config.separators.get(field, self.config.separator)
            tokens = [t.strip() for t in value.split(sep)]
        elif _is_listlike(value):
            tokens = []
            for element in value:
                if is_missing(element):
                    continue
                if _is_listlike(element):  # a category path: every prefix is a token
                    path = [_token(p) for p in element if not is_missing(p)]
                    tokens += [
                        self.config.path_separator.join(path[: k + 1]) for k in range(len(path))
                    ]
                else:
                    tokens.append(_token(element))
        else:
            tokens = [_token(value)]
        return list(dict.fromkeys(t for t in tokens if t))

    def _field_tokens(self, items: pd.DataFrame, field: str) -> list[list[str]]:
        values = items[field].tolist()
        if field in self.config.multi_valued:
            return [self._multi_tokens(field, v) for v in values]
        out = []
        for row, value in enumerate(values):
            if is_missing(value):
                out.append([])
            elif _is_listlike(value) or isinstance(value, dict):
                raise DataError(
                    f"item table: column {field!r} is categorical (one value per item) but "
                    f"{_item_label(items, row)} holds {type(value).__name__} {value!r}; "
                    "list it under multi_valued instead"
                )
            else:
                token = _token(value)
                out.append([token] if token else [])
        return out

    def _date_values(self, items: pd.DataFrame, field: str) -> np.ndarray:
        raw = items[field]
        fmt = self.config.dates[field]
        parsed = pd.to_datetime(raw, format=fmt, errors="coerce")
        blank = raw.map(is_missing).to_numpy(dtype=bool)
        bad = ~blank & parsed.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"item table: date column {field!r} has a value {raw.iloc[row]!r} at "
                f"{_item_label(items, row)} that does not parse"
                + (f" with format {fmt!r}" if fmt else "")
                + f" ({int(bad.sum())} such rows)"
            )
        days = (parsed - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)
        return np.asarray(days, dtype=np.float64)

    def _numeric_values(self, items: pd.DataFrame, field: str) -> np.ndarray:
        if field in self.config.dates:
            return self._date_values(items, field)
        numbers = self._raw_numbers(items, field)
        if field in self.config.log_numeric:
            numbers = np.sign(numbers) * np.log1p(np.abs(numbers))
        return numbers

    def _raw_numbers(self, items: pd.DataFrame, field: str) -> np.ndarray:
        raw = items[field]
        if raw.dtype == bool:
            raw = raw.astype(float)
        numbers = np.array(pd.to_numeric(raw, errors="coerce"), dtype=np.float64)
        given = ~raw.isna().to_numpy()
        blank = raw.map(lambda v: isinstance(v, str) and not v.strip()).to_numpy(dtype=bool)
        bad = given & ~blank & ~np.isfinite(numbers)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"item table: numeric column {field!r} has a non-numeric or non-finite value "
                f"{raw.iloc[row]!r} at {_item_label(items, row)} ({int(bad.sum())} such rows)"
            )
        numbers[blank] = np.nan
        return numbers

    # -- fit / transform -----------------------------------------------------------------
    @property
    def fields(self) -> list[str]:
        return self.config.categorical + self.config.multi_valued + self.numeric_fields

    @property
    def numeric_fields(self) -> list[str]:
        """Numeric columns, then dates (both standardised numbers with an indicator)."""
        return self.config.numeric + list(self.config.dates)

    def fit(self, items: pd.DataFrame) -> TabularEncoder:
        check_columns(items, self.fields, "tabular config")
        self.vocab = {}
        for field in self.config.categorical + self.config.multi_valued:
            counts = Counter(t for tokens in self._field_tokens(items, field) for t in tokens)
            kept = [t for t, c in counts.items() if c >= self.config.min_count]
            self.vocab[field] = sorted(kept, key=lambda t: (-counts[t], t))
        self.stats = {}
        for field in self.numeric_fields:
            values = self._numeric_values(items, field)
            finite = values[np.isfinite(values)]
            mean = float(finite.mean()) if finite.size else 0.0
            std = float(finite.std()) if finite.size else 1.0
            self.stats[field] = {"mean": mean, "std": std if std > 0 else 1.0}
        self._fitted = True
        return self

    @property
    def columns(self) -> list[str]:
        self._check_fitted()
        cols = [f"{field}={value}" for field, values in self.vocab.items() for value in values]
        for field in self.numeric_fields:
            cols += [field, f"{field}__missing"]
        return cols

    @property
    def dim(self) -> int:
        return len(self.columns)

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError("TabularEncoder is not fitted: call fit() or load() first")

    def encode(self, items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(matrix (N, dim) float32, present (N,) bool). ``present`` is False for an item with
        no known categorical/multi-valued value and no numeric value."""
        self._check_fitted()
        check_columns(items, self.fields, "tabular config")
        n = len(items)
        matrix = np.zeros((n, self.dim), dtype=np.float32)
        present = np.zeros(n, dtype=bool)
        self.unseen_counts = {}
        col = 0
        for field, values in self.vocab.items():
            index = {v: col + j for j, v in enumerate(values)}
            unseen = 0
            for row, tokens in enumerate(self._field_tokens(items, field)):
                for token in tokens:
                    j = index.get(token)
                    if j is None:
                        unseen += 1
                    else:
                        matrix[row, j] = 1.0
                        present[row] = True
            if unseen:
                self.unseen_counts[field] = unseen
            col += len(values)
        for field in self.numeric_fields:
            values = self._numeric_values(items, field)
            missing = ~np.isfinite(values)
            stats = self.stats[field]
            matrix[:, col] = np.where(missing, 0.0, (values - stats["mean"]) / stats["std"])
            matrix[:, col + 1] = missing.astype(np.float32)
            present |= ~missing
            col += 2
        if self.unseen_counts:
            detail = ", ".join(f"{f}: {c}" for f, c in self.unseen_counts.items())
            log.info(
                "tabular: ignored %d values not in the vocabulary (%s)",
                sum(self.unseen_counts.values()),
                detail,
            )
        return matrix, present

    def transform(self, items: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """(float32 matrix (N, dim), column names)."""
        matrix, _ = self.encode(items)
        return matrix, self.columns

    def fit_transform(self, items: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        return self.fit(items).transform(items)

    # -- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": self.config.model_dump(mode="json"),
            "vocab": self.vocab,
            "numeric": self.stats,
        }

    def save(self, path: str | Path) -> None:
        """Write the fitted vocabulary and statistics as JSON (atomically)."""
        blob = json.dumps(self.to_dict(), indent=2, ensure_ascii=False).encode("utf-8")
        atomic_write_bytes(Path(path), blob)

    @classmethod
    def load(cls, path: str | Path) -> TabularEncoder:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ArtifactError(f"{path}: cannot read tabular vocabulary: {err}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArtifactError(f"{path}: not a tabular vocabulary file (format != {FORMAT})")
        if data.get("version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{path}: tabular vocabulary version {data.get('version')}, "
                f"this code reads version {FORMAT_VERSION}"
            )
        try:
            encoder = cls(TabularConfig.model_validate(data["config"]))
            config = encoder.config
            encoder.vocab = {
                f: [str(v) for v in data["vocab"][f]]
                for f in config.categorical + config.multi_valued
            }
            encoder.stats = {
                f: {
                    "mean": float(data["numeric"][f]["mean"]),
                    "std": float(data["numeric"][f]["std"]),
                }
                for f in encoder.numeric_fields
            }
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{path}: malformed tabular vocabulary: {err!r}") from None
        encoder._fitted = True
        return encoder
