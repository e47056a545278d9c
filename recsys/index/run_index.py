"""An index for a run folder: built over its item embeddings with search parameters
calibrated on its own users (seen items excluded, as served), or loaded from
``RUN/index/<name>.faiss`` (what ``recsys index`` and ``recsys serve`` use)."""

from __future__ import annotations

import logging

import numpy as np

from recsys.artifacts import RunFolder
from recsys.data.splits import TEST, TRAIN, VALID
from recsys.errors import ArtifactError
from recsys.index.faiss_index import AUTO_EXACT_ITEMS, ItemIndex, _set_params
from recsys.index.fingerprint import run_fingerprint
from recsys.index.spec import IndexConfig, index_path

log = logging.getLogger(__name__)


def build_for_run(run: RunFolder, config: IndexConfig) -> ItemIndex:
    """Build over ``embeddings/items.npy``, calibrating on a seeded sample of the users,
    each with the items they interacted with (every split) excluded, as served."""
    users, items = run.embeddings()
    rng = np.random.default_rng(0)
    n = min(len(users), config.calibration_queries)
    sample = np.sort(rng.choice(len(users), size=n, replace=False))
    seen = run.matrix(TRAIN, VALID, TEST)
    exclude = [seen.indices[seen.indptr[u] : seen.indptr[u + 1]].astype(np.int64) for u in sample]
    return ItemIndex.build(items, config, run_fingerprint(run), users[sample], exclude)


def load_or_build(
    run: RunFolder, name: str, params: dict[str, int] | None = None, use_gpu: bool = True
) -> ItemIndex:
    """The saved ``RUN/index/<name>.faiss``; else, when ``name`` is a kind, a fresh build
    with default parameters (calibrated, not saved). ``auto`` is ``flat`` (exact) up to
    ``AUTO_EXACT_ITEMS`` items and ``hnsw`` above. Serving uses this."""
    if name == "auto":
        name = "flat" if len(run.embeddings()[1]) <= AUTO_EXACT_ITEMS else "hnsw"
    if index_path(run, name).exists():
        return ItemIndex.load(run, name, params, use_gpu)
    if name not in ("flat", "ivf", "hnsw", "ivfpq"):
        raise ArtifactError(f"{index_path(run, name)} not found and {name!r} is not a kind")
    log.warning("%s: no saved %s index, building one in memory", run.root, name)
    index = build_for_run(run, IndexConfig(kind=name, gpu=use_gpu))  # type: ignore[arg-type]
    if params:
        index.meta.params = {**index.meta.params, **params}
        _set_params(index.search_index, index.meta.params, index.on_gpu)
    return index
