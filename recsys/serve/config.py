"""The HTTP API's settings (``recsys serve`` flags map onto these fields)."""

from __future__ import annotations

from pydantic import Field

from recsys.config import StrictModel
from recsys.index.semantic import SemanticCandidatesConfig


class ServeConfig(StrictModel):
    # RUN/index/<index>.faiss; a kind is built in memory when not saved; "auto": exact
    # (flat) up to 50k items, where a scan is as fast as a graph walk, else hnsw.
    index: str = "auto"
    index_params: dict[str, int] = {}  # search-time overrides, e.g. {"efSearch": 256}
    gpu: bool = True  # search on GPUs when faiss has them (not HNSW)
    default_k: int = Field(20, ge=1)
    max_k: int = Field(100, ge=1, le=10_000)
    max_history: int = Field(1000, ge=1)  # history / exclude lists longer than this: 413
    max_body_bytes: int = Field(1 << 20, ge=1024)  # larger request bodies: 413
    max_added_items: int = Field(100_000, ge=0)
    search_threads: int = Field(1, ge=1)  # FAISS OpenMP and BLAS threads per search
    # Searches at once per worker process: more threads only contend for the GIL; for
    # more cores, add processes (recsys serve --workers N).
    concurrent_searches: int = Field(1, ge=1, le=64)
    semantic: SemanticCandidatesConfig = SemanticCandidatesConfig()
    # JSON-lines file that persists added items and shares them between workers; "auto":
    # RUN/serving/added_items.jsonl; None: adds live in memory only (lost on restart).
    adds_journal: str | None = "auto"
    image_root: str | None = None  # image paths of new items must lie under it (None: refused)
