"""Readers, validation, id maps and dataset loading on tiny files written by the tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from recsys.config import validate
from recsys.data.dataset import DataConfig, load_dataset
from recsys.data.idmap import IdMap, sort_ids
from recsys.data.readers import (
    read_amazon_p5,
    read_interactions_table,
    read_items_table,
    read_ml100k,
    read_mmrec,
)
from recsys.data.splits import TEST, TRAIN, VALID
from recsys.errors import ConfigError, DataError

# -- generic tables ---------------------------------------------------------------------

# (user, item, timestamp) in file order.  Worked out by hand:
#  - ts 5 first; the four ts-10 rows keep their file order; ts 30 last;
#  - ("u1", "a") appears at ts 30 (line 1) and ts 5 (line 5): the ts-5 one is kept;
#  - ("0010", "007") appears twice at ts 10: the first (line 3) is kept.
TABLE_ROWS = [
    ("u1", "a", 30),
    ("u1", "b", 10),
    ("0010", "007", 10),
    ("u1", "c", 10),
    ("u1", "a", 5),
    ("0010", "007", 10),
    ("0010", "7", 10),
]
TABLE_EXPECTED = [
    ("u1", "a", 5.0),
    ("u1", "b", 10.0),
    ("0010", "007", 10.0),
    ("u1", "c", 10.0),
    ("0010", "7", 10.0),
]


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_table_order_duplicates_and_string_ids(tmp_path, suffix):
    frame = pd.DataFrame(TABLE_ROWS, columns=["user_id", "item_id", "timestamp"])
    frame["rating"] = 3.5  # ignored: implicit feedback
    path = write_table(frame, tmp_path / f"inter{suffix}")
    out = read_interactions_table(path)
    assert list(out.columns) == ["user_id", "item_id", "timestamp"]
    got = [(u, i, t) for u, i, t in out.itertuples(index=False)]
    assert got == TABLE_EXPECTED
    assert all(isinstance(v, str) for v in out["user_id"].tolist() + out["item_id"].tolist())


def test_table_custom_columns_without_time_keep_file_order(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("who,what\nb,02\na,10\nb,02\na,9\n")
    out = read_interactions_table(path, user_col="who", item_col="what", time_col=None)
    assert out.values.tolist() == [["b", "02"], ["a", "10"], ["a", "9"]]


def test_table_ids_that_look_like_missing_values_stay_strings(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("user_id,item_id,timestamp\nNA,null,1\nNone,nan,2\n")
    out = read_interactions_table(path)
    assert out[["user_id", "item_id"]].values.tolist() == [["NA", "null"], ["None", "nan"]]


def test_table_explicit_separator(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("user_id;item_id;timestamp\nu;i;1\n")
    out = read_interactions_table(path, sep=";")
    assert out[["user_id", "item_id"]].values.tolist() == [["u", "i"]]


# -- validation errors: the file, the column and the first bad row ----------------------


def _data_error(func, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        func(*args, **kwargs)
    return str(info.value)


def test_missing_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("user_id,item,timestamp\nu,i,1\n")
    msg = _data_error(read_interactions_table, path)
    assert str(path) in msg and "'item_id'" in msg


def test_missing_time_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("user_id,item_id\nu,i\n")
    msg = _data_error(read_interactions_table, path)
    assert str(path) in msg and "'timestamp'" in msg


def test_header_only_and_zero_byte_files(tmp_path):
    header_only = tmp_path / "header.csv"
    header_only.write_text("user_id,item_id,timestamp\n")
    msg = _data_error(read_interactions_table, header_only)
    assert str(header_only) in msg and "no data rows" in msg
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    msg = _data_error(read_interactions_table, empty)
    assert str(empty) in msg and "empty" in msg


def test_missing_file(tmp_path):
    msg = _data_error(read_interactions_table, tmp_path / "nope.csv")
    assert "nope.csv" in msg and "not found" in msg


def test_null_id_names_the_first_bad_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,1\nu2,i2,2\n,i3,3\n,i4,4\n")
    msg = _data_error(read_interactions_table, path)
    assert str(path) in msg and "'user_id'" in msg
    assert re.search(r"\brow 3\b", msg) and re.search(r"\bline 4\b", msg), msg


def test_blank_id(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,1\nu2,   ,2\n")
    msg = _data_error(read_interactions_table, path)
    assert str(path) in msg and "'item_id'" in msg and re.search(r"\brow 2\b", msg), msg


def test_null_id_in_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"user_id": ["u", "v"], "item_id": ["i", None], "timestamp": [1, 2]}).to_parquet(
        path
    )
    msg = _data_error(read_interactions_table, path)
    assert str(path) in msg and "'item_id'" in msg and re.search(r"\brow 2\b", msg), msg


def test_non_numeric_timestamp_row_number(tmp_path):
    path = tmp_path / "bad.tsv"
    lines = ["user_id\titem_id\ttimestamp", "u\ta\t1", "u\tb\t2", "u\tc\t3", "u\td\tyesterday"]
    lines += ["u\te\tlater", "u\tf\t6"]
    path.write_text("\n".join(lines) + "\n")
    msg = _data_error(read_interactions_table, path)
    assert str(path) in msg and "'timestamp'" in msg
    # data row 4 is line 5 of the file (after the header); row 5 is bad too, but later
    assert re.search(r"\brow 4\b", msg) and re.search(r"\bline 5\b", msg), msg
    assert "yesterday" in msg


def test_items_table_duplicate_rows(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("item_id,title\n1,A\n2,B\n3,C\n2,B again\n")
    msg = _data_error(read_items_table, path)
    assert str(path) in msg and "'item_id'" in msg and "'2'" in msg
    assert re.search(r"\brow 4\b", msg), msg


def test_items_table_keeps_content_and_string_ids(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("sku,title,price\n007,Bond,\n10,Ten,3.5\n")
    out = read_items_table(path, id_col="sku")
    assert out["item_id"].tolist() == ["007", "10"]
    assert out["title"].tolist() == ["Bond", "Ten"]
    assert pd.isna(out["price"].iloc[0]) and out["price"].iloc[1] == "3.5"


# -- MovieLens 100K layout --------------------------------------------------------------

GENRES_BY_INDEX = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy"]
GENRES_BY_INDEX += ["Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror"]
GENRES_BY_INDEX += ["Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def _u_item_line(item: int, title: str, genres: list[int]) -> str:
    flags = ["1" if g in genres else "0" for g in range(19)]
    return "|".join([str(item), title, "01-Jan-1995", "", "http://x"] + flags) + "\n"


@pytest.fixture
def ml_folder(tmp_path) -> Path:
    folder = tmp_path / "ml"
    folder.mkdir()
    # user \t item \t rating \t ts.  Ties at equal timestamps where the string order of
    # the item ids differs from their integer order ("10" < "9" as strings).
    rows = [
        (1, 10, 5, 100),
        (1, 9, 3, 100),
        (2, 100, 4, 50),
        (1, 2, 1, 50),
        (1, 20, 4, 100),
        (2, 5, 2, 50),
        (2, 5, 1, 70),  # duplicate pair, later: dropped
        (2, 9, 1, 10),
    ]
    (folder / "u.data").write_text("".join("\t".join(map(str, r)) + "\n" for r in rows))
    items = (
        _u_item_line(2, "Café (1995)", [5, 8])
        + _u_item_line(5, "Five", [0])
        + _u_item_line(9, "Nine", [])
        + _u_item_line(10, "Ten", [1, 18])
        + _u_item_line(20, "Twenty", [16])
        + _u_item_line(100, "Hundred", [15])
    )
    (folder / "u.item").write_bytes(items.encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return folder


def _per_user(frame: pd.DataFrame) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for user, item in frame[["user_id", "item_id"]].itertuples(index=False):
        out.setdefault(user, []).append(item)
    return out


def test_ml100k_order_and_content(ml_folder):
    raw = read_ml100k(ml_folder)
    assert _per_user(raw.interactions) == {"1": ["2", "9", "10", "20"], "2": ["9", "5", "100"]}
    items = raw.items.set_index("item_id")
    assert items.loc["2", "title"] == "Café (1995)"
    assert items.loc["2", "genres"] == ["Comedy", "Drama"]
    assert items.loc["10", "genres"] == ["Action", "Western"]
    assert items.loc["9", "genres"] == []
    assert items.loc["100", "genres"] == [GENRES_BY_INDEX[15]]
    assert raw.users["user_id"].tolist() == ["1", "2"]
    assert raw.users["occupation"].tolist() == ["technician", "other"]


def test_ml100k_folder_dataset_loo(ml_folder):
    ds = load_dataset(DataConfig(dataset="ml-100k-folder", path=str(ml_folder)))
    labels = {
        (ds.user_map.ids[u], ds.item_map.ids[i]): lab
        for u, i, lab in zip(ds.users, ds.items, ds.labels, strict=True)
    }
    assert labels == {
        ("1", "2"): TRAIN,
        ("1", "9"): TRAIN,
        ("1", "10"): VALID,
        ("1", "20"): TEST,
        ("2", "9"): TRAIN,
        ("2", "5"): VALID,
        ("2", "100"): TEST,
    }
    assert ds.item_map.ids.tolist() == ["2", "5", "9", "10", "20", "100"]
    assert ds.item_table["title"].tolist()[0] == "Café (1995)"


# -- Amazon P5 layout -------------------------------------------------------------------


@pytest.fixture
def p5_folder(tmp_path) -> Path:
    folder = tmp_path / "beauty"
    folder.mkdir()
    (folder / "sequential_data.txt").write_text("1 3 1 2\n2 10 9 3\n\n3 5 6 5 7\n")
    text = [
        {
            "item_id": 1,
            "asin": "B001",
            "title": "Salt &amp; Pepper Scrub",
            "categories": [["Beauty", "Skin Care", "Body", "Scrubs"]],
        },
        {"item_id": 3, "asin": "B003", "title": "Three", "categories": [["Beauty"]]},
        {"item_id": 4, "asin": "B004", "title": "Only in the text file", "categories": []},
    ]
    (folder / "item_text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text))
    (folder / "item2attributes.json").write_text(json.dumps({"1": [5, 6], "10": [7]}))
    return folder


def test_amazon_p5_line_order_and_item_table(p5_folder):
    raw = read_amazon_p5(p5_folder)
    assert _per_user(raw.interactions) == {
        "1": ["3", "1", "2"],
        "2": ["10", "9", "3"],
        "3": ["5", "6", "7"],  # the repeated 5 keeps its first position
    }
    items = raw.items.set_index("item_id")
    assert set(items.index) == {"1", "2", "3", "4", "5", "6", "7", "9", "10"}
    # the reader keeps the raw title (entities are decoded by the text features)
    assert items.loc["1", "title"] == "Salt &amp; Pepper Scrub"
    assert items.loc["1", "asin"] == "B001"
    assert items.loc["1", "categories"] == [["Beauty", "Skin Care", "Body", "Scrubs"]]
    assert items.loc["1", "attributes"] == ["5", "6"]
    assert items.loc["10", "attributes"] == ["7"]
    assert raw.interactions.columns.tolist() == ["user_id", "item_id"]


def test_amazon_p5_dataset_joins_items(p5_folder):
    ds = load_dataset(DataConfig(dataset="amazon-p5", path=str(p5_folder), split="loo"))
    assert ds.item_map.ids.tolist() == ["1", "2", "3", "4", "5", "6", "7", "9", "10"]
    assert ds.item_table["item_id"].tolist() == ds.item_map.ids.tolist()
    assert ds.item_table["title"].iloc[0] == "Salt &amp; Pepper Scrub"
    assert ds.item_table["title"].iloc[3] == "Only in the text file"
    test = ds.labels == TEST
    got = dict(
        zip(ds.user_map.to_ids(ds.users[test]), ds.item_map.to_ids(ds.items[test]), strict=True)
    )
    assert got == {"1": "2", "2": "3", "3": "7"}


def test_amazon_p5_user_without_items(tmp_path):
    folder = tmp_path / "p5"
    folder.mkdir()
    (folder / "sequential_data.txt").write_text("1 2 3\n7\n")
    msg = _data_error(read_amazon_p5, folder)
    assert "sequential_data.txt" in msg and "line 2" in msg


# -- MMRec layout -----------------------------------------------------------------------


def _mmrec_folder(tmp_path: Path, rows: list[tuple]) -> Path:
    folder = tmp_path / "toys"
    folder.mkdir()
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    lines += ["\t".join(map(str, r)) for r in rows]
    (folder / "toys.inter").write_text("\n".join(lines) + "\n")
    return folder


def test_mmrec_preset_split(tmp_path):
    rows = [
        (0, 5, 5, 30, 0),
        (0, 6, 5, 10, 2),
        (1, 5, 3, 20, 1),
        (1, 7, 3, 20, 0),
        (10, 7, 3, 5, 0),
        (2, 6, 1, 40, 2),
    ]
    folder = _mmrec_folder(tmp_path, rows)
    raw = read_mmrec(folder)
    assert raw.name == "toys"
    assert set(raw.preset_split.tolist()) == {0, 1, 2}
    ds = load_dataset(DataConfig(dataset="mmrec", path=str(folder), split="preset"))
    assert ds.protocol == "preset"
    got = {
        (ds.user_map.ids[u], ds.item_map.ids[i]): int(lab)
        for u, i, lab in zip(ds.users, ds.items, ds.labels, strict=True)
    }
    assert got == {(str(u), str(i)): lab for u, i, _, _, lab in rows}
    assert ds.user_map.ids.tolist() == ["0", "1", "2", "10"]
    assert _per_user(raw.interactions)["0"] == ["6", "5"]  # by timestamp


def test_mmrec_bad_label(tmp_path):
    folder = _mmrec_folder(tmp_path, [(0, 5, 5, 30, 0), (0, 6, 5, 10, 3)])
    msg = _data_error(read_mmrec, folder)
    assert "toys.inter" in msg and "'x_label'" in msg and re.search(r"\brow 2\b", msg), msg


# -- IdMap ------------------------------------------------------------------------------


def test_idmap_numeric_aware_order():
    assert sort_ids(["10", "2", "1", "33", "2"]) == ["1", "2", "10", "33"]
    assert IdMap.from_values(["10", "9", "100"]).ids.tolist() == ["9", "10", "100"]
    # anything not all-digits sorts as strings
    assert sort_ids(["b10", "b9", "a"]) == ["a", "b10", "b9"]
    assert sort_ids(["10", "x", "9"]) == ["10", "9", "x"]


def test_idmap_round_trip(tmp_path):
    ids = ["007", "7", "10", "2"]
    m = IdMap.from_values(ids)
    path = tmp_path / "ids" / "items.parquet"
    m.save(path)
    back = IdMap.load(path)
    assert back.ids.tolist() == m.ids.tolist()
    assert all(isinstance(s, str) for s in back.ids)
    np.testing.assert_array_equal(back.to_index(ids), m.to_index(ids))
    np.testing.assert_array_equal(back.to_ids(back.to_index(ids)), np.array(ids, dtype=object))
    assert "007" in back and "0007" not in back


def test_idmap_unknown_id_and_duplicates():
    m = IdMap(["a", "b"])
    assert m.to_index(["b", "a"]).tolist() == [1, 0]
    assert m.get("c") is None
    with pytest.raises(DataError, match="'c'"):
        m.to_index(["a", "c"])
    with pytest.raises(DataError, match="not unique"):
        IdMap(["a", "a"])


# -- DataConfig and load_dataset(table) -------------------------------------------------


def test_load_dataset_table_with_items(tmp_path):
    inter = tmp_path / "events.csv"
    inter.write_text(
        "uid,iid,ts,rating\n"
        "10,b,3,1\n10,a,1,1\n2,c,1,1\n10,c,2,1\n2,a,5,1\n2,b,4,1\n10,d,9,1\n3,a,1,1\n"
    )
    items = tmp_path / "items.csv"
    items.write_text("iid,title\nd,Dee\nc,Cee\nb,Bee\na,Ay\ne,Never seen\n")
    config = DataConfig(
        dataset="table",
        interactions={"path": str(inter), "user_col": "uid", "item_col": "iid", "time_col": "ts"},
        items={"path": str(items), "id_col": "iid"},
    )
    ds = load_dataset(config)
    assert ds.name == "events" and ds.protocol == "loo"
    assert ds.user_map.ids.tolist() == ["2", "3", "10"]
    assert ds.item_map.ids.tolist() == ["a", "b", "c", "d", "e"]
    assert ds.item_table["title"].tolist() == ["Ay", "Bee", "Cee", "Dee", "Never seen"]
    # user 10: a(1) c(2) b(3) d(9); user 2: c(1) b(4) a(5); user 3: a alone -> train
    got = {
        (ds.user_map.ids[u], ds.item_map.ids[i]): int(lab)
        for u, i, lab in zip(ds.users, ds.items, ds.labels, strict=True)
    }
    assert got == {
        ("10", "a"): TRAIN,
        ("10", "c"): TRAIN,
        ("10", "b"): VALID,
        ("10", "d"): TEST,
        ("2", "c"): TRAIN,
        ("2", "b"): VALID,
        ("2", "a"): TEST,
        ("3", "a"): TRAIN,
    }
    truth, exclude = ds.eval_matrices("test")
    assert truth.nnz == 2 and exclude.nnz == 6


def test_data_config_errors(tmp_path):
    with pytest.raises(ValidationError, match="needs data.path"):
        DataConfig(dataset="mmrec")
    with pytest.raises(ValueError, match="needs data.path"):  # ValidationError is one
        DataConfig(dataset="amazon-p5")
    with pytest.raises(ValidationError, match="needs data.interactions"):
        DataConfig(dataset="table")
    with pytest.raises(ValidationError, match="preset"):
        DataConfig(dataset="ml-100k", split="preset")
    with pytest.raises(ValidationError, match="extra"):
        DataConfig(dataset="ml-100k", spilt="loo")
    with pytest.raises(ValidationError):
        DataConfig(dataset="movielens-1m")
    with pytest.raises(ConfigError, match=r"interactions\.user_column: unknown key"):
        validate(
            DataConfig,
            {"dataset": "table", "interactions": {"path": "x.csv", "user_column": "u"}},
        )


def test_preset_split_on_a_dataset_without_one(tmp_path):
    from recsys.data.dataset import build_split_dataset
    from recsys.data.readers import RawData

    raw = RawData("t", pd.DataFrame({"user_id": ["u"], "item_id": ["i"]}))
    with pytest.raises(DataError, match="no preset split"):
        build_split_dataset(raw, "preset")


# -- the command line -------------------------------------------------------------------


def _bad_csv(tmp_path: Path) -> Path:
    path = tmp_path / "bad.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,1\nu2,,2\nu3,i3,3\n")
    return path


def test_cli_data_on_bad_csv(tmp_path):
    bad = _bad_csv(tmp_path)
    config = tmp_path / "data.yaml"
    config.write_text(f"data:\n  dataset: table\n  interactions:\n    path: {bad}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    res = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "data", "-c", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    assert str(bad) in res.stderr and "'item_id'" in res.stderr, res.stderr
    assert re.search(r"\brow 2\b", res.stderr), res.stderr
    assert "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # wrote nothing, no runs/


def test_cli_train_on_bad_data_creates_no_run_folder(tmp_path, monkeypatch, capsys):
    from recsys.cli import main

    bad = _bad_csv(tmp_path)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # train seeds Lightning: restore the env after
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(
        [
            "train",
            "--no-progress",
            f"output_dir={out}",
            "name=x",
            "model.kind=mf",
            "data.dataset=table",
            f"data.interactions.path={bad}",
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0
    assert str(bad) in err and "'item_id'" in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
