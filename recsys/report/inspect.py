"""Look inside a run's semantic IDs: export the table, measure the codebooks, show items
that share a prefix (``recsys semantic-ids`` and ``recsys inspect``).

The numbers are computed from the codes in ``semantic_ids/<side>.parquet`` themselves;
``semantic_ids/stats.json`` (written at training time) is only compared against them.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.artifacts import RunFolder
from recsys.errors import ArtifactError, RecsysError
from recsys.io import atomic_write_parquet, atomic_write_text
from recsys.report.data import code_columns, item_titles

SIDES = ("items", "users")


def _key(side: str) -> str:
    return "item_id" if side == "items" else "user_id"


def semantic_id_table(run: RunFolder, side: str = "items") -> pd.DataFrame:
    """``<side>_id, c0.., suffix, semantic_id`` where ``semantic_id`` is the whole ID as a
    string (``"12-200-7-0"``: the codes, then the suffix).  Raises :class:`ArtifactError`
    when the run has no semantic IDs for ``side``."""
    if side not in SIDES:
        raise RecsysError(f"side must be one of {SIDES}, got {side!r}")
    frame = run.semantic_ids(side)
    if frame is None:
        raise ArtifactError(
            f"{run.root}: no semantic IDs for {side} (semantic_ids/{side}.parquet is missing;"
            " only models with a quantizer write them)"
        )
    cols = code_columns(frame)
    if not cols or "suffix" not in frame.columns or _key(side) not in frame.columns:
        raise ArtifactError(
            f"{run.root / 'semantic_ids' / (side + '.parquet')}: expected columns"
            f" {_key(side)}, c0.., suffix; found {list(frame.columns)}"
        )
    out = frame[[_key(side), *cols, "suffix"]].copy()
    out[_key(side)] = out[_key(side)].astype(str)
    parts = out[[*cols, "suffix"]].astype(np.int64).astype(str)
    out["semantic_id"] = parts.agg("-".join, axis=1)
    return out.reset_index(drop=True)


def export_semantic_ids(run: RunFolder, out: str | Path | None, side: str = "items") -> str:
    """Write :func:`semantic_id_table` to ``out`` (``.parquet`` or ``.csv``, atomically);
    with ``out=None`` return it as CSV text instead (and write nothing)."""
    table = semantic_id_table(run, side)
    if out is None:
        buffer = io.StringIO()
        table.to_csv(buffer, index=False)
        return buffer.getvalue()
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        atomic_write_parquet(table, path)
    elif suffix == ".csv":
        atomic_write_text(path, table.to_csv(index=False))
    else:
        raise RecsysError(f"{path}: the output must end in .parquet or .csv")
    return f"wrote {len(table)} rows to {path}"


# codebook measurements ---------------------------------------------------------------
@dataclass(frozen=True)
class LevelStats:
    level: int
    codebook_size: int
    used: int  # codes chosen by at least one row
    utilisation: float  # used / codebook_size
    perplexity: float  # exp(entropy of the code distribution), 1..codebook_size


@dataclass(frozen=True)
class CodeSummary:
    n: int
    levels: list[LevelStats]
    codebook_size_source: str
    n_unique_ids: int  # distinct code tuples (before the suffix)
    n_colliding: int  # rows whose code tuple another row shares
    collision_rate: float  # n_colliding / n
    max_rows_per_id: int  # the largest number of rows sharing one code tuple
    unique_with_suffix: bool  # codes + suffix tell every row apart
    disagreements: list[str] = field(default_factory=list)


def summarize_codes(
    codes: np.ndarray, codebook_sizes: Sequence[int], source: str = "given"
) -> CodeSummary:
    """Utilisation, perplexity and collisions of ``codes`` ``(N, L)``."""
    codes = np.asarray(codes, dtype=np.int64)
    n, n_levels = codes.shape
    if n == 0:
        raise ArtifactError("the semantic-ID table is empty")
    levels = []
    for level in range(n_levels):
        size = int(codebook_sizes[level])
        counts = np.bincount(codes[:, level], minlength=size)
        p = counts[counts > 0] / n
        used = int((counts > 0).sum())
        levels.append(
            LevelStats(
                level=level,
                codebook_size=size,
                used=used,
                utilisation=used / size,
                perplexity=float(math.exp(-(p * np.log(p)).sum())),
            )
        )
    _, tuple_counts = np.unique(codes, axis=0, return_counts=True)
    colliding = int(tuple_counts[tuple_counts > 1].sum())
    return CodeSummary(
        n=n,
        levels=levels,
        codebook_size_source=source,
        n_unique_ids=len(tuple_counts),
        n_colliding=colliding,
        collision_rate=colliding / n,
        max_rows_per_id=int(tuple_counts.max()),
        unique_with_suffix=True,
    )


def _find_key(tree: Any, key: str) -> Any:
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def codebook_sizes(run: RunFolder, side: str, codes: np.ndarray) -> tuple[list[int], str]:
    """Per-level codebook sizes: from stats.json (``codebook_size``), else from the
    config's ``codebook_size``, else the largest code + 1 (a lower bound, flagged)."""
    n_levels = codes.shape[1]
    config = run.config() if run.config_path.exists() else {}
    # DAS names its quantizers item_quantizer / user_quantizer; others have one.
    from_config = _find_key(_find_key(config, f"{side[:-1]}_quantizer"), "codebook_size")
    if from_config is None:
        from_config = _find_key(config, "codebook_size")
    for source, value in (
        ("stats.json", run.semantic_id_stats().get(side, {}).get("codebook_size")),
        ("config.yaml", from_config),
    ):
        if isinstance(value, int | float) and value > 0:
            sizes = [int(value)] * n_levels
        elif isinstance(value, list) and len(value) == n_levels:
            sizes = [int(v) for v in value]
        else:
            continue
        if any(int(codes[:, lv].max()) >= sizes[lv] for lv in range(n_levels)):
            raise ArtifactError(
                f"{run.root}: a code of {side} is >= the codebook size {sizes} in {source}"
            )
        return sizes, source
    return [int(codes[:, lv].max()) + 1 for lv in range(n_levels)], "unknown: largest code + 1"


def _normalise(key: str) -> str:
    key = key.lower().rsplit("/", 1)[-1].replace("utilisation", "utilization")
    return key.removeprefix("sid_")


def compare_with_stats(summary: CodeSummary, stats: dict[str, Any]) -> list[str]:
    """Lines naming every statistic of ``stats`` (one side of stats.json) that differs from
    the value measured on the codes.  Keys as :func:`codebook_stats` writes them
    (``utilization_l0``, ``perplexity_l0``, ``collision_rate``, ``max_items_per_id``,
    ``n_unique_ids``, ``n_items``), also with a ``sid_`` prefix or British spelling."""
    measured: dict[str, float] = {
        "n_items": summary.n,
        "n_unique_ids": summary.n_unique_ids,
        "collision_rate": summary.collision_rate,
        "max_items_per_id": summary.max_rows_per_id,
        "max_users_per_id": summary.max_rows_per_id,
        "utilization_mean": float(np.mean([lv.utilisation for lv in summary.levels])),
        "levels": len(summary.levels),
        "max_suffix": summary.max_rows_per_id - 1,  # TIGER suffixes: 0..group size - 1
    }
    for lv in summary.levels:
        measured[f"utilization_l{lv.level}"] = lv.utilisation
        measured[f"perplexity_l{lv.level}"] = lv.perplexity
    lines = []
    for raw_key, stored in sorted(stats.items()):
        key = _normalise(str(raw_key))
        if isinstance(stored, list) and key in ("utilization", "perplexity"):
            pairs = [(f"{key}_l{i}", v) for i, v in enumerate(stored)]
        else:
            pairs = [(key, stored)]
        for name, value in pairs:
            if name not in measured or not isinstance(value, int | float):
                continue
            if not math.isclose(float(value), measured[name], rel_tol=1e-4, abs_tol=1e-6):
                lines.append(
                    f"{raw_key}: stats.json says {value:.6g}, the codes give {measured[name]:.6g}"
                )
    return lines


def inspect_semantic_ids(run: RunFolder, side: str = "items") -> tuple[pd.DataFrame, CodeSummary]:
    """The table and its measured summary, with disagreements against stats.json."""
    table = semantic_id_table(run, side)
    cols = code_columns(table)
    codes = table[cols].to_numpy(dtype=np.int64)
    sizes, source = codebook_sizes(run, side, codes)
    summary = summarize_codes(codes, sizes, source)
    full = table[[*cols, "suffix"]].to_numpy(dtype=np.int64)
    unique = len(np.unique(full, axis=0)) == len(full)
    disagreements = compare_with_stats(summary, run.semantic_id_stats().get(side, {}))
    return table, replace(summary, unique_with_suffix=unique, disagreements=disagreements)


# prefixes ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PrefixGroup:
    prefix: tuple[int, ...]
    rows: np.ndarray  # positions in the table, in table order

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def label(self) -> str:
        return "-".join(str(c) for c in self.prefix)


def prefix_groups(
    codes: np.ndarray, depth: int, top: int, weight: np.ndarray | None = None
) -> list[PrefixGroup]:
    """The ``top`` most populated prefixes of length ``depth`` (ties: smaller prefix
    first).  Rows within a group in table order, or by decreasing ``weight`` (e.g.
    popularity, so that the best-known titles come first) when given."""
    codes = np.asarray(codes, dtype=np.int64)[:, :depth]
    uniq, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(-counts, kind="stable")[:top]  # np.unique sorts the prefixes
    groups = []
    for g in order:
        rows = np.flatnonzero(inverse == g)
        if weight is not None:
            rows = rows[np.argsort(-np.asarray(weight)[rows], kind="stable")]
        groups.append(PrefixGroup(tuple(int(c) for c in uniq[g]), rows))
    return groups


def row_popularity(run: RunFolder, table: pd.DataFrame, side: str) -> np.ndarray | None:
    """Training interactions of each row's item (or user), or None without
    interactions.parquet."""
    if not (run.root / "interactions.parquet").exists():
        return None
    frame = run.interactions()
    train = frame[frame["label"] == 0]
    column, id_map = (
        ("item_idx", run.item_map()) if side == "items" else ("user_idx", run.user_map())
    )
    counts = np.bincount(train[column].to_numpy(), minlength=len(id_map))
    index = [id_map.get(str(i)) for i in table[_key(side)]]
    return np.array([counts[i] if i is not None else 0 for i in index], dtype=np.int64)


def row_labels(run: RunFolder, table: pd.DataFrame, side: str) -> list[str]:
    """Titles for item rows (from items.parquet, else the item id); user ids for users."""
    ids = table[_key(side)].astype(str).tolist()
    if side != "items":
        return ids
    titles = item_titles(run)
    item_map = run.item_map()
    out = []
    for i in ids:
        idx = item_map.get(i)
        out.append(str(titles[idx]) if idx is not None else i)
    return out


def format_item_neighbours(
    run: RunFolder, item_ids: Sequence[str], depth: int = 2, shown: int = 5
) -> str:
    """Each item's semantic ID and the items that share its first ``depth`` codes (most
    interacted with first): what ``recsys inspect RUN --items ID ...`` prints."""
    table, _ = inspect_semantic_ids(run, "items")
    cols = code_columns(table)
    depth = min(depth, len(cols))
    codes = table[cols].to_numpy(dtype=np.int64)
    labels = row_labels(run, table, "items")
    popularity = row_popularity(run, table, "items")
    weight = popularity if popularity is not None else np.zeros(len(table), np.int64)
    row_of = {item: r for r, item in enumerate(table["item_id"].astype(str))}
    lines = []
    for item_id in item_ids:
        row = row_of.get(str(item_id))
        if row is None:
            raise RecsysError(f"{run.root}: item {item_id!r} has no semantic ID")
        same = np.flatnonzero((codes[:, :depth] == codes[row, :depth]).all(axis=1))
        same = same[same != row]
        same = same[np.argsort(-weight[same], kind="stable")]
        prefix = "-".join(str(c) for c in codes[row, :depth])
        lines.append(f"{labels[row]} (item {item_id}): semantic ID {table['semantic_id'][row]}")
        lines.append(f"  shares the prefix {prefix} with {len(same)} other item(s), e.g.:")
        lines += [f"      {labels[r]}" for r in same[:shown]]
    return "\n".join(lines)


def format_inspection(
    run: RunFolder, side: str = "items", examples: int = 5, per_prefix: int = 8
) -> str:
    """The text ``recsys inspect`` prints."""
    table, s = inspect_semantic_ids(run, side)
    cols = code_columns(table)
    codes = table[cols].to_numpy(dtype=np.int64)
    noun = side[:-1]
    sizes = sorted({lv.codebook_size for lv in s.levels})
    lines = [
        f"semantic IDs of {side} in {run.root}",
        f"  {s.n} {side}, {len(cols)} code level(s) + a disambiguation suffix; codebook size"
        f" {'/'.join(map(str, sizes))} ({s.codebook_size_source})",
        "",
        "utilisation per level (codes used / codebook size, perplexity):",
    ]
    for lv in s.levels:
        lines.append(
            f"  level {lv.level}: {lv.used}/{lv.codebook_size} codes used"
            f" ({100 * lv.utilisation:.1f}%), perplexity {lv.perplexity:.2f}"
        )
    lines += [
        "",
        "collisions before disambiguation (same codes, told apart only by the suffix):",
        f"  {s.n_colliding} of {s.n} {side} share their codes with another {noun}"
        f" (collision rate {s.collision_rate:.4f})",
        f"  {s.n_unique_ids} distinct code tuples; at most {s.max_rows_per_id} {side} share one ID",
    ]
    if not s.unique_with_suffix:
        lines.append("  WARNING: codes + suffix do not tell every row apart")
    stats = run.semantic_id_stats().get(side)
    if s.disagreements:
        lines.append("  WARNING: stats.json disagrees with the codes:")
        lines += [f"    {d}" for d in s.disagreements]
    elif stats:
        lines.append("  stats.json agrees with these numbers")
    else:
        lines.append(f"  (stats.json has no entry for {side} to compare with)")

    labels = row_labels(run, table, side)
    popularity = row_popularity(run, table, side)
    order = " (most interacted with first)" if popularity is not None else ""
    depths = [1, 2] if len(cols) >= 2 else [1]
    for depth in depths if examples > 0 else []:
        groups = prefix_groups(codes, depth, examples, popularity)
        title = "first-level codes" if depth == 1 else f"{depth}-level prefixes"
        lines += ["", f"most populated {title} and the {side} sharing them{order}:"]
        for g in groups:
            name = f"c0={g.label}" if depth == 1 else g.label
            lines.append(f"  {name} ({g.size} {side if g.size != 1 else noun})")
            shown = [labels[r] for r in g.rows[:per_prefix]]
            lines += [f"      {label}" for label in shown]
            if g.size > per_prefix:
                lines.append(f"      ... and {g.size - per_prefix} more")
    return "\n".join(re.sub(r"\s+$", "", line) for line in lines)
