"""glibc malloc tuning for processes that allocate large arrays: the model, and the build's reads.

A U-TAE forward allocates and frees tensors of tens to hundreds of MB per batch; a build pass-2
task allocates a (time, band, y, x) block of ~126 MB (512 px, 24 dates) and its temporaries per
chunk. glibc serves allocations above ``M_MMAP_THRESHOLD`` with fresh ``mmap`` regions, so every
batch or chunk pays page faults to zero new pages. The Dask nanny makes it worse: it starts
workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which freezes the threshold at its 128 kB default
(glibc's dynamic adjustment is off once a threshold is set). Measured on 2 cores, idle machine
(utae-small, 48 windows of 128 px, T=12, one torch thread): 8.4 s with glibc defaults, 12.0 s
with the nanny's setting, 5.3 s with the nanny's setting plus this module's 1 GiB mmap
threshold. A build's pass 2 (a one-process loop of 8 chunks of 512 px, 24 dates: the block
reader, zstd-1 patch writes and moments, under the nanny's settings; a throwaway probe, not kept in
the repository): system CPU 6.8 s -> 1.1 s, page faults 2.1 M -> 0.19 M, wall 27.6 s -> 16.2 s.
The end-to-end effect is in the README's benchmarks (``benchmarks/crop2seg_way.py``).

:func:`tune_malloc` raises the threshold in the running process (``mallopt``), so large arrays
come from the heap and are reused batch after batch (chunk after chunk). The price: the process
keeps about one task's working set resident between tasks (RSS after the model run above: 400
MB -> 940 MB; after the build probe: 474 -> 610 MB); it does not grow with the area. Set
``CROP2SEG_MALLOC_TUNE=0`` to keep glibc's settings.

The trim threshold is raised too: with the nanny's ``MALLOC_TRIM_THRESHOLD_=65536`` glibc returns
any free memory above 64 kB at the top of the heap to the kernel at each ``free``, so the blocks
that now come from the heap were still faulted in afresh each batch. Measured (predict of the
1024 px demo scene with the demo weights, 2 workers x 1 thread, warm, idle machine): 3.6-4.3 M
minor page faults and ~10 s system CPU per worker with the mmap threshold alone; 4-10 k faults,
0.1 s system CPU, and 26.5 s -> 14.5 s wall with both. It is a no-op where glibc is absent (macOS,
Windows, musl).

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

__all__ = ["MMAP_THRESHOLD", "tune_malloc", "malloc_tuned"]

#: Allocations below this size come from the heap (1 GiB: every tensor of a U-TAE batch, every block of a chunk).
MMAP_THRESHOLD = 1 << 30
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_tuned = False


def tune_malloc(threshold: int = MMAP_THRESHOLD) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` of this process to ``threshold`` bytes (once).

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
    value = int(min(threshold, 2**31 - 1))
    # both: with the mmap threshold alone, the nanny's MALLOC_TRIM_THRESHOLD_=65536 hands every
    # freed block at the top of the heap back to the kernel, and the next batch faults it in again
    ok = bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))
    if ok:
        _tuned = True
        log.debug("glibc %s: M_MMAP_THRESHOLD set to %d bytes", gnu().decode(), threshold)
    return ok


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc` took effect in this process (a diagnostic)."""
    return _tuned
