"""Task bodies and task builders of the dataset build's two passes.

Pass 1 (:func:`pass1_chunks`) reads only the SCL layer of a group of chunks (never
reflectance) and the chunks' labels: per-patch class counts and per-date clear-sky / valid fractions. Pass 2
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
from ..kernels.patches import (
    Moments,
    patch_class_counts,
    patch_fraction,
    patch_mask,
    patch_views,
)
from ..kernels.s2 import clear_mask
from ..malloc import tune_malloc
from ..store import write_marker, write_patches

__all__ = [
    "MOMENTS_STEP",
    "PASS1_GROUP",
    "chunk_windows",
    "group_windows",
    "pass1_chunks",
    "pass1_tasks",
    "pass2_chunk",
    "shared",
]

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


#: Pass 1 reads the SCL of up to ``PASS1_GROUP`` x ``PASS1_GROUP`` px (10 m) per task, the
#: chunks of a group in one window: Sentinel-2 COGs store 1024 px blocks (512 px at 20 m), so
#: one task per 512 px chunk decoded every SCL block four times (see ``benchmarks/fulltile.py``
#: and the README's full-tile table). 24 dates of 1024 px SCL are 25 MB.
PASS1_GROUP = 1024


def group_windows(windows: dict[tuple[int, int], Window], group: int = PASS1_GROUP
                  ) -> dict[tuple[int, int], dict[tuple[int, int], Window]]:
    """The chunk windows grouped by the ``group`` px cell their origin falls in (a chunk at least
    as large as ``group`` is a group of its own): ``{cell: {chunk key: window}}``."""
    out: dict[tuple[int, int], dict[tuple[int, int], Window]] = {}
    for key, w in windows.items():
        out.setdefault((w[0] // group, w[2] // group), {})[key] = w
    return out


def pass1_chunks(src: CubeSource, windows: Sequence[Window], labels: Sequence[np.ndarray], *, patch_size: int,
                 unclear: tuple[int, ...]) -> list[dict]:
    """Dask task: per-patch class counts and per-date clear/valid fractions of some chunks.

    The SCL of the chunks' bounding window is read once (only SCL files). Returns one dict per
    chunk, in the order of ``windows``: ``counts`` (nr, nc, class) int64, ``clear`` and
    ``valid`` (time, nr, nc) float32, ``clear_px`` (time,) clear pixels of the chunk and ``px``
    its pixel count.
    """
    tune_malloc()  # the SCL and masks (25 MB each at 24 dates) reuse the heap, not fresh mmaps
    r0, r1 = min(w[0] for w in windows), max(w[1] for w in windows)
    c0, c1 = min(w[2] for w in windows), max(w[3] for w in windows)
    scl_all = read_scl(src, (r0, r1, c0, c1))
    clear_all = clear_mask(scl_all, unclear)
    out = []
    for w, label in zip(windows, labels, strict=True):
        part = (slice(None), slice(w[0] - r0, w[1] - r0), slice(w[2] - c0, w[3] - c0))
        scl, clear = scl_all[part], clear_all[part]
        out.append({
            "counts": patch_class_counts(label, patch_size),
            "clear": patch_fraction(clear, patch_size),
            "valid": patch_fraction(scl != 0, patch_size),
            "clear_px": clear.sum(axis=(1, 2)),
            "px": int(label.size),
        })
    return out


def pass1_tasks(src: Any, labels: Any, windows: dict[tuple[int, int], Window], *, patch_size: int,
                unclear: tuple[int, ...], group: int = PASS1_GROUP) -> dict[tuple[tuple[int, int], ...], Any]:
    """One :func:`pass1_chunks` task per :func:`group_windows` group: ``{chunk keys: task}``, the
    task returning the chunks' results in that order. ``labels`` is the dask ``label`` array
    chunked as ``windows``."""
    blocks = labels.to_delayed()
    tasks = {}
    for members in group_windows(windows, group).values():
        keys = tuple(members)
        tasks[keys] = dask.delayed(pass1_chunks, pure=True)(
            src, [members[k] for k in keys], [blocks[k] for k in keys], patch_size=patch_size, unclear=unclear)
    return tasks


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
