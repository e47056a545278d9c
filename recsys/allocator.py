"""Keep large freed blocks in the process instead of handing them back to the kernel.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MB by default)
with a fresh ``mmap`` and unmaps it on ``free``: each large tensor a step creates and drops
(a 1M-item sampled step's rows are 67 MB each) comes back as new pages the kernel zeroes
and faults in one by one. A ``(262k, 64)`` ``pow`` takes 38 ms that way against 6 ms into
memory already mapped (``bench/allocator.py``). Raising the mmap and trim thresholds lets
the heap reuse those blocks; the pages stay with the process (a 1M-item DAS step: twice as
fast, its peak 1.6 GB higher).

Training calls :func:`keep_large_blocks` once at its start, and once the optimiser is gone
:func:`release_free_memory` (its moments' freed blocks would otherwise stay resident while
the embeddings and the evaluation allocate theirs) and :func:`map_large_blocks` (the phases
after the fit get glibc's own behaviour back: kept, the evaluation's score chunks grew the
heap by 6–8 GB at 1M items). A
user who tunes glibc's allocator through its environment (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``) keeps their setting; other C libraries
(macOS, musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to 1 GiB stay in the heap; larger ones (rare, and few) are still mapped apiece.
LARGE_BLOCK_BYTES = 1 << 30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


@functools.cache  # loaded once a process
def _glibc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_large_blocks(limit: int = LARGE_BLOCK_BYTES) -> bool:
    """Set glibc's mmap and trim thresholds to ``limit`` bytes in this process; whether
    they were set (not on other C libraries, nor over the user's own allocator settings)."""
    libc = _glibc()
    if libc is None or any(name in os.environ for name in USER_SETTINGS):
        return False
    mmap = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(limit))
    trim = libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(limit))
    return bool(mmap and trim)


# glibc's own bounds: its mmap threshold grows to at most 32 MiB, its trim threshold twice that
DEFAULT_MMAP_BYTES = 32 << 20


def map_large_blocks() -> bool:
    """Undo :func:`keep_large_blocks` after training: blocks over 32 MiB (the largest mmap
    threshold glibc sets itself) are mapped apiece again and unmapped when freed, so the
    phases after the fit (the evaluation's score chunks) hold only what is alive; whether
    they were set (not on other C libraries, nor over the user's own settings)."""
    libc = _glibc()
    if libc is None or any(name in os.environ for name in USER_SETTINGS):
        return False
    mmap = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(DEFAULT_MMAP_BYTES))
    trim = libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2 * DEFAULT_MMAP_BYTES))
    return bool(mmap and trim)


def release_free_memory() -> bool:
    """Return the heap's free pages to the kernel (``malloc_trim``); whether any were."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(ctypes.c_size_t(0)))
