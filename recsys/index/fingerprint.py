"""A run folder's identity, for artifacts derived from it (indexes, exports, journals).

Kept free of FAISS and torch so that any stage can import it cheaply.
"""

from __future__ import annotations

import hashlib

from recsys.artifacts import RunFolder


def run_fingerprint(run: RunFolder) -> str:
    """16 hex digits of the SHA-256 of ``manifest.json``.

    The manifest carries the creation time, data fingerprint and package versions, so a
    retrained run (even of the same config) gets a new fingerprint and artifacts built
    from the old one are recognised as stale.
    """
    run.manifest()  # validates the format version; raises ArtifactError when missing
    return hashlib.sha256(run.manifest_path.read_bytes()).hexdigest()[:16]
