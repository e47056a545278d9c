"""Batch top-K export from a run folder, in the protocol's long format.

Reads only the run folder (embeddings, id maps, interactions): never the training code.
Rows: ``user_id`` (str), ``item_id`` (str), ``rank`` (1-based int32), ``score`` (float32).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from recsys.artifacts import RunFolder
from recsys.data.splits import TEST, TRAIN, VALID
from recsys.errors import RecsysError
from recsys.eval.ranking import iter_topk
from recsys.io import atomic_path

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


def iter_recommendation_tables(
    run: RunFolder,
    split: ExportSplit = "test",
    k: int = 20,
    user_ids: list[str] | None = None,
    chunk_users: int = 4096,
    progress: bool = True,
) -> Iterator[pa.Table]:
    """Yield one Arrow table per chunk of users, ``(chunk × k)`` rows at most."""
    if k <= 0:
        raise RecsysError(f"k must be positive, got {k}")
    user_emb, item_emb = (torch.from_numpy(a) for a in run.embeddings())
    user_map, item_map = run.user_map(), run.item_map()
    users = select_users(run, split, user_ids)
    exclude = run.matrix(*SEEN[split])
    candidates = run.candidates("test" if split == "all" else split)
    if split == "all":
        candidates = None  # production ranks the whole catalogue

    def score(batch: torch.Tensor) -> torch.Tensor:
        return user_emb[batch] @ item_emb.T

    bar = tqdm(total=len(users), unit="user", desc="export", disable=not progress)
    for chunk_users_idx, items, scores in iter_topk(
        score, users, k, exclude, candidates=candidates, batch_size=chunk_users
    ):
        items_np, scores_np = items.numpy(), scores.numpy()
        valid = items_np >= 0  # a user with fewer than k unseen items gets fewer rows
        ranks = np.broadcast_to(np.arange(1, items_np.shape[1] + 1, dtype=np.int32), items_np.shape)
        rows_user = np.repeat(chunk_users_idx, items_np.shape[1]).reshape(items_np.shape)
        yield pa.table(
            {
                "user_id": pa.array(user_map.to_ids(rows_user[valid]).astype(str)),
                "item_id": pa.array(item_map.to_ids(items_np[valid]).astype(str)),
                "rank": pa.array(ranks[valid], pa.int32()),
                "score": pa.array(scores_np[valid].astype(np.float32)),
            },
            schema=SCHEMA,
        )
        bar.update(len(chunk_users_idx))
    bar.close()


def export_recommendations(
    run_dir: str | Path,
    out: str | Path,
    split: ExportSplit = "test",
    k: int = 20,
    user_ids: list[str] | None = None,
    chunk_users: int = 4096,
    progress: bool = True,
) -> int:
    """Write top-``k`` per user to ``out`` (Parquet, or CSV by extension) atomically.

    Returns the number of rows written.  Nothing appears under ``out`` unless the
    whole export succeeded.
    """
    run = RunFolder(Path(run_dir))
    run.manifest()  # fail early on a folder that is not a finished run
    out = Path(out)
    tables = iter_recommendation_tables(run, split, k, user_ids, chunk_users, progress)
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
