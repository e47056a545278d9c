"""The item-encoder format: how a run embeds a new item from its content
(``RUN/item_encoder/``).

A run that can embed unseen items ships ``RUN/item_encoder/`` with an ``encoder.json``::

    {"kind": "das", "module": "recsys.models.das_encoder", ...}

``module`` (under ``recsys.``) is imported and must call :func:`register_item_encoder`
for ``kind``; the registered loader receives the ``item_encoder/`` folder and returns an
:class:`ItemContentEncoder`. The folder's other files are the writing model's own
(``features.json``, the frozen-feature config that :func:`content_fields` reads, is
shared by all of them).

This module sits beside the run-folder format (:mod:`recsys.artifacts`): models register
their loaders here and serving loads them from here, so that neither imports the other,
and serving never imports the training code: the loader module is whatever the model
that wrote the folder names.
"""

from __future__ import annotations

import importlib
import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from recsys.artifacts import RunFolder
from recsys.errors import ArtifactError


@runtime_checkable
class ItemContentEncoder(Protocol):
    def encode(self, items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """Items ``(N rows)`` → ``(embeddings (N, D) float32, semantic IDs (N, L+1) int64
        or None)``. Embeddings live in the run's item space: scored against
        ``embeddings/users.npy`` by dot product. Raises ``DataError``/``ValueError`` on
        content it cannot encode (the API answers 422)."""
        ...


EncoderLoader = Callable[[Path], ItemContentEncoder]
_LOADERS: dict[str, EncoderLoader] = {}


def register_item_encoder(kind: str) -> Callable[[EncoderLoader], EncoderLoader]:
    """Decorator: ``@register_item_encoder("das") def load(folder: Path) -> Encoder``."""

    def wrap(loader: EncoderLoader) -> EncoderLoader:
        _LOADERS[kind] = loader
        return loader

    return wrap


def encoder_dir(run: RunFolder) -> Path:
    return run.root / "item_encoder"


def load_item_encoder(run: RunFolder) -> ItemContentEncoder | None:
    """The run's content encoder, or None when it has no ``item_encoder/`` folder."""
    folder = encoder_dir(run)
    if not folder.exists():
        return None
    spec_path = folder / "encoder.json"
    if not spec_path.exists():
        raise ArtifactError(f"{folder}: encoder.json is missing")
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{spec_path}: invalid JSON: {err}") from None
    kind, module = spec.get("kind"), spec.get("module")
    if module is not None:
        if not isinstance(module, str) or not module.startswith("recsys."):
            raise ArtifactError(f"{spec_path}: module must be a recsys.* module, got {module!r}")
        importlib.import_module(module)
    if kind not in _LOADERS:
        raise ArtifactError(
            f"{spec_path}: no loader for encoder kind {kind!r} (known: {sorted(_LOADERS)});"
            " name the module that registers it under 'module'"
        )
    return _LOADERS[kind](folder)


def content_fields(run: RunFolder) -> tuple[list[str], list[str]]:
    """``(text fields, tabular fields)`` that the run's encoder reads, from
    ``item_encoder/features.json`` (its frozen-feature config); empty without one.
    A field both the text template and the tabular features read is listed as text."""
    path = encoder_dir(run) / "features.json"
    try:
        spec = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return [], []
    text: list[str] = []
    template = (spec.get("text") or {}).get("template", "{title}")
    try:
        text = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError:
        pass  # the encoder reports its own template error
    tab = spec.get("tabular") or {}
    columns = [*tab.get("categorical", []), *tab.get("multi_valued", []), *tab.get("numeric", [])]
    columns += [*tab.get("log_numeric", []), *tab.get("dates", {})]
    tabular = [c for c in dict.fromkeys(columns) if c not in text]
    return list(dict.fromkeys(text)), tabular
