"""Input checks whose errors name the file, the column and the first bad row."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.errors import DataError


def _row(frame: pd.DataFrame, mask: np.ndarray, header: bool) -> str:
    pos = int(np.flatnonzero(mask)[0])
    line = pos + (2 if header else 1)
    return f"row {pos + 1} (line {line}): {frame.iloc[pos].to_dict()}"


def require_nonempty(frame: pd.DataFrame, path: Path) -> None:
    if len(frame) == 0:
        raise DataError(f"{path}: file has no data rows")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; columns present: {list(frame.columns)}"
        )


def require_ids(frame: pd.DataFrame, column: str, path: Path, header: bool = True) -> None:
    """Ids must be present and non-blank."""
    values = frame[column]
    bad = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
    if bad.any():
        raise DataError(
            f"{path}: column {column!r} has a null or empty id at {_row(frame, bad, header)}"
        )


def require_unique(frame: pd.DataFrame, column: str, path: Path, header: bool = True) -> None:
    dup = frame[column].duplicated().to_numpy()
    if dup.any():
        raise DataError(
            f"{path}: column {column!r} has a duplicate id"
            f" {frame[column].iloc[int(np.flatnonzero(dup)[0])]!r} at {_row(frame, dup, header)}"
        )


def require_numeric(frame: pd.DataFrame, column: str, path: Path, header: bool = True) -> pd.Series:
    """Return ``column`` as float64; a null or non-numeric value is an error."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        raise DataError(
            f"{path}: column {column!r} must be numeric;"
            f" first bad value at {_row(frame, bad, header)}"
        )
    return values.astype(np.float64)
