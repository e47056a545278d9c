"""Item table → per-modality frozen feature matrices with presence masks.

``build_item_features`` runs the configured extractors (text, image, tabular) over an item
table and returns :class:`ItemFeatures`: a dict ``modality → (matrix (N, D_m) float32,
present (N,) bool)`` aligned with the table's row order. Rows of items lacking a modality
(empty text, no usable image, no tabular value) are zero *and* marked ``present=False``;
consumers must use the mask (``recsys.models.fusion`` substitutes a learned embedding).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from pydantic import Field

from recsys.config import StrictModel
from recsys.errors import ArtifactError, ConfigError, DataError
from recsys.features.image import ImageEncoder, ImageEncoderConfig, build_image_features
from recsys.features.tabular import TabularConfig, TabularEncoder
from recsys.features.text import TextEncoder, TextEncoderConfig, build_text_features

log = logging.getLogger(__name__)

MODALITIES = ("text", "image", "tabular")


class FeaturesConfig(StrictModel):
    """Which frozen item features to build; a section left out (null) is not built."""

    text: TextEncoderConfig | None = None
    image: ImageEncoderConfig | None = None
    tabular: TabularConfig | None = None
    cache_dir: Path | None = Field(
        default=None, description="disk cache for text/image features; null = no cache"
    )


class ModalityFeatures(NamedTuple):
    matrix: np.ndarray  # (N, D) float32, zero rows where absent
    present: np.ndarray  # (N,) bool


class ItemFeatures(dict[str, ModalityFeatures]):
    """``modality → ModalityFeatures(matrix, present)``, rows in ``item_ids`` order."""

    def __init__(
        self,
        item_ids: list[str],
        modalities: dict[str, ModalityFeatures] | None = None,
        columns: dict[str, list[str]] | None = None,
    ):
        super().__init__(modalities or {})
        self.item_ids = list(item_ids)
        self.columns = dict(columns or {})  # column names, where known (tabular)
        self.tabular_encoder: TabularEncoder | None = None

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(f.matrix.shape[1]) for m, f in self.items()}

    def to_torch(self, rows: Any = None, device: Any = None) -> dict[str, tuple[Any, Any]]:
        """``{modality: (FloatTensor (B, D), BoolTensor (B,))}`` for ``rows`` (default all),
        the input format of :class:`recsys.models.fusion.ModalityFusion`."""
        import torch

        out = {}
        for m, f in self.items():
            matrix, present = (
                (f.matrix, f.present) if rows is None else (f.matrix[rows], f.present[rows])
            )
            out[m] = (
                torch.as_tensor(np.ascontiguousarray(matrix), device=device),
                torch.as_tensor(np.ascontiguousarray(present), device=device),
            )
        return out

    def save(self, path: str | Path) -> None:
        """One ``.npz`` file (written atomically) with ids, matrices, masks and columns."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "item_ids": np.asarray(self.item_ids, dtype=str),
            "meta": np.asarray(json.dumps({"modalities": list(self), "columns": self.columns})),
        }
        for m, f in self.items():
            arrays[f"{m}__matrix"] = f.matrix
            arrays[f"{m}__present"] = f.present
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> ItemFeatures:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                out = cls([str(i) for i in data["item_ids"]], columns=meta["columns"])
                for m in meta["modalities"]:
                    out[m] = ModalityFeatures(data[f"{m}__matrix"], data[f"{m}__present"])
        except (OSError, KeyError, ValueError) as err:
            raise ArtifactError(f"{path}: cannot read item features: {err}") from None
        return out


def check_item_table(items: pd.DataFrame, source: str = "item table") -> list[str]:
    """Item ids as strings; DataError for a missing column, null, float or duplicate id."""
    if "item_id" not in items.columns:
        raise DataError(
            f"{source}: no column 'item_id'; available columns: "
            + ", ".join(map(str, items.columns))
        )
    ids = items["item_id"]
    if pd.api.types.is_float_dtype(ids.dtype):
        raise DataError(f"{source}: column 'item_id' must hold strings, got floats")
    null = ids.isna().to_numpy()
    if null.any():
        raise DataError(f"{source}: column 'item_id' is empty at row {int(np.argmax(null))}")
    as_str = ids.astype(str)
    dup = as_str.duplicated().to_numpy()
    if dup.any():
        row = int(np.argmax(dup))
        raise DataError(
            f"{source}: column 'item_id' repeats {as_str.iloc[row]!r} at row {row} "
            f"({int(dup.sum())} duplicate rows)"
        )
    return as_str.tolist()


def build_item_features(
    items: pd.DataFrame,
    config: FeaturesConfig,
    cache_dir: str | Path | None = None,
    *,
    text_encoder: Any | None = None,
    image_encoder: ImageEncoder | None = None,
    tabular_encoder: TabularEncoder | None = None,
) -> ItemFeatures:
    """Build every configured modality for ``items`` (rows in table order).

    ``cache_dir`` overrides ``config.cache_dir``. Encoders may be passed in (e.g. an
    already loaded text model, or a tabular vocabulary fit on another table and loaded
    with ``TabularEncoder.load``); otherwise they are built from the config and the
    tabular vocabulary is fit on ``items`` (available as ``result.tabular_encoder``).
    """
    item_ids = check_item_table(items)
    if config.text is None and config.image is None and config.tabular is None:
        raise ConfigError("features: configure at least one of text, image, tabular")
    items = items.reset_index(drop=True)
    cache = cache_dir if cache_dir is not None else config.cache_dir
    out = ItemFeatures(item_ids)
    if config.text is not None:
        encoder = text_encoder if text_encoder is not None else TextEncoder(config.text)
        out["text"] = ModalityFeatures(
            *build_text_features(items, config.text, cache, encoder=encoder)
        )
    if config.image is not None:
        out["image"] = ModalityFeatures(
            *build_image_features(items, config.image, cache, encoder=image_encoder)
        )
    if config.tabular is not None:
        tab = tabular_encoder if tabular_encoder is not None else TabularEncoder(config.tabular)
        if tabular_encoder is None:
            tab.fit(items)
        matrix, present = tab.encode(items)
        out["tabular"] = ModalityFeatures(matrix, present)
        out.columns["tabular"] = tab.columns
        out.tabular_encoder = tab
    for m, f in out.items():
        missing = int((~f.present).sum())
        if missing:
            log.info("%s modality missing for %d of %d items", m, missing, len(item_ids))
    return out
