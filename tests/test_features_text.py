import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from recsys.errors import DataError
from recsys.features.text import (
    TextEncoder,
    TextEncoderConfig,
    build_text_features,
    encode_texts,
    render_texts,
    render_value,
)


def items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "title": ["Tom &amp; Jerry &amp;amp; Co", None, "Plain  title", float("nan")],
            "categories": [
                [["Beauty", "Makeup", "Nails"]],
                np.array([np.array(["Sports", "Outdoors"]), np.array(["Sports", "Bikes"])]),
                None,
                [],
            ],
            "genres": [["Comedy", "Drama"], [], "Horror", None],
            "year": [1995.0, np.nan, 2001, None],
        }
    )


def test_render_html_entities_lists_and_paths():
    texts = render_texts(items(), "{title}. {categories}")
    assert texts == [
        "Tom & Jerry & Co. Beauty > Makeup > Nails",
        "Sports > Outdoors; Sports > Bikes",
        "Plain title",
        "",
    ]
    assert render_texts(items(), "{title} [{genres}]") == [
        "Tom & Jerry & Co [Comedy, Drama]",
        "",
        "Plain title [Horror]",
        "",
    ]


def test_render_missing_values_drop_their_separators_and_brackets():
    texts = render_texts(items(), "{title} ({year}). Genres: {genres}")
    assert texts == [
        "Tom & Jerry & Co (1995). Genres: Comedy, Drama",
        "",
        "Plain title (2001). Genres: Horror",
        "",
    ]
    assert render_value(float("nan")) == ""
    assert render_value(None) == ""
    assert render_value([["a", "b"], ["a", "c"]]) == "a > b; a > c"
    assert render_value(3.0) == "3"


def test_template_with_absent_column_names_it():
    with pytest.raises(DataError) as err:
        render_texts(items(), "{title}. {brand}")
    msg = str(err.value)
    assert "'brand'" in msg and "available columns" in msg and "categories" in msg


def test_template_must_name_columns():
    with pytest.raises(ValidationError):
        TextEncoderConfig(template="{0} and {}")
    with pytest.raises(ValidationError):
        TextEncoderConfig(template="no fields")


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(TextEncoderConfig(progress=False, batch_size=8))


def test_encode_shape_and_identical_texts(encoder):
    texts = ["A red lipstick", "Trail running shoes", "A red lipstick"]
    emb = encode_texts(texts, encoder=encoder)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb[0], emb[2])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_similar_sentences_are_closer(encoder):
    emb = encoder.encode(
        [
            "A dog is playing in the park",
            "A puppy runs around on the grass outside",
            "The quarterly tax filing deadline is approaching",
        ]
    )
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_build_text_features_masks_empty_texts(encoder):
    config = TextEncoderConfig(template="{title}. {categories}", progress=False)
    matrix, present = build_text_features(items(), config, encoder=encoder)
    assert matrix.shape == (4, 384)
    assert present.tolist() == [True, True, True, False]
    assert not matrix[3].any() and np.abs(matrix[:3]).sum(axis=1).min() > 0
