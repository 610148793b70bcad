"""Process-wide memory tuning for the command line (the library leaves its host process alone).

Backups move data in 1-12 MiB blocks between threads. glibc serves such blocks from per-thread heaps once
its dynamic mmap threshold has grown, and heaps fragment: measured on a 500 MB ``dedup`` backup, peak RSS
123 MB by default, 99 MB with blocks of 4 MiB or more always mmapped (returned to the system when freed)
and at most 2 arenas, at the same CPU time (1 MiB thresholds cost 50% more system time in page faults).
Fixing the mmap threshold also fixes glibc's trim threshold at its 128 KiB default, so a heap gave the
1 MiB blocks of a download back after each one and faulted them in again (55,000 minor faults a GiB of
an http export); an 8 MiB trim threshold keeps that much free at a heap's top (2,400 faults, 0.2 s less
CPU a GiB).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_allocator(mmap_threshold: int = 4 << 20, arenas: int = 2, trim_threshold: int = 8 << 20) -> bool:
    """Apply the settings above when the C library is glibc; whether it was."""
    try:
        # the symbols already loaded into this process: no ldconfig subprocess (find_library costs 14 ms)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    ok = (bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_ARENA_MAX, arenas))
          and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold)))
    log.debug("allocator tuned: %s", ok)
    return ok
