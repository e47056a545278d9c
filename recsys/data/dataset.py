"""From a :class:`DataConfig` to a split, id-mapped dataset ready for training."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import model_validator

from recsys.config import StrictModel
from recsys.data.idmap import IdMap
from recsys.data.matrix import binary_matrix
from recsys.data.readers import (
    RawData,
    read_amazon_p5,
    read_interactions_table,
    read_items_table,
    read_ml100k,
    read_mmrec,
    read_movielens_small,
)
from recsys.data.splits import TEST, TRAIN, VALID, is_cold_item, is_valid_cold_item, split_labels
from recsys.errors import DataError

SHARED_ENV = "RECSYS_SHARED_DATA"
# Datasets under RECSYS_SHARED_DATA (default ../shared/data), by name.
SHARED_PRESETS = {
    "ml-100k": ("ml-100k", "ml-100k"),
    "amazon-beauty": ("amazon-p5", "amazon-p5/beauty"),
    "amazon-sports": ("amazon-p5", "amazon-p5/sports"),
}


def shared_data_root() -> Path:
    return Path(os.environ.get(SHARED_ENV, "../shared/data")).expanduser()


class TableConfig(StrictModel):
    """A generic CSV/TSV/Parquet table."""

    path: str
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str | None = "timestamp"
    sep: str | None = None


class ItemTableConfig(StrictModel):
    path: str
    id_col: str = "item_id"
    sep: str | None = None


class DataConfig(StrictModel):
    """Which data to read and how to split it.

    ``dataset`` is ``movielens-small`` (built in), a shared preset (``ml-100k``,
    ``amazon-beauty``, ``amazon-sports``), a layout (``ml-100k-folder``, ``amazon-p5``,
    ``mmrec``: give ``path``) or ``table`` (give ``interactions`` and optionally ``items``).
    """

    dataset: Literal[
        "movielens-small",
        "ml-100k",
        "amazon-beauty",
        "amazon-sports",
        "ml-100k-folder",
        "amazon-p5",
        "mmrec",
        "table",
    ] = "movielens-small"
    path: str | None = None
    split: Literal["loo", "ratio-811", "cold-10", "preset"] = "loo"
    interactions: TableConfig | None = None
    items: ItemTableConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.dataset in {"ml-100k-folder", "amazon-p5", "mmrec"} and not self.path:
            raise ValueError(f"dataset {self.dataset!r} needs data.path")
        if self.dataset == "table" and self.interactions is None:
            raise ValueError("dataset 'table' needs data.interactions")
        if self.split == "preset" and self.dataset != "mmrec":
            raise ValueError("split 'preset' is only for the mmrec layout (x_label)")
        return self


def read_raw(config: DataConfig) -> RawData:
    if config.dataset == "movielens-small":
        return read_movielens_small()
    if config.dataset in SHARED_PRESETS:
        layout, rel = SHARED_PRESETS[config.dataset]
        folder = Path(config.path) if config.path else shared_data_root() / rel
        if not folder.exists():
            raise DataError(
                f"{folder}: dataset {config.dataset!r} not found; set {SHARED_ENV} to the"
                " folder holding the shared datasets or give data.path"
            )
        raw = read_ml100k(folder) if layout == "ml-100k" else read_amazon_p5(folder)
        raw.name = config.dataset
        return raw
    if config.dataset == "ml-100k-folder":
        return read_ml100k(config.path)
    if config.dataset == "amazon-p5":
        return read_amazon_p5(config.path)
    if config.dataset == "mmrec":
        return read_mmrec(config.path)
    t = config.interactions
    assert t is not None
    frame = read_interactions_table(t.path, t.user_col, t.item_col, t.time_col, t.sep)
    items = (
        read_items_table(config.items.path, config.items.id_col, config.items.sep)
        if config.items
        else None
    )
    return RawData(Path(t.path).stem, frame, items, sources=[Path(t.path)])


@dataclass
class SplitDataset:
    """Interactions as contiguous indices, split per the protocol.

    ``users``/``items``/``labels`` are ``(N,)`` arrays in per-user chronological order;
    labels are 0 train, 1 valid, 2 test.  ``candidates[split]`` restricts ranking for that
    split (cold-10: the cold items for test, the validation-cold items for valid); a
    split absent from it ranks the whole catalogue.  ``item_table`` rows align with item
    indices (None when the dataset has no content).
    """

    name: str
    protocol: str
    user_map: IdMap
    item_map: IdMap
    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    candidates: dict[str, np.ndarray]
    item_table: pd.DataFrame | None
    user_table: pd.DataFrame | None
    fingerprint: str

    @property
    def n_users(self) -> int:
        return len(self.user_map)

    @property
    def n_items(self) -> int:
        return len(self.item_map)

    def pairs(self, label: int) -> tuple[np.ndarray, np.ndarray]:
        mask = self.labels == label
        return self.users[mask], self.items[mask]

    def matrix(self, *labels: int) -> sp.csr_matrix:
        """Binary ``(n_users, n_items)`` CSR matrix of the interactions with these labels."""
        mask = np.isin(self.labels, labels)
        return binary_matrix(self.users[mask], self.items[mask], (self.n_users, self.n_items))

    def eval_matrices(self, split: str) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(truth, exclude) for scoring ``split``: valid excludes train; test excludes
        train and valid, as the protocol says."""
        if split == "valid":
            return self.matrix(VALID), self.matrix(TRAIN)
        if split == "test":
            return self.matrix(TEST), self.matrix(TRAIN, VALID)
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")


def fingerprint(frame: pd.DataFrame, labels: np.ndarray, protocol: str) -> str:
    h = hashlib.sha256(protocol.encode())
    h.update(pd.util.hash_pandas_object(frame[["user_id", "item_id"]], index=False).to_numpy())
    h.update(labels.tobytes())
    return h.hexdigest()[:16]


def build_split_dataset(raw: RawData, protocol: str) -> SplitDataset:
    frame = raw.interactions
    if protocol == "preset":
        if raw.preset_split is None:
            raise DataError(f"dataset {raw.name!r} ships no preset split")
        labels = raw.preset_split.astype(np.int8)
    else:
        labels = split_labels(frame, protocol)
    keep = labels >= 0
    frame, labels = frame[keep].reset_index(drop=True), labels[keep]
    # Users: those with at least one interaction left; items: the whole catalogue, also
    # the items only dropped users had (cold-10 ranks over every cold item of the data).
    user_map = IdMap.from_values(frame["user_id"])
    catalogue = set(raw.interactions["item_id"])
    if raw.items is not None:
        catalogue |= set(raw.items["item_id"])
    item_map = IdMap.from_values(catalogue)
    candidates: dict[str, np.ndarray] = {}
    if protocol == "cold-10":
        ids = item_map.ids
        candidates["test"] = np.flatnonzero([is_cold_item(i) for i in ids]).astype(np.int64)
        candidates["valid"] = np.flatnonzero([is_valid_cold_item(i) for i in ids]).astype(np.int64)
    item_table = None
    if raw.items is not None:
        item_table = (
            pd.DataFrame({"item_id": item_map.ids.astype(str)})
            .merge(raw.items, on="item_id", how="left")
            .reset_index(drop=True)
        )
    user_table = None
    if raw.users is not None:
        user_table = (
            pd.DataFrame({"user_id": user_map.ids.astype(str)})
            .merge(raw.users, on="user_id", how="left")
            .reset_index(drop=True)
        )
    return SplitDataset(
        name=raw.name,
        protocol=protocol,
        user_map=user_map,
        item_map=item_map,
        users=user_map.to_index(frame["user_id"]),
        items=item_map.to_index(frame["item_id"]),
        labels=labels,
        candidates=candidates,
        item_table=item_table,
        user_table=user_table,
        fingerprint=fingerprint(frame, labels, protocol),
    )


def load_dataset(config: DataConfig) -> SplitDataset:
    return build_split_dataset(read_raw(config), config.split)


__all__ = [
    "DataConfig",
    "SplitDataset",
    "load_dataset",
    "build_split_dataset",
    "TRAIN",
    "VALID",
    "TEST",
]
