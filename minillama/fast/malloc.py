"""Keeping freed memory for reuse: an opt-in setting of glibc's allocator for NumPy workloads."""

from __future__ import annotations

import ctypes
import os
import sys

_MALLOC_TUNED = False


def tune_malloc() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the OS at once.

    NumPy allocates a fresh array for every operation. By default glibc returns a large
    freed block to the kernel, and the next allocation of that size page-faults it back
    in, one 4 KiB page at a time: on a 512-token prefill that costs about a fifth of the
    time (docs/performance.md). Raising the trim threshold to 1 GiB keeps freed heap memory
    for reuse; arrays above 32 MiB (the mmap threshold) are still returned at once, so large
    weights and caches never linger.

    This changes the allocator for the whole process, so minillama never does it on its own
    inside your program: the ``minillama`` command line calls it, and you may call it once
    yourself. MINILLAMA_MALLOC_TUNING=0 turns it off. Returns whether it is in effect (glibc only).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("MINILLAMA_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return _MALLOC_TUNED
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        _MALLOC_TUNED = bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20) and libc.mallopt(M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError):
        _MALLOC_TUNED = False
    return _MALLOC_TUNED
