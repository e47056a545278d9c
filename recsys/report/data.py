"""Read what reports and inspection show from a run folder (never the training code).

Everything here takes a :class:`recsys.artifacts.RunFolder` and returns plain numpy /
pandas values: curves from ``logs/metrics.csv``, item titles and categories from
``items.parquet``, semantic-ID codes aligned with item indices, and example users with
their history and top-K.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from recsys.artifacts import RunFolder
from recsys.errors import ArtifactError

TRAIN, VALID, TEST = 0, 1, 2
TITLE_COLUMNS = ("title", "name")
CATEGORY_COLUMNS = ("genres", "genre", "categories", "category", "attributes", "attribute")
CURVE_PREFIXES = ("train/", "val/")


# training curves ---------------------------------------------------------------------
def read_curves(run: RunFolder) -> pd.DataFrame | None:
    """Per-epoch curves: one row per epoch (1-based index), one column per ``train/*`` or
    ``val/*`` series, or None when the run has no ``logs/metrics.csv`` (untrained models).

    Lightning's CSV logger writes a row per epoch for the training means and another for
    validation; they are merged on the epoch (the last non-empty value of each column).
    """
    path = run.log_dir / "metrics.csv"
    if not path.exists():
        return None
    frame = pd.read_csv(path)
    columns = [c for c in frame.columns if str(c).startswith(CURVE_PREFIXES)]
    if not columns or frame.empty:
        return None
    epoch = frame["epoch"] if "epoch" in frame.columns else pd.Series(np.arange(len(frame)))
    merged = frame[columns].groupby(epoch.to_numpy(), sort=True).last()
    merged = merged.dropna(axis=1, how="all")
    if merged.empty:
        return None
    merged.index = merged.index.astype(int) + 1
    merged.index.name = "epoch"
    return merged


def _family(column: str) -> str:
    name = column.split("/", 1)[1]
    if "loss" in name:
        return name  # every loss term gets its own panel: their scales differ
    return re.sub(r"_(l\d+|mean)$", "", re.sub(r"@\d+$", "", name))


def group_curves(columns: list[str]) -> dict[str, list[str]]:
    """Panels: each loss term (``train/x_loss`` with ``val/x_loss``) alone, every other
    series grouped by metric family (``ndcg@5/10/20`` together, ``sid_utilization_l0/l1``
    and ``sid_utilization_mean`` together).  Losses first, ``loss`` itself leading; then
    metrics alphabetically."""
    groups: dict[str, list[str]] = {}
    for column in columns:
        groups.setdefault(_family(column), []).append(column)

    def key(family: str) -> tuple[int, str]:
        if family == "loss":
            return (0, "")
        return (1 if "loss" in family else 2, family)

    def series_key(column: str) -> tuple[int, str, int]:
        split, name = column.split("/", 1)
        base = re.sub(r"(@\d+|_l\d+|_mean)$", "", name)
        k = re.search(r"(?:@|_l)(\d+)$", name)
        order = int(k.group(1)) if k else (10**9 if name.endswith("_mean") else -1)
        return (0 if split == "train" else 1, base, order)

    return {f: sorted(groups[f], key=series_key) for f in sorted(groups, key=key)}


# items -------------------------------------------------------------------------------
def _items_by_index(run: RunFolder) -> pd.DataFrame | None:
    """``items.parquet`` reindexed to item indices (rows missing there are NaN)."""
    items = run.items()
    if items is None:
        return None
    ids = run.item_map().ids.astype(str)
    if "item_id" in items.columns:
        items = items.assign(item_id=items["item_id"].astype(str)).drop_duplicates("item_id")
        return items.set_index("item_id", drop=False).reindex(ids).reset_index(drop=True)
    if len(items) != len(ids):
        raise ArtifactError(
            f"{run.root / 'items.parquet'}: {len(items)} rows for {len(ids)} items and no"
            " item_id column"
        )
    return items.reset_index(drop=True)


def item_titles(run: RunFolder) -> np.ndarray:
    """``(n_items,)`` display names: the ``title`` (or ``name``) column of items.parquet,
    falling back to the original item id where there is none."""
    ids = run.item_map().ids.astype(str)
    items = _items_by_index(run)
    if items is None:
        return ids.astype(object)
    column = next((c for c in TITLE_COLUMNS if c in items.columns), None)
    if column is None:
        return ids.astype(object)
    titles = items[column].astype(object).to_numpy()
    missing = np.array([not isinstance(t, str) or not t.strip() for t in titles])
    return np.where(missing, ids, titles).astype(object)


def _first_scalar(value: Any) -> str | None:
    """The first genre / category / attribute of a cell: lists (also nested) give their
    first element, strings their first ``|``-separated part."""
    while isinstance(value, list | tuple | np.ndarray):
        if len(value) == 0:
            return None
        value = value[0]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).split("|")[0].strip()
    return text or None


def item_categories(run: RunFolder) -> tuple[str, np.ndarray] | None:
    """``(column, (n_items,) first category or None)`` from the first of ``genres``,
    ``genre``, ``categories``, ``category``, ``attributes``, ``attribute`` in
    items.parquet that names something, or None."""
    items = _items_by_index(run)
    if items is None:
        return None
    for column in CATEGORY_COLUMNS:
        if column in items.columns:
            values = np.array([_first_scalar(v) for v in items[column]], dtype=object)
            if any(v is not None for v in values):
                return column, values
    return None


def item_popularity(run: RunFolder) -> np.ndarray:
    """``(n_items,)`` number of training interactions of each item."""
    frame = run.interactions()
    train = frame.loc[frame["label"] == TRAIN, "item_idx"].to_numpy()
    return np.bincount(train, minlength=len(run.item_map()))


# semantic IDs ------------------------------------------------------------------------
def code_columns(frame: pd.DataFrame) -> list[str]:
    """The code columns ``c0, c1, ...`` of a semantic-ID table, in level order."""
    cols = [c for c in frame.columns if re.fullmatch(r"c\d+", str(c))]
    return sorted(cols, key=lambda c: int(c[1:]))


def item_codes(run: RunFolder) -> np.ndarray | None:
    """``(n_items, L)`` codes aligned with item indices (-1 for an item without a semantic
    ID), or None when the run has none."""
    frame = run.semantic_ids("items")
    if frame is None:
        return None
    cols = code_columns(frame)
    out = np.full((len(run.item_map()), len(cols)), -1, dtype=np.int64)
    item_map = run.item_map()
    index = np.array([item_map.get(str(i)) for i in frame["item_id"]], dtype=object)
    known = np.array([i is not None for i in index], dtype=bool)
    out[index[known].astype(np.int64)] = frame.loc[known, cols].to_numpy(dtype=np.int64)
    return out


# example users -----------------------------------------------------------------------
@dataclass(frozen=True)
class Recommendation:
    item_idx: int
    item_id: str
    title: str
    score: float
    held_out: bool  # the item is one of the user's test interactions


@dataclass(frozen=True)
class UserExample:
    user_idx: int
    user_id: str
    history: list[str]  # titles, oldest first, at most ``history`` of them
    n_history: int  # the whole train + valid history length
    recommendations: list[Recommendation]


def pick_users(run: RunFolder, n: int) -> np.ndarray:
    """``n`` users, evenly spaced over the user indices of those with a train/valid
    history and (when the run has any) a test interaction: deterministic, and spread over
    the id range rather than the first few."""
    frame = run.interactions()
    eligible = np.unique(frame.loc[frame["label"].isin([TRAIN, VALID]), "user_idx"])
    tested = np.unique(frame.loc[frame["label"] == TEST, "user_idx"])
    if len(tested):
        both = np.intersect1d(eligible, tested)
        eligible = both if len(both) else eligible
    if len(eligible) == 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    positions = np.unique(np.linspace(0, len(eligible) - 1, num=min(n, len(eligible))).round())
    return eligible[positions.astype(np.int64)].astype(np.int64)


def user_examples(
    run: RunFolder, users: np.ndarray, k: int = 10, history: int = 10
) -> list[UserExample]:
    """History (train + valid, file order = chronological, most recent last) and top-``k``
    by ``users @ items.T`` with the history masked; when the run ranks a restricted
    candidate set for test (cold-10), only those candidates are ranked."""
    user_emb, item_emb = run.embeddings()
    frame = run.interactions()
    titles = item_titles(run)
    item_ids = run.item_map().ids.astype(str)
    user_ids = run.user_map().ids.astype(str)
    candidates = run.candidates("test")
    out = []
    for u in np.asarray(users, dtype=np.int64):
        rows = frame[frame["user_idx"] == u]
        seen = rows.loc[rows["label"].isin([TRAIN, VALID]), "item_idx"].to_numpy()
        test = set(rows.loc[rows["label"] == TEST, "item_idx"].tolist())
        scores = item_emb.astype(np.float64) @ user_emb[u].astype(np.float64)
        if candidates is not None:
            allowed = np.zeros(len(scores), dtype=bool)
            allowed[candidates] = True
            scores[~allowed] = -np.inf
        scores[seen] = -np.inf
        order = np.argsort(-scores, kind="stable")[:k]
        order = order[np.isfinite(scores[order])]
        recs = [
            Recommendation(
                int(i), str(item_ids[i]), str(titles[i]), float(scores[i]), int(i) in test
            )
            for i in order
        ]
        out.append(
            UserExample(
                user_idx=int(u),
                user_id=str(user_ids[u]),
                history=[str(titles[i]) for i in seen[-history:]] if history > 0 else [],
                n_history=len(seen),
                recommendations=recs,
            )
        )
    return out
