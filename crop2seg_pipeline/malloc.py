"""glibc malloc tuning for processes that run the model.

A U-TAE forward allocates and frees tensors of tens to hundreds of MB per batch. glibc serves
allocations above ``M_MMAP_THRESHOLD`` with fresh ``mmap`` regions, so every batch pays page
faults to zero new pages. The Dask nanny makes it worse: it starts workers with
``MALLOC_TRIM_THRESHOLD_=65536``, which freezes the threshold at its 128 kB default (glibc's
dynamic adjustment is off once a threshold is set). Measured on 2 cores (utae-small, 48 windows
of 128 px, T=12, one torch thread, idle machine): 8.4 s with glibc defaults, 12.0 s with
the nanny's setting, 5.3 s with the nanny's setting plus this module's 1 GiB mmap threshold.

:func:`tune_malloc_for_torch` raises the threshold in the running process (``mallopt``), so
large tensors come from the heap and are reused batch after batch. The price: the process keeps
about one forward pass's working set resident between batches (RSS after the run above: 400 MB
-> 940 MB); it does not grow with the area predicted. Set ``CROP2SEG_MALLOC_TUNE=0`` to keep
glibc's settings. It is a no-op where glibc is absent (macOS, Windows, musl).

The threshold only helps allocations from glibc's main arena: a thread with its own arena (Dask
runs tasks in executor threads) grows 64 MB heaps and mmaps anything larger regardless. Local
clusters started by this package therefore give workers ``MALLOC_ARENA_MAX=1``
(:data:`crop2seg_pipeline.cluster.WORKER_ENV`), as do the SLURM/PBS job scripts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

__all__ = ["MMAP_THRESHOLD", "tune_malloc_for_torch", "malloc_tuned"]

#: Allocations below this size come from the heap (1 GiB: every tensor of a U-TAE batch).
MMAP_THRESHOLD = 1 << 30
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
_tuned = False


def tune_malloc_for_torch(threshold: int = MMAP_THRESHOLD) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` of this process to ``threshold`` bytes (once).

    Returns True when the setting is in effect (now or from an earlier call), False where the
    C library is not glibc or refuses it, or ``CROP2SEG_MALLOC_TUNE=0`` is set.
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get("CROP2SEG_MALLOC_TUNE", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        gnu = libc.gnu_get_libc_version
    except (OSError, AttributeError):  # not glibc
        return False
    gnu.restype = ctypes.c_char_p
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, int(min(threshold, 2**31 - 1))))
    if ok:
        _tuned = True
        log.debug("glibc %s: M_MMAP_THRESHOLD set to %d bytes", gnu().decode(), threshold)
    return ok


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc_for_torch` took effect in this process (a diagnostic)."""
    return _tuned
