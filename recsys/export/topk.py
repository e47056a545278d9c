"""Batch top-K export from a run folder, in the protocol's long format.

Reads only the run folder (embeddings, id maps, interactions): never the training code.
Rows: ``user_id`` (str), ``item_id`` (str), ``rank`` (1-based int32), ``score`` (float32).

Two outputs:

* one file (``export_recommendations``): Parquet or CSV, written to a temporary file
  and renamed, so it appears whole or not at all;
* a partitioned folder (``export_partitioned``), resumable: ``DIR/part-00000.parquet``
  ... one file per chunk of ``chunk_users`` users (in user-index order), each written
  atomically, plus ``DIR/_manifest.json`` (run fingerprint, split, k, chunk size, hash of
  the user list) written before the first part and ``DIR/_SUCCESS`` after the last. A
  rerun of the same export skips the parts that exist, so an interrupted export resumes
  with no user duplicated or missing; a rerun with other parameters into the same folder
  is refused, since its parts would not line up.

Scoring is exact (every user against every item, one chunk of users at a time) unless
``index`` names a saved index of the run (``recsys index``): then each chunk's top-``k``
comes from that index's search with the user's seen items left out, as serving answers,
so a million-item catalogue costs a search per user instead of a million dot products
(its recall against exact is the index's calibrated one, recorded by ``recsys index``).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from recsys.artifacts import RunFolder
from recsys.data.splits import TEST, TRAIN, VALID
from recsys.errors import RecsysError
from recsys.eval.ranking import iter_topk
from recsys.index.fingerprint import run_fingerprint
from recsys.io import atomic_path, atomic_write_json, atomic_write_text

ExportSplit = Literal["test", "valid", "all"]
SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("rank", pa.int32()),
        ("score", pa.float32()),
    ]
)
# What each kind of export masks: scoring a split hides everything the user had before
# it; "all" (production) hides everything the user has ever interacted with.
SEEN = {"valid": (TRAIN,), "test": (TRAIN, VALID), "all": (TRAIN, VALID, TEST)}
TRUTH = {"valid": VALID, "test": TEST}


def select_users(run: RunFolder, split: ExportSplit, user_ids: list[str] | None) -> np.ndarray:
    """User indices to export: the given ids, else the users that ``split`` scores
    (those with ≥1 interaction in it), else (``all``) every user.  Sorted, unique."""
    user_map = run.user_map()
    if user_ids is not None:
        unknown = [u for u in user_ids if u not in user_map]
        if unknown:
            raise RecsysError(f"{len(unknown)} unknown user id(s), first: {unknown[0]!r}")
        return np.unique(user_map.to_index(user_ids))
    if split == "all":
        return np.arange(len(user_map), dtype=np.int64)
    frame = run.interactions()
    return np.unique(frame.loc[frame["label"] == TRUTH[split], "user_idx"].to_numpy())


class _Scorer:
    """What every chunk of an export needs: embeddings, id maps, masks and candidates (and
    the saved index ``index`` that answers, if any)."""

    def __init__(
        self, run: RunFolder, split: ExportSplit, k: int, index: str | None = None
    ) -> None:
        if k <= 0:
            raise RecsysError(f"k must be positive, got {k}")
        self.k = k
        self.user_emb, self.item_emb = (torch.from_numpy(a) for a in run.embeddings())
        self.user_map, self.item_map = run.user_map(), run.item_map()
        self.exclude = run.matrix(*SEEN[split])
        candidates = run.candidates("test" if split == "all" else split)
        self.candidates = None if split == "all" else candidates  # production: everything
        self.index = None
        if index is not None:
            if self.candidates is not None:
                raise RecsysError(
                    f"--index searches the whole catalogue, but split {split!r} of this run"
                    " ranks candidate items only: export it exactly (without --index)"
                )
            from recsys.index.faiss_index import ItemIndex  # FAISS only on this path

            self.index = ItemIndex.load(run, index)

    def score(self, batch: torch.Tensor) -> torch.Tensor:
        return self.user_emb[batch] @ self.item_emb.T

    def _topk(self, users: np.ndarray, chunk_users: int):
        """``(users_chunk (B,), items (B, k), scores (B, k))`` per chunk, numpy."""
        if self.index is None:
            for chunk, items, scores in iter_topk(
                self.score, users, self.k, self.exclude, self.candidates, batch_size=chunk_users
            ):
                yield chunk, items.numpy(), scores.numpy()
            return
        ptr, seen = self.exclude.indptr, self.exclude.indices
        for start in range(0, len(users), chunk_users):
            chunk = users[start : start + chunk_users]
            exclude = [seen[ptr[u] : ptr[u + 1]].astype(np.int64) for u in chunk]
            items, scores = self.index.search(self.user_emb[chunk].numpy(), self.k, exclude)
            yield chunk, items, scores

    def tables(self, users: np.ndarray, chunk_users: int) -> Iterator[tuple[np.ndarray, pa.Table]]:
        """``(users_chunk (B,), table of ≤ B·k rows)`` per chunk of ``users``, in order."""
        for chunk, items_np, scores_np in self._topk(users, chunk_users):
            valid = items_np >= 0  # a user with fewer than k unseen items gets fewer rows
            ranks = np.broadcast_to(
                np.arange(1, items_np.shape[1] + 1, dtype=np.int32), items_np.shape
            )
            rows_user = np.repeat(chunk, items_np.shape[1]).reshape(items_np.shape)
            yield (
                chunk,
                pa.table(
                    {
                        "user_id": pa.array(self.user_map.to_ids(rows_user[valid]).astype(str)),
                        "item_id": pa.array(self.item_map.to_ids(items_np[valid]).astype(str)),
                        "rank": pa.array(ranks[valid], pa.int32()),
                        "score": pa.array(scores_np[valid].astype(np.float32)),
                    },
                    schema=SCHEMA,
                ),
            )


def iter_recommendation_tables(
    run: RunFolder,
    split: ExportSplit = "test",
    k: int = 20,
    user_ids: list[str] | None = None,
    chunk_users: int = 4096,
    progress: bool = True,
    index: str | None = None,
) -> Iterator[pa.Table]:
    """Yield one Arrow table per chunk of users, ``(chunk × k)`` rows at most."""
    scorer = _Scorer(run, split, k, index)
    users = select_users(run, split, user_ids)
    bar = tqdm(total=len(users), unit="user", desc="export", disable=not progress)
    for chunk, table in scorer.tables(users, chunk_users):
        yield table
        bar.update(len(chunk))
    bar.close()


def export_recommendations(
    run_dir: str | Path,
    out: str | Path,
    split: ExportSplit = "test",
    k: int = 20,
    user_ids: list[str] | None = None,
    chunk_users: int = 4096,
    progress: bool = True,
    index: str | None = None,
) -> int:
    """Write top-``k`` per user to ``out`` (Parquet, or CSV by extension) atomically.

    Returns the number of rows written.  Nothing appears under ``out`` unless the
    whole export succeeded.
    """
    run = RunFolder(Path(run_dir))
    run.manifest()  # fail early on a folder that is not a finished run
    out = Path(out)
    tables = iter_recommendation_tables(run, split, k, user_ids, chunk_users, progress, index)
    n_rows = 0
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".csv":
            import pyarrow.csv as pcsv

            with pcsv.CSVWriter(tmp, SCHEMA) as writer:
                for table in tables:
                    writer.write_table(table)
                    n_rows += table.num_rows
        else:
            with pq.ParquetWriter(tmp, SCHEMA) as writer:
                for table in tables:
                    writer.write_table(table)
                    n_rows += table.num_rows
    return n_rows


MANIFEST, SUCCESS = "_manifest.json", "_SUCCESS"
PARTS_FORMAT = 1


def part_path(out_dir: Path, n: int) -> Path:
    return out_dir / f"part-{n:05d}.parquet"


def _write_part(table: pa.Table, path: Path) -> None:
    """One part, atomically (a killed export leaves at most a hidden temporary file)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def export_partitioned(
    run_dir: str | Path,
    out_dir: str | Path,
    split: ExportSplit = "test",
    k: int = 20,
    user_ids: list[str] | None = None,
    chunk_users: int = 4096,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    index: str | None = None,
) -> dict[str, Any]:
    """Write top-``k`` per user to ``out_dir/part-NNNNN.parquet``, resumably.

    Part ``n`` holds the users ``users[n·chunk_users : (n+1)·chunk_users]`` of the sorted
    user selection (see :func:`select_users`). Parts already present (from an interrupted
    run of the same export) are kept and skipped. Raises ``RecsysError`` when ``out_dir``
    holds an export with other parameters, or part files without a manifest.

    ``shard = (i, n)``: this call writes only the parts ``p`` with ``p % n == i``, so that
    ``n`` processes or machines (sharing ``out_dir``) export disjoint slices of the users
    at once, each resumable on its own; ``_SUCCESS`` appears once every part exists
    (:func:`verify_partitioned` checks the whole).

    Returns ``rows`` (all parts), ``users``, ``parts``, ``written`` and ``skipped`` parts,
    ``seconds`` and ``users_per_second`` (of the users scored by this call).
    """
    start = time.perf_counter()
    shard_index, n_shards = shard
    if n_shards < 1 or not 0 <= shard_index < n_shards:
        raise RecsysError(f"shard must be I/N with 0 <= I < N, got {shard_index}/{n_shards}")
    if chunk_users < 1:
        raise RecsysError(f"chunk_users must be >= 1, got {chunk_users}")
    if k <= 0:
        raise RecsysError(f"k must be positive, got {k}")
    run = RunFolder(Path(run_dir))
    fingerprint = run_fingerprint(run)  # also fails early on an unfinished run
    out_dir = Path(out_dir)
    users = select_users(run, split, user_ids)
    n_parts = math.ceil(len(users) / chunk_users)
    manifest = {
        "format": PARTS_FORMAT,
        "run": str(run.root.resolve()),
        "run_fingerprint": fingerprint,
        "split": split,
        "k": k,
        "chunk_users": chunk_users,
        "n_users": len(users),
        "users_sha256": hashlib.sha256(users.astype("<i8").tobytes()).hexdigest(),
        "n_parts": n_parts,
        "schema": [f"{f.name}:{f.type}" for f in SCHEMA],
        "index": index,  # None: exact scoring
    }
    _claim(out_dir, manifest)
    mine = [n for n in range(n_parts) if n % n_shards == shard_index]
    for stale in out_dir.glob(".part-*.tmp"):  # left by a killed writer of this shard's
        number = stale.name.split(".")[1].removeprefix("part-")
        if number.isdigit() and int(number) % n_shards == shard_index:
            stale.unlink(missing_ok=True)  # (another shard's may be being written now)

    pending = [n for n in mine if not part_path(out_dir, n).exists()]
    total = sum(len(users[n * chunk_users : (n + 1) * chunk_users]) for n in mine)
    done_users = total - sum(len(users[n * chunk_users : (n + 1) * chunk_users]) for n in pending)
    bar = tqdm(total=total, initial=done_users, unit="user", desc="export", disable=not progress)
    scored = 0
    if pending:
        scorer = _Scorer(run, split, k, index)
        for n in pending:
            chunk_users_idx = users[n * chunk_users : (n + 1) * chunk_users]
            ((_, table),) = scorer.tables(chunk_users_idx, chunk_users)
            _write_part(table, part_path(out_dir, n))
            scored += len(chunk_users_idx)
            bar.update(len(chunk_users_idx))
    bar.close()
    seconds = time.perf_counter() - start
    complete = all(part_path(out_dir, n).exists() for n in range(n_parts))
    if complete:  # the last shard to finish marks the whole export
        atomic_write_text(out_dir / SUCCESS, "")
    rows = sum(pq.ParquetFile(part_path(out_dir, n)).metadata.num_rows for n in mine)
    return {
        "out": str(out_dir),
        "rows": rows,
        "users": len(users),
        "parts": n_parts,
        "shard": f"{shard_index}/{n_shards}",
        "complete": complete,
        "written": len(pending),
        "skipped": len(mine) - len(pending),
        "seconds": round(seconds, 3),
        "users_per_second": round(scored / seconds, 1) if scored else None,
    }


def _claim(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest into a fresh folder, or check that it matches the one there."""
    path = out_dir / MANIFEST
    if path.exists():
        try:
            found = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise RecsysError(f"{path}: unreadable manifest ({err}); delete {out_dir}") from None
        keys = [key for key in manifest if key != "run"]  # the run folder may have moved
        diff = [
            f"{key} {found.get(key)!r} there, {manifest[key]!r} now"
            for key in keys
            if found.get(key) != manifest[key]
        ]
        if diff:
            raise RecsysError(
                f"{out_dir} holds another export ({'; '.join(diff)}); choose another --out"
                " or delete that folder"
            )
        return
    if out_dir.exists() and any(out_dir.glob("part-*.parquet")):
        raise RecsysError(f"{out_dir} has part files but no {MANIFEST}; refusing to mix exports")
    atomic_write_json(path, manifest)


def verify_partitioned(run_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Check a partitioned export against its run: every part of the manifest present,
    every selected user in exactly one part with ranks ``1..r`` once each, ``r = k`` or,
    for a user with fewer than ``k`` items left to recommend, all of them; no other user.
    Reads one part at a time (user ids and ranks only). Returns counts and ``problems``
    (empty when the export is whole)."""
    run, out_dir = RunFolder(Path(run_dir)), Path(out_dir)
    path = out_dir / MANIFEST
    if not path.exists():
        raise RecsysError(f"{out_dir}: no {MANIFEST}: not a partitioned export")
    manifest = json.loads(path.read_text())
    split, k = manifest["split"], int(manifest["k"])
    users = select_users(run, split, None)
    if hashlib.sha256(users.astype("<i8").tobytes()).hexdigest() != manifest["users_sha256"]:
        users = None  # exported for an explicit user list: check the users it holds
    exclude = run.matrix(*SEEN[split])
    candidates = None if split == "all" else run.candidates(split)
    n_candidates = len(run.item_map()) if candidates is None else len(candidates)
    problems: list[str] = []
    seen_users: dict[str, int] = {}  # user -> the part holding them
    counts: dict[str, int] = {}  # user -> rows
    rows = 0
    for n in range(int(manifest["n_parts"])):
        part = part_path(out_dir, n)
        if not part.exists():
            problems.append(f"{part.name} missing")
            continue
        table = pq.read_table(part, columns=["user_id", "rank"]).to_pandas()
        rows += len(table)
        for user, ranks in table.groupby("user_id", sort=False)["rank"]:
            if user in seen_users:
                problems.append(f"user {user!r} in {part.name} and part {seen_users[user]}")
                continue
            seen_users[user] = n
            counts[user] = len(ranks)
            if sorted(ranks) != list(range(1, len(ranks) + 1)) or len(ranks) > k:
                problems.append(f"user {user!r} ({part.name}): ranks {sorted(ranks)[:5]}…")
    user_map = run.user_map()
    wanted = {str(u) for u in user_map.to_ids(users)} if users is not None else set(seen_users)
    missing = wanted - set(seen_users)
    extra = set(seen_users) - wanted
    if missing:
        problems.append(f"{len(missing)} user(s) missing, e.g. {sorted(missing)[0]!r}")
    if extra:
        problems.append(f"{len(extra)} user(s) not selected, e.g. {sorted(extra)[0]!r}")
    if users is not None and not problems:  # short lists only where items ran out
        index = user_map.to_index(list(counts))
        if candidates is None:
            available = n_candidates - np.diff(exclude.indptr)[index]
        else:
            available = n_candidates - exclude[index][:, candidates].getnnz(axis=1)
        short = [u for u, c, a in zip(counts, counts.values(), available, strict=True)
                 if c < min(k, a)]  # fmt: skip
        if short:
            problems.append(f"{len(short)} user(s) with fewer than k rows, e.g. {short[0]!r}")
    return {
        "out": str(out_dir), "parts": int(manifest["n_parts"]), "users": len(seen_users),
        "rows": rows, "complete": (out_dir / SUCCESS).exists(), "problems": problems,
    }  # fmt: skip

