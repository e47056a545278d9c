"""The run folder: what training hands to evaluation, export, indexing and serving.

Layout of ``runs/<name>/``::

    config.yaml            resolved config
    manifest.json          format version, package versions, git commit, data fingerprint
    id_maps/users.parquet  index ↔ original user id
    id_maps/items.parquet  index ↔ original item id
    interactions.parquet   user_idx, item_idx, label (0 train, 1 valid, 2 test)
    items.parquet          item content (title, genres, ...) in item-index order, if any
    candidates_<split>.npy ranking candidates when restricted (cold-10: cold items)
    embeddings/users.npy   (n_users, D) float32 final representations
    embeddings/items.npy   (n_items, D) float32; score = users @ items.T
    item_encoder/          how to embed a new item from its content (models that can;
                           recsys.item_encoder)
    history_query/         how to query for a user known only by their items (models
                           that say so; recsys.serve.history)
    semantic_ids/items.parquet  item_id, c0..c{L-1} (codes), suffix (disambiguation)
    semantic_ids/users.parquet  user_id, c0..c{L-1}, suffix (dual quantization), if any
    semantic_ids/stats.json     per side: codebook size, utilisation, perplexity, collisions
    metrics.json           valid and test metrics of the best checkpoint (test: of the
                           refit model, with trainer.refit)
    checkpoints/           best.ckpt, last.ckpt (Lightning); selected.json (early stopping
                           done: a rerun reloads best.ckpt instead of training on);
                           refit/last.ckpt (the model retrained on train + valid, with
                           trainer.refit)
    logs/metrics.csv       per-epoch training and validation curves (refit/: the refit's)

Reading a bundle needs only numpy, pandas and this module: never the training code.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

from recsys.data.idmap import IdMap
from recsys.data.matrix import binary_matrix
from recsys.errors import ArtifactError
from recsys.io import atomic_write_json, atomic_write_npy, atomic_write_parquet, atomic_write_text

FORMAT_VERSION = 1
TRACKED_PACKAGES = (
    "recsys",
    "torch",
    "torch_geometric",
    "lightning",
    "numpy",
    "pandas",
    "scipy",
    "pyarrow",
    "faiss-cpu",
    "pydantic",
)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    return res.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


@dataclass
class RunFolder:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    # paths -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def selected_path(self) -> Path:
        """The first phase's outcome (best epoch, timings), written once early stopping is
        done: its presence marks a finished first phase."""
        return self.checkpoint_dir / "selected.json"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    # writing -----------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def write_data(
        self,
        user_map: IdMap,
        item_map: IdMap,
        users: np.ndarray,
        items: np.ndarray,
        labels: np.ndarray,
        candidates: dict[str, np.ndarray],
    ) -> None:
        user_map.save(self.root / "id_maps" / "users.parquet")
        item_map.save(self.root / "id_maps" / "items.parquet")
        frame = pd.DataFrame(
            {
                "user_idx": users.astype(np.int64),
                "item_idx": items.astype(np.int64),
                "label": labels.astype(np.int8),
            }
        )
        atomic_write_parquet(frame, self.root / "interactions.parquet")
        for split in ("valid", "test"):
            path = self.root / f"candidates_{split}.npy"
            if split in candidates:
                atomic_write_npy(path, candidates[split].astype(np.int64))
            else:
                path.unlink(missing_ok=True)

    def write_items(self, items: pd.DataFrame | None) -> None:
        """The item content table (rows in item-index order), for reports and serving."""
        path = self.root / "items.parquet"
        if items is None:
            path.unlink(missing_ok=True)
            return
        atomic_write_parquet(items, path)

    def items(self) -> pd.DataFrame | None:
        path = self.root / "items.parquet"
        return pd.read_parquet(path) if path.exists() else None

    def write_semantic_ids(
        self, side: str, ids: np.ndarray, semantic_ids: np.ndarray, stats: dict[str, Any]
    ) -> None:
        """``semantic_ids``: ``(N, L+1)`` int, the last column the disambiguation suffix;
        row n belongs to original id ``ids[n]``.  ``side`` is "items" or "users"."""
        if side not in ("items", "users"):
            raise ValueError(f"side must be 'items' or 'users', got {side!r}")
        sid = np.asarray(semantic_ids, dtype=np.int64)
        key = "item_id" if side == "items" else "user_id"
        frame = pd.DataFrame({key: np.asarray(ids).astype(str)})
        for level in range(sid.shape[1] - 1):
            frame[f"c{level}"] = sid[:, level].astype(np.int32)
        frame["suffix"] = sid[:, -1].astype(np.int32)
        if frame.duplicated(subset=[c for c in frame.columns if c != key]).any():
            raise ArtifactError(f"{side} semantic IDs are not unique after disambiguation")
        atomic_write_parquet(frame, self.root / "semantic_ids" / f"{side}.parquet")
        path = self.root / "semantic_ids" / "stats.json"
        all_stats = json.loads(path.read_text()) if path.exists() else {}
        all_stats[side] = stats
        atomic_write_json(path, all_stats)

    def semantic_ids(self, side: str = "items") -> pd.DataFrame | None:
        """The saved semantic-ID table of ``side``, or None when the run has none."""
        path = self.root / "semantic_ids" / f"{side}.parquet"
        return pd.read_parquet(path) if path.exists() else None

    def semantic_id_stats(self) -> dict[str, Any]:
        path = self.root / "semantic_ids" / "stats.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def write_embeddings(
        self,
        user: np.ndarray,
        item: np.ndarray,
        user_for_valid: np.ndarray | None = None,
        item_for_valid: np.ndarray | None = None,
    ) -> None:
        """``user``/``item``: the deployable vectors (history up to valid, what test
        scoring uses); ``*_for_valid``: the vectors valid was scored with, when they differ
        (models whose user state is built from history; items too when propagation mixes
        user state into them)."""
        atomic_write_npy(self.root / "embeddings" / "users.npy", user.astype(np.float32))
        atomic_write_npy(self.root / "embeddings" / "items.npy", item.astype(np.float32))
        for name, array in (("users_valid", user_for_valid), ("items_valid", item_for_valid)):
            path = self.root / "embeddings" / f"{name}.npy"
            if array is not None:
                atomic_write_npy(path, array.astype(np.float32))
            else:
                path.unlink(missing_ok=True)

    def write_manifest(self, **fields: Any) -> None:
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": package_versions(),
            "git_commit": git_commit(),
            **fields,
        }
        atomic_write_json(self.manifest_path, manifest)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.metrics_path, metrics)

    # reading -----------------------------------------------------------------------
    def _require(self, path: Path) -> Path:
        if not path.exists():
            raise ArtifactError(f"{self.root}: not a complete run folder, {path.name} is missing")
        return path

    def manifest(self) -> dict[str, Any]:
        manifest = json.loads(self._require(self.manifest_path).read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{self.manifest_path}: format_version {manifest.get('format_version')} is not"
                f" {FORMAT_VERSION}; retrain or use a matching recsys version"
            )
        return manifest

    def config(self) -> dict[str, Any]:
        return yaml.safe_load(self._require(self.config_path).read_text())

    def metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics_path.read_text()) if self.metrics_path.exists() else {}

    def user_map(self) -> IdMap:
        return IdMap.load(self._require(self.root / "id_maps" / "users.parquet"))

    def item_map(self) -> IdMap:
        return IdMap.load(self._require(self.root / "id_maps" / "items.parquet"))

    def embeddings(self, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(users, items); ``split="valid"`` gives the vectors valid was scored with."""
        folder = self.root / "embeddings"
        if split == "valid" and (folder / "users_valid.npy").exists():
            items_valid = folder / "items_valid.npy"
            return np.load(folder / "users_valid.npy"), np.load(
                items_valid if items_valid.exists() else self._require(folder / "items.npy")
            )
        user = np.load(self._require(self.root / "embeddings" / "users.npy"))
        item = np.load(self._require(self.root / "embeddings" / "items.npy"))
        return user, item

    def interactions(self) -> pd.DataFrame:
        return pd.read_parquet(self._require(self.root / "interactions.parquet"))

    def candidates(self, split: str) -> np.ndarray | None:
        """Items ranked when scoring ``split`` (None: the whole catalogue)."""
        path = self.root / f"candidates_{split}.npy"
        return np.load(path) if path.exists() else None

    def matrix(self, *labels: int) -> sp.csr_matrix:
        """Binary ``(n_users, n_items)`` matrix of the saved interactions with these labels."""
        frame = self.interactions()
        shape = (len(self.user_map()), len(self.item_map()))
        sel = frame[frame["label"].isin(labels)]
        return binary_matrix(sel["user_idx"].to_numpy(), sel["item_idx"].to_numpy(), shape)
