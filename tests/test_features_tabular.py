import numpy as np
import pandas as pd
import pytest

from recsys.errors import DataError
from recsys.features.tabular import TabularConfig, TabularEncoder


def items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "brand": ["acme", "zeta", "acme", None],
            "genres": ["Comedy|Drama", ["Drama"], None, "Drama| Horror "],
            "cats": [
                [["Beauty", "Makeup", "Nails"]],
                [["Beauty", "Skin"], ["Tools"]],
                [],
                None,
            ],
            "price": [10.0, np.nan, 30.0, 20.0],
            "year": [1990, 2000, None, 2010],
        }
    )


CONFIG = TabularConfig(
    categorical=["brand"], multi_valued=["genres", "cats"], numeric=["price", "year"]
)


def test_multi_hot_against_hand_built_matrix():
    matrix, columns = TabularEncoder(CONFIG).fit_transform(items())
    assert matrix.dtype == np.float32
    hot = [c for c in columns if "=" in c]
    # each field: by item count, then alphabetically
    assert hot == [
        "brand=acme",
        "brand=zeta",
        "genres=Drama",
        "genres=Comedy",
        "genres=Horror",
        "cats=Beauty",
        "cats=Beauty > Makeup",
        "cats=Beauty > Makeup > Nails",
        "cats=Beauty > Skin",
        "cats=Tools",
    ]
    expected = np.array(
        [
            [1, 0, 1, 1, 0, 1, 1, 1, 0, 0],
            [0, 1, 1, 0, 0, 1, 0, 0, 1, 1],
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 0, 1, 0, 0, 0, 0, 0],
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(matrix[:, : len(hot)], expected)


def test_numeric_standardisation_and_missing_indicators():
    matrix, columns = TabularEncoder(CONFIG).fit_transform(items())
    assert columns[-4:] == ["price", "price__missing", "year", "year__missing"]
    price = np.array([10.0, 30.0, 20.0])
    expected = np.zeros(4)
    expected[[0, 2, 3]] = (price - price.mean()) / price.std()
    np.testing.assert_allclose(matrix[:, columns.index("price")], expected, rtol=1e-6)
    assert matrix[:, columns.index("price__missing")].tolist() == [0, 1, 0, 0]
    year = np.array([1990.0, 2000.0, 2010.0])
    np.testing.assert_allclose(
        matrix[[0, 1, 3], columns.index("year")], (year - year.mean()) / year.std(), rtol=1e-6
    )
    assert matrix[2, columns.index("year")] == 0.0
    assert matrix[:, columns.index("year__missing")].tolist() == [0, 0, 1, 0]


def test_vocabulary_save_load_round_trip_and_unseen_values(tmp_path):
    encoder = TabularEncoder(CONFIG).fit(items())
    encoder.save(tmp_path / "vocab.json")
    loaded = TabularEncoder.load(tmp_path / "vocab.json")
    assert loaded.columns == encoder.columns and loaded.stats == encoder.stats
    new = pd.DataFrame(
        {
            "item_id": ["x", "y"],
            "brand": ["acme", "new-brand"],
            "genres": ["Drama|Western", None],
            "cats": [[["Beauty", "Hair"]], None],
            "price": [np.nan, 40.0],
            "year": [2000, None],
        }
    )
    a, _ = encoder.transform(new)
    b, _ = loaded.transform(new)
    np.testing.assert_array_equal(a, b)
    assert loaded.unseen_counts == {"brand": 1, "genres": 1, "cats": 1}
    cols = loaded.columns
    assert a[0, cols.index("cats=Beauty")] == 1 and a[0, cols.index("genres=Drama")] == 1
    assert a[1, : cols.index("price")].sum() == 0  # only unseen categorical values


def test_min_count_and_separator_override():
    config = TabularConfig(multi_valued=["genres"], min_count=2, separators={"genres": ";"})
    table = pd.DataFrame({"item_id": ["a", "b", "c"], "genres": ["x;y", "y", "z;y;x"]})
    matrix, columns = TabularEncoder(config).fit_transform(table)
    assert columns == ["genres=y", "genres=x"]
    np.testing.assert_array_equal(matrix, [[1, 1], [1, 0], [1, 1]])


def test_present_mask_and_errors():
    table = items()
    table.loc[2, "price"] = np.nan
    encoder = TabularEncoder(TabularConfig(multi_valued=["genres"], numeric=["price"]))
    _, present = encoder.fit(table).encode(table)
    assert present.tolist() == [True, True, False, True]

    bad = items()
    bad["price"] = bad["price"].astype(object)
    bad.loc[2, "price"] = "cheap"
    with pytest.raises(DataError, match=r"'price'.*'cheap'.*item 'c' \(row 2\)"):
        TabularEncoder(CONFIG).fit(bad)
    listy = items()
    listy["brand"] = [["x"], "y", None, None]
    with pytest.raises(DataError, match=r"'brand'.*item 'a'"):
        TabularEncoder(CONFIG).fit(listy)
    with pytest.raises(DataError, match=r"'colour'.*available columns"):
        TabularEncoder(TabularConfig(categorical=["colour"])).fit(items())
    with pytest.raises(ValueError, match="more than once"):
        TabularConfig(categorical=["brand"], multi_valued=["brand"])


def test_log_numeric_and_dates_against_hand_values(tmp_path):
    table = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "votes": [0.0, 9.0, 99.0, None],
            "released": ["01-Jan-1970", "11-Jan-1970", "", "21-Jan-1970"],
        }
    )
    config = TabularConfig(numeric=["votes"], log_numeric=["votes"], dates={"released": "%d-%b-%Y"})
    encoder = TabularEncoder(config).fit(table)
    matrix, present = encoder.encode(table)
    assert encoder.columns == ["votes", "votes__missing", "released", "released__missing"]
    logs = np.log1p([0.0, 9.0, 99.0])
    np.testing.assert_allclose(matrix[:3, 0], (logs - logs.mean()) / logs.std(), rtol=1e-6)
    assert matrix[:, 1].tolist() == [0, 0, 0, 1]
    days = np.array([0.0, 10.0, 20.0])  # days since 1970-01-01
    np.testing.assert_allclose(matrix[[0, 1, 3], 2], (days - days.mean()) / days.std(), rtol=1e-6)
    assert matrix[:, 3].tolist() == [0, 0, 1, 0]
    assert present.all()
    encoder.save(tmp_path / "vocab.json")
    np.testing.assert_array_equal(
        TabularEncoder.load(tmp_path / "vocab.json").encode(table)[0], matrix
    )

    bad = table.copy()
    bad.loc[1, "released"] = "yesterday"
    with pytest.raises(DataError, match=r"date column 'released'.*'yesterday'.*item 'b' \(row 1\)"):
        TabularEncoder(config).fit(bad)
    with pytest.raises(ValueError, match="log_numeric columns not in numeric: votes"):
        TabularConfig(categorical=["brand"], log_numeric=["votes"])
