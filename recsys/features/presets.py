"""Default content features for the built-in and shared datasets."""

from __future__ import annotations

from recsys.data.imdb import IMDB_CATEGORICAL, IMDB_NUMERIC
from recsys.errors import ConfigError
from recsys.features.pipeline import FeaturesConfig
from recsys.features.tabular import TabularConfig
from recsys.features.text import TextEncoderConfig

_MOVIES_TEXT = TextEncoderConfig(template="{title}. Genres: {genres}", progress=False)
_MOVIES_TABULAR = TabularConfig(
    multi_valued=["genres"], categorical=IMDB_CATEGORICAL, numeric=IMDB_NUMERIC
)

PRESETS: dict[str, FeaturesConfig] = {
    "movielens-small": FeaturesConfig(text=_MOVIES_TEXT, tabular=_MOVIES_TABULAR),
    "ml-100k": FeaturesConfig(text=_MOVIES_TEXT, tabular=_MOVIES_TABULAR),
    "amazon-beauty": FeaturesConfig(
        text=TextEncoderConfig(template="{title}. Categories: {categories}", progress=False),
        tabular=TabularConfig(multi_valued=["attributes"]),
    ),
    # Sports has no titles in the P5 release: anonymous attribute ids only.
    "amazon-sports": FeaturesConfig(tabular=TabularConfig(multi_valued=["attributes"])),
}


def default_features(dataset: str) -> FeaturesConfig:
    if dataset not in PRESETS:
        raise ConfigError(
            f"no default content features for dataset {dataset!r}: add a 'features' section"
            f" to the config (presets exist for {sorted(PRESETS)})"
        )
    return PRESETS[dataset]


def run_features(features: FeaturesConfig | None, dataset: str) -> FeaturesConfig:
    """The features a run uses: its config's ``features`` section, else the dataset's
    preset (one rule for training and for tools that rebuild a run's features)."""
    return features if features is not None else default_features(dataset)


# User side information (dual quantization): datasets that ship user attributes.
USER_PRESETS: dict[str, TabularConfig] = {
    "ml-100k": TabularConfig(categorical=["gender", "occupation"], numeric=["age"]),
}
