"""glibc malloc tuning of model processes (crop2seg_pipeline.malloc), checked in fresh processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import ctypes, sys
    import numpy as np
    from crop2seg_pipeline.malloc import malloc_tuned, tune_malloc

    class MallInfo2(ctypes.Structure):  # glibc >= 2.33
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    ok = tune_malloc() if sys.argv[1] == "tune" else False
    before = libc.mallinfo2().hblkhd
    a = np.ones(200 * 2**20, dtype=np.uint8)  # 200 MB
    during = libc.mallinfo2().hblkhd
    heap = libc.mallinfo2().arena
    del a  # freed at the top of the heap: kept for the next batch, or trimmed (given back)?
    kept = (libc.mallinfo2().arena >> 20) >= (heap >> 20) - 1 and heap >= 200 * 2**20
    print(int(ok), int(malloc_tuned()), (during - before) >> 20, int(kept))
    """
)


def _glibc() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return False
    return True


def _probe(mode: str, env: dict | None = None) -> tuple[int, ...]:
    import os

    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536", **(env or {})})
    return tuple(int(v) for v in out.stdout.split())


def test_tuning_is_a_no_op_without_glibc(monkeypatch):
    import crop2seg_pipeline.malloc as m

    monkeypatch.setattr(m, "_tuned", False)
    monkeypatch.setattr(m.sys, "platform", "darwin")
    assert m.tune_malloc() is False and m.malloc_tuned() is False


def test_large_arrays_come_from_the_heap_once_tuned():
    if not (sys.platform.startswith("linux") and _glibc()):  # macOS, Windows, musl: nothing to tune
        from crop2seg_pipeline.malloc import tune_malloc

        assert tune_malloc() is False
        return
    # the Dask nanny's MALLOC_TRIM_THRESHOLD_ freezes the 128 kB mmap threshold: 200 MB is mmapped
    assert _probe("plain") == (0, 0, 200, 0)
    # tuned: the same allocation comes from the heap (no new mmapped bytes), and once freed the
    # heap keeps it for the next batch (the nanny's trim threshold would give it back to the kernel)
    assert _probe("tune") == (1, 1, 0, 1)
    # opt-out
    assert _probe("tune", {"CROP2SEG_MALLOC_TUNE": "0"}) == (0, 0, 200, 0)
