"""YAML configs validated into typed pydantic models.

Each component defines its own config model next to itself (``DataConfig`` in
``recsys.data``, ``LightGCNConfig`` in ``recsys.models.lightgcn`` ...); this module only
holds the strict base class, YAML loading (with ``base:`` composition) and dotted
``a.b=value`` overrides.

A config file may name the file(s) it builds on: ``base: ../das.yaml`` (relative to the
file that names it; a list composes several, in order).  It then states only what
differs: mappings merge key by key, recursively, the file's own values winning; lists,
scalars and ``null`` replace the base's value.  A base may have its own base.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from recsys.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Config base: an unknown key is an error, never a silently ignored default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The config mapping in ``path``, composed over its ``base:`` files (no ``base`` key)."""
    return _compose(Path(path), ())


def merge_configs(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge recursively, ``over``'s values win;
    anything else in ``over`` (lists, scalars, ``None``) replaces.  Inputs are not mutated."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _compose(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """``path``'s mapping over its bases; ``chain``: the files that led here, to name a cycle."""
    raw = _read_yaml(path)
    if "base" not in raw:
        return raw
    names = raw.pop("base")
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{path}: base must be a file name or a list of file names")
    chain = (*chain, path)
    out: dict[str, Any] = {}
    for name in names:
        target = path.parent / name
        if not target.is_file():
            raise ConfigError(f"{path}: base file not found: {target}")
        seen = [p.resolve() for p in chain]
        if target.resolve() in seen:
            cycle = " -> ".join(map(str, (*chain[seen.index(target.resolve()) :], target)))
            raise ConfigError(f"{path}: base {name} is a cycle: {cycle}")
        out = merge_configs(out, _compose(target, chain))
    return merge_configs(out, raw)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``a.b.c=value`` overrides applied.

    Values are parsed as YAML scalars (``5`` → int, ``true`` → bool, ``[1,2]`` → list).
    Whether a key exists is checked later by the strict config models.
    """
    out = _deep_copy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key segment")
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {item!r}: {where} is a value, not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: cannot parse value: {err}") from err
    return out


def validate(model: type[T], raw: dict[str, Any], source: str = "config", prefix: str = "") -> T:
    """Validate ``raw`` into ``model``; errors name every bad dotted key (after ``prefix``)."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = prefix + ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"  {loc}: {msg}")
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(lines)) from None


def load_config(model: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    raw = load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return validate(model, raw, source=str(path) if path else "config")


def _deep_copy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}
