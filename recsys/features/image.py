"""Frozen image features from local files, or precomputed matrices.

Sources (exactly one per config):

* ``path_column``: a column of image paths (relative ones resolved against ``image_root``);
* ``image_dir``: a folder of ``<item_id>.<ext>`` files;
* ``precomputed``: an ``.npy`` matrix with one row per item in item-table order (MMRec's
  ``image_feat.npy`` or any other), used as it is.

Backbones (frozen, eval mode, loaded from local files only, nothing is downloaded):

* ``"cnn"``: a small built-in plain-torch CNN, randomly initialised from ``seed`` or loaded
  from a local state dict (``weights``). It makes the code path run anywhere; random
  convolutional features are only a weak signal, so for real use train or convert weights.
* ``"timm"``: ``timm.create_model(timm_model, pretrained=False, num_classes=0)`` plus the
  local ``weights`` file. timm (and open_clip, which needs timm) import torchvision, whose
  PyPI wheels pin one exact torch; installing either would replace the pinned torch, so
  timm is optional and used only when it imports.

Preprocessing uses PIL + numpy (resize the shorter side, center crop, normalise), not
torchvision. Missing or unreadable files either raise a DataError naming the item and
path (``on_missing: error``) or make the modality missing for that item (the default),
with one warning that counts them.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator
from torch import nn

from recsys.config import StrictModel
from recsys.errors import DataError
from recsys.features.cache import EncoderFingerprint, cached_encode, content_hash, file_digest
from recsys.features.image_backbones import (  # noqa: F401 (re-exported)
    IMAGENET_MEAN,
    IMAGENET_STD,
    ConvBackbone,
    TimmBackbone,
    build_backbone,
    import_timm,
    load_state_dict_file,
    timm_available,
)
from recsys.features.text import check_columns, resolve_device

log = logging.getLogger(__name__)

IMAGE_ENCODER_VERSION = "1"
DEFAULT_EXTENSIONS = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]


class ImageEncoderConfig(StrictModel):
    """Image modality: where the images (or a precomputed matrix) are, and the backbone."""

    path_column: str | None = Field(default=None, description="column of image file paths")
    image_root: Path | None = Field(default=None, description="base for relative paths")
    image_dir: Path | None = Field(default=None, description="folder of <item_id>.<ext> files")
    extensions: list[str] = Field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    precomputed: Path | None = Field(
        default=None, description=".npy matrix aligned with the item table (e.g. image_feat.npy)"
    )
    backbone: Literal["cnn", "timm"] = "cnn"
    timm_model: str | None = Field(default=None, description='timm model name, e.g. "resnet50"')
    weights: Path | None = Field(
        default=None, description="local state dict (.safetensors/.pt/.pth/.bin)"
    )
    cnn_widths: list[int] = Field(default_factory=lambda: [32, 64, 128, 256], min_length=1)
    seed: int = Field(default=0, description="init seed of the built-in CNN without weights")
    image_size: int = Field(default=224, ge=8)
    resize: int | None = Field(default=None, description="shorter side before the crop")
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    batch_size: int = Field(default=32, ge=1)
    num_workers: int = Field(default=2, ge=0, description="threads decoding images")
    device: str = "auto"
    normalize: bool = Field(default=True, description="L2-normalise backbone features")
    on_missing: Literal["missing", "error"] = "missing"
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> ImageEncoderConfig:
        sources = [
            name
            for name in ("path_column", "image_dir", "precomputed")
            if getattr(self, name) is not None
        ]
        if len(sources) != 1:
            raise ValueError(
                "set exactly one of path_column, image_dir, precomputed"
                + (f" (got {', '.join(sources)})" if sources else "")
            )
        if self.backbone == "timm" and (self.timm_model is None or self.weights is None):
            raise ValueError("backbone timm needs timm_model and a local weights file")
        if self.resize is not None and self.resize < self.image_size:
            raise ValueError(f"resize {self.resize} must be >= image_size {self.image_size}")
        if any(w < 1 for w in self.cnn_widths):
            raise ValueError("cnn_widths must be positive")
        return self

    @property
    def resize_to(self) -> int:
        return self.resize if self.resize is not None else round(self.image_size / 0.875)


# ---------------------------------------------------------------------------------------
# preprocessing


def load_image(path: str | Path, size: int | None = None):
    """Open an image as RGB (transparent areas on white); JPEGs are decoded at reduced
    scale when ``size`` allows."""
    from PIL import Image

    with Image.open(path) as img:
        if size is not None and img.format == "JPEG":
            img.draft("RGB", (size, size))
        img.load()
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")


def preprocess_image(
    img,
    image_size: int = 224,
    resize: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """PIL image → float32 (3, image_size, image_size): shorter side to ``resize``
    (bicubic), center crop, scale to [0, 1], normalise with ``mean``/``std``."""
    from PIL import Image

    resize = resize if resize is not None else round(image_size / 0.875)
    img = img.convert("RGB")
    w, h = img.size
    scale = resize / min(w, h)
    nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - image_size) // 2, (nh - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


# ---------------------------------------------------------------------------------------
# backbones


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class ImageEncoder:
    """Frozen image encoder over file paths; the backbone is built lazily."""

    def __init__(self, config: ImageEncoderConfig, backbone: nn.Module | None = None):
        self.config = config
        self._backbone = backbone
        self._device: str | None = None

    @property
    def backbone(self) -> nn.Module:
        if self._backbone is None:
            self._backbone = build_backbone(self.config)
        if self._device is None:
            self._device = resolve_device(self.config.device)
            self._backbone.to(self._device).eval()
        return self._backbone

    @property
    def dim(self) -> int:
        return int(self.backbone.out_dim)

    @property
    def mean(self) -> tuple[float, ...]:
        if self.config.mean is not None:
            return tuple(self.config.mean)
        return tuple(getattr(self._backbone, "default_mean", IMAGENET_MEAN))

    @property
    def std(self) -> tuple[float, ...]:
        if self.config.std is not None:
            return tuple(self.config.std)
        return tuple(getattr(self._backbone, "default_std", IMAGENET_STD))

    def fingerprint(self) -> EncoderFingerprint:
        c = self.config
        if c.backbone == "timm":
            _ = self.backbone  # the default mean/std come from the timm model
        weights = None
        if c.weights is not None:
            weights = file_digest(c.weights) if Path(c.weights).is_file() else str(c.weights)
        return EncoderFingerprint(
            name="image",
            version=IMAGE_ENCODER_VERSION,
            config={
                "backbone": c.backbone,
                "timm_model": c.timm_model if c.backbone == "timm" else None,
                "timm": _dist_version("timm") if c.backbone == "timm" else None,
                "cnn_widths": c.cnn_widths if c.backbone == "cnn" else None,
                "seed": c.seed if c.weights is None else None,
                "weights": weights,
                "image_size": c.image_size,
                "resize": c.resize_to,
                "mean": self.mean,
                "std": self.std,
                "normalize": c.normalize,
                "torch": torch.__version__.split("+")[0],
            },
        )

    def _load(self, path: str | Path) -> np.ndarray | None:
        try:
            img = load_image(path, self.config.resize_to)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for bad files
            log.debug("cannot decode %s: %s", path, err)
            return None
        return preprocess_image(
            img, self.config.image_size, self.config.resize_to, self.mean, self.std
        )

    @torch.inference_mode()
    def encode(self, paths: Sequence[str | Path]) -> np.ndarray:
        """(N, dim) float32; an undecodable file gives a NaN row."""
        from tqdm.auto import tqdm

        backbone = self.backbone
        out = np.full((len(paths), self.dim), np.nan, dtype=np.float32)
        bs = self.config.batch_size
        pool = ThreadPoolExecutor(self.config.num_workers) if self.config.num_workers else None
        try:
            with tqdm(
                total=len(paths),
                unit="img",
                desc="image features",
                disable=not self.config.progress,
            ) as bar:
                for start in range(0, len(paths), bs):
                    chunk = list(paths[start : start + bs])
                    arrays = list(pool.map(self._load, chunk) if pool else map(self._load, chunk))
                    ok = [i for i, a in enumerate(arrays) if a is not None]
                    if ok:
                        x = torch.from_numpy(np.stack([arrays[i] for i in ok]))
                        feats = backbone(x.to(self._device)).float()
                        if self.config.normalize:
                            feats = nn.functional.normalize(feats, dim=1)
                        out[[start + i for i in ok]] = feats.cpu().numpy()
                    bar.update(len(chunk))
        finally:
            if pool is not None:
                pool.shutdown()
        return out


# ---------------------------------------------------------------------------------------
# item table → image features


def _resolve_paths(items: pd.DataFrame, config: ImageEncoderConfig) -> list[Path | None]:
    """One path per item (None = the item declares no image); existence is checked later."""
    item_ids = items["item_id"].astype(str).tolist()
    if config.path_column is not None:
        check_columns(items, [config.path_column], "image.path_column")
        root = Path(config.image_root) if config.image_root is not None else None
        out: list[Path | None] = []
        for value in items[config.path_column].tolist():
            if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
                out.append(None)
                continue
            text = str(value).strip()
            if not text:
                out.append(None)
                continue
            path = Path(text).expanduser()
            out.append(root / path if root is not None and not path.is_absolute() else path)
        return out
    assert config.image_dir is not None
    folder = Path(config.image_dir)
    if not folder.is_dir():
        raise DataError(f"image.image_dir: {folder} is not a folder")
    exts = [e.lower().lstrip(".") for e in config.extensions]
    found: dict[str, tuple[int, Path]] = {}
    with os.scandir(folder) as it:
        for entry in it:
            stem, dot, ext = entry.name.rpartition(".")
            if not dot or ext.lower() not in exts or not entry.is_file():
                continue
            rank = exts.index(ext.lower())
            if stem not in found or rank < found[stem][0]:
                found[stem] = (rank, Path(entry.path))
    # an item without a file gets a path that does not exist, so the missing policy applies
    return [found[i][1] if i in found else folder / f"{i}.{{{','.join(exts)}}}" for i in item_ids]


def _report_missing(
    config: ImageEncoderConfig,
    item_ids: list[str],
    bad: list[tuple[int, str]],
    total: int,
) -> None:
    if not bad:
        return
    row, why = bad[0]
    if config.on_missing == "error":
        raise DataError(
            f"image modality: item {item_ids[row]!r} (row {row}): {why}; "
            f"{len(bad)} of {total} items affected (set image.on_missing: missing to treat "
            "them as items without an image)"
        )
    log.warning(
        "image modality: %d of %d items have no usable image and are treated as missing "
        "(first: item %r, %s)",
        len(bad),
        total,
        item_ids[row],
        why,
    )


def load_precomputed(path: str | Path, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """A precomputed (n_items, D) matrix as it is; rows that are all zeros or hold a
    non-finite value are missing (zeroed, present=False)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: precomputed image feature file not found")
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise DataError(f"{path}: not a plain numeric .npy matrix ({err})") from None
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise DataError(
            f"{path}: expected a 2-D numeric matrix (items x dims), got shape {matrix.shape} "
            f"dtype {matrix.dtype}"
        )
    if matrix.shape[0] != n_items:
        raise DataError(
            f"{path}: has {matrix.shape[0]} rows but the item table has {n_items} items; "
            "a precomputed image matrix needs exactly one row per item, in item-table order"
        )
    matrix = np.array(matrix, dtype=np.float32)
    finite = np.isfinite(matrix).all(axis=1)
    present = finite & (matrix != 0).any(axis=1)
    matrix[~present] = 0.0
    return matrix, present


def build_image_features(
    items: pd.DataFrame,
    config: ImageEncoderConfig,
    cache_dir: str | Path | None = None,
    *,
    encoder: ImageEncoder | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(matrix (N, D) float32, present (N,) bool), aligned with the item rows."""
    item_ids = items["item_id"].astype(str).tolist()
    n = len(items)
    if config.precomputed is not None:
        matrix, present = load_precomputed(config.precomputed, n)
        bad = [
            (int(i), f"row {i} of {config.precomputed} is all zeros or non-finite")
            for i in np.flatnonzero(~present)
        ]
        _report_missing(config, item_ids, bad, n)
        return matrix, present

    paths = _resolve_paths(items, config)
    bad: list[tuple[int, str]] = []
    keys: list[str] = []
    rows: list[int] = []
    for i, path in enumerate(paths):
        if path is None:
            continue  # no image declared: missing modality, not an error
        try:
            digest = file_digest(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            bad.append((i, f"image file not found: {path}"))
            continue
        except OSError as err:
            bad.append((i, f"cannot read image file {path}: {err}"))
            continue
        keys.append(content_hash(digest, str(path)))
        rows.append(i)
    _report_missing(config, item_ids, bad, n)

    encoder = encoder if encoder is not None else ImageEncoder(config)
    feats = cached_encode(encoder, [paths[i] for i in rows], keys, cache_dir)
    dim = feats.shape[1] if rows else encoder.dim
    matrix = np.zeros((n, dim), dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    undecodable = []
    for j, i in enumerate(rows):
        if np.isfinite(feats[j]).all():
            matrix[i] = feats[j]
            present[i] = True
        else:
            undecodable.append((i, f"cannot decode image file {paths[i]}"))
    _report_missing(config, item_ids, undecodable, n)
    return matrix, present
