"""Process-wide memory tuning for the command line (the library leaves its host process alone).

Backups move data in 1-12 MiB blocks between threads. glibc serves such blocks from per-thread heaps once
its dynamic mmap threshold has grown, and heaps fragment: measured on a 500 MB ``dedup`` backup, peak RSS
123 MB by default, 99 MB with blocks of 4 MiB or more always mmapped (returned to the system when freed)
and at most 2 arenas, at the same CPU time (1 MiB thresholds cost 50% more system time in page faults).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
_M_ARENA_MAX = -8


def tune_allocator(mmap_threshold: int = 4 << 20, arenas: int = 2) -> bool:
    """Apply the settings above when the C library is glibc; whether it was."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_ARENA_MAX, arenas))
    log.debug("allocator tuned: %s", ok)
    return ok
