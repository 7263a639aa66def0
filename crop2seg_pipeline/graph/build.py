"""Task bodies and task builders of the dataset build's two passes.

Pass 1 (:func:`pass1_chunk`) reads only the SCL layer of a chunk (never reflectance) and the
chunk's labels: per-patch class counts and per-date clear-sky / valid fractions. Pass 2
(:func:`pass2_chunk`) reads one chunk of reflectance with all its dates and bands, cuts the
kept patches, writes them as whole Zarr chunks, computes its share of the normalization moments
and then, last, writes its resume marker. Each task reads its own window with the block reader
(:mod:`crop2seg_pipeline.blocks`), so a worker thread holds one chunk at a time and the graph
has one small task per chunk; the :class:`~crop2seg_pipeline.blocks.CubeSource` of a tile is one
shared key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import numpy as np

from ..blocks import CubeSource, read_block, read_scl
from ..interrupts import hold_point
from ..kernels.patches import Moments, patch_class_counts, patch_fraction, patch_mask, patch_views
from ..kernels.s2 import clear_mask
from ..malloc import tune_malloc
from ..store import write_marker, write_patches

__all__ = ["chunk_windows", "pass1_chunk", "pass2_chunk", "pass1_tasks", "shared", "MOMENTS_STEP"]

Window = tuple[int, int, int, int]

#: The normalization moments are pooled over every ``MOMENTS_STEP``-th pixel along y and x of the
#: clear, valid train pixels (a regular quarter sample: the statistics of millions of pixels per
#: chunk, at a quarter of the cost of all of them; see ``benchmarks/fulltile.py``).
MOMENTS_STEP = 2


def chunk_windows(height: int, width: int, chunksize: int) -> dict[tuple[int, int], Window]:
    """``{(by, bx): (row0, row1, col0, col1)}`` of the work chunks of a ``height`` x ``width`` grid."""
    return {
        (by, bx): (r, min(r + chunksize, height), c, min(c + chunksize, width))
        for by, r in enumerate(range(0, height, chunksize))
        for bx, c in enumerate(range(0, width, chunksize))
    }


def shared(obj: Any, name: str) -> Any:
    """``obj`` as one graph key that every task refers to (not copied into each task)."""
    return dask.delayed(obj, traverse=False, name=f"{name}-{dask.base.tokenize(obj)}")


def pass1_chunk(src: CubeSource, window: Window, label: np.ndarray, *, patch_size: int,
                unclear: tuple[int, ...]) -> dict:
    """Dask task: per-patch class counts and per-date clear/valid fractions of one chunk.

    Returns ``counts`` (nr, nc, class) int64, ``clear`` and ``valid`` (time, nr, nc) float32,
    ``clear_px`` (time,) clear pixels of the chunk and ``px`` its pixel count.
    """
    scl = read_scl(src, window)
    clear = clear_mask(scl, unclear)
    return {
        "counts": patch_class_counts(label, patch_size),
        "clear": patch_fraction(clear, patch_size),
        "valid": patch_fraction(scl != 0, patch_size),
        "clear_px": clear.sum(axis=(1, 2)),
        "px": int(label.size),
    }


def pass1_tasks(src: Any, labels: Any, windows: dict[tuple[int, int], Window], *, patch_size: int,
                unclear: tuple[int, ...]) -> dict[tuple[int, int], Any]:
    """One :func:`pass1_chunk` task per chunk; ``labels`` is the dask ``label`` array chunked as ``windows``."""
    blocks = labels.to_delayed()
    return {
        (by, bx): dask.delayed(pass1_chunk, pure=True)(src, w, blocks[by, bx], patch_size=patch_size, unclear=unclear)
        for (by, bx), w in windows.items()
    }


def pass2_chunk(
    src: CubeSource,
    window: Window,
    dates: Sequence[int],
    label: np.ndarray,
    parcel_id: np.ndarray,
    *,
    store: str,
    key: str,
    index: Sequence[int],
    rows: Sequence[int],
    cols: Sequence[int],
    train: Sequence[bool],
    patch_size: int,
    unclear: tuple[int, ...],
) -> dict:
    """Dask task: one chunk start to end: read, cut the kept patches, write them, marker last.

    Parameters
    ----------
    src, window, dates
        What to read: the tile's source, the chunk's ``(row0, row1, col0, col1)`` and the kept
        dates (indices into the source's dates).
    label, parcel_id
        The chunk's rasters.
    store, key
        The patch store and this task's resume-marker name.
    index, rows, cols, train
        Per kept patch: its position in the store, its patch row/column inside the chunk and
        whether it is in the train split (its pixels feed the normalization moments).
    """
    hold_point("pass2")  # the tests' hook (a no-op unless CROP2SEG_TEST_HOLD_AT names it)
    tune_malloc()  # blocks from the heap, reused chunk after chunk (crop2seg_pipeline.malloc)
    s2, scl = read_block(src, window, dates, scl=True)
    # patches written from views of the block (zarr makes each chunk contiguous as it encodes it)
    write_patches(store, index, patch_views(s2, rows, cols, patch_size), patch_views(label, rows, cols, patch_size),
                  patch_views(parcel_id, rows, cols, patch_size))
    tr = np.asarray(train, dtype=bool)
    moments = Moments.zeros(s2.shape[1])
    if tr.any():  # the clear pixels of the train patches, straight on the block: no copy of the patches
        train_px = patch_mask(s2.shape[-2:], np.asarray(rows)[tr], np.asarray(cols)[tr], patch_size)
        clear = clear_mask(scl, unclear)
        clear &= train_px
        moments = Moments.of(s2[None], clear[None], step=MOMENTS_STEP)
    info = {"index": list(index), "moments": moments.to_dict()}
    write_marker(store, key, info)
    return {"key": key, "n": len(index), "pixels": len(index) * int(np.prod(s2.shape[:2])) * patch_size**2}
