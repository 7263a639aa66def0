"""The window graph of whole-tile inference: model tasks per chunk, blending, finishing.

Windows of ``patch_size`` px are planned once on the *global* grid at a stride of
``patch_size - overlap`` (the last one shifted back to the edge), so results do not depend on
the chunking. Each window is *owned* by the one chunk holding its origin and runs exactly once:
a chunk's model task gets its block with a halo of less than ``patch_size`` below and to the
right (the reach of the windows it owns). Two sources of blocks:

- :func:`window_graph` with a :class:`~crop2seg_pipeline.blocks.CubeSource`: each model task reads
  its haloed block itself with the block reader (no read tasks running ahead of the slow model
  tasks and piling blocks up in worker memory; on chunks aligned with the files' tiles the read
  touches 2 x 2 file tiles);
- with a dask array (a user's lazy cube): the haloed blocks come from ``dask.array.overlap``.

A model task loads the model through the per-worker cache (never pickled into the graph), runs
its windows in batches and adds their edge-weighted softmax probabilities into float64 sums over
the haloed block, returned as 3 x 3 parts (core, edge strips, corners). A cheap blend task per
chunk adds its core sums and the strips its neighbours spill into it and divides by the weight
sum. float64 sums make the float32 result independent of the order of the additions, hence of
the chunking. :func:`finish_chunk` turns a chunk's probabilities into the class map, confidence
and histograms the driver writes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from ..blocks import PREDICT_BLOCK_CACHE, CubeSource, read_block
from ..kernels.chunking import min_chunks, owned_per_chunk
from ..kernels.windows import (
    accumulate_windows,
    blend_weights,
    classes_of,
    confidence_of,
    owned_halo,
    owned_windows,
    plan_axis,
)
from ..malloc import tune_malloc
from ..models.spec import ModelSpec
from .model_cache import cached_model, resolve_device

__all__ = ["BLEND_FLOOR", "MODEL_PRIORITY_TOP", "WindowPlan", "bounds", "finish_chunk", "finish_tasks", "min_chunks", "owned_counts",
           "plan_windows", "window_graph"]

#: Blend weight at a window's very edge (a floor > 0: every covered pixel gets a weight).
BLEND_FLOOR = 0.05


@dataclass(frozen=True)
class WindowPlan:
    """Everything one model task needs besides its data (small: a few arrays of origins).

    Attributes
    ----------
    spec, device : the model (by its weights folder) and where to run it
    positions : (time,) float32 date positions fed to the model
    rows, cols : global window origins along y / x
    ybounds, xbounds : chunk edges along y / x (``0 ... H`` of the possibly padded area)
    depth_y, depth_x : (before, after) halo of the owned windows
    overlap, batch_size : window overlap (px) and windows per forward pass
    """

    spec: ModelSpec
    device: str
    positions: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    ybounds: tuple[int, ...]
    xbounds: tuple[int, ...]
    depth_y: tuple[int, int]
    depth_x: tuple[int, int]
    overlap: int
    batch_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.ybounds) - 1, len(self.xbounds) - 1)

    def __dask_tokenize__(self):
        return (
            "crop2seg-window-plan", self.spec, self.device, self.positions.tobytes(), self.rows.tobytes(),
            self.cols.tobytes(), self.ybounds, self.xbounds, self.depth_y, self.depth_x, self.overlap,
            self.batch_size,
        )


def bounds(chunks: Sequence[int]) -> tuple[int, ...]:
    """Chunk edges ``0, c1, c1 + c2, ...`` of a chunking."""
    return tuple(int(v) for v in np.concatenate([[0], np.cumsum(chunks)]))


def plan_windows(spec: ModelSpec, positions: np.ndarray, ychunks: Sequence[int], xchunks: Sequence[int], *,
                 overlap: int, batch_size: int, device: str) -> WindowPlan:
    """The windows of an area chunked as ``ychunks`` x ``xchunks`` (each chunk >= one window)."""
    P = spec.patch_size
    yb, xb = bounds(ychunks), bounds(xchunks)
    rows = plan_axis(yb[-1], P, P - overlap)
    cols = plan_axis(xb[-1], P, P - overlap)
    return WindowPlan(
        spec=spec, device=device, positions=np.asarray(positions, np.float32), rows=rows, cols=cols,
        ybounds=yb, xbounds=xb, depth_y=owned_halo(rows, P, yb), depth_x=owned_halo(cols, P, xb),
        overlap=overlap, batch_size=batch_size,
    )


def _extent(plan: WindowPlan, i: int, j: int) -> tuple[int, int, int, int, int, int, int, int]:
    """Core ``(ya, yb, xa, xb)`` and haloed extent ``(ey0, ey1, ex0, ex1)`` of chunk (i, j), global px."""
    ya, yb = plan.ybounds[i], plan.ybounds[i + 1]
    xa, xb = plan.xbounds[j], plan.xbounds[j + 1]
    ey0 = max(ya - plan.depth_y[0], 0)
    ex0 = max(xa - plan.depth_x[0], 0)
    ey1 = min(yb + plan.depth_y[1], plan.ybounds[-1])
    ex1 = min(xb + plan.depth_x[1], plan.xbounds[-1])
    return ya, yb, xa, xb, ey0, ey1, ex0, ex1


def _split3(lo: int, a: int, b: int, hi: int) -> dict[int, slice]:
    """Local slices of the parts before (-1), inside (0) and after (+1) a core [a, b) of [lo, hi)."""
    return {-1: slice(0, a - lo), 0: slice(a - lo, b - lo), 1: slice(b - lo, hi - lo)}


# ----------------------------------------------------------------------------- task bodies


def predict_chunk(block: np.ndarray, plan: WindowPlan, i: int, j: int) -> dict:
    """Dask task: run the windows *owned* by chunk (i, j) (their origin lies in its core) once.

    Returns the weighted probability sums and weight sums (float64, so that the order in which
    the sums of neighbouring chunks are added does not change the float32 result) split in the
    3 x 3 parts of the haloed block: ``{(dy, dx): (acc, wsum)}``, ``(0, 0)`` being the core and
    e.g. ``(1, 0)`` the strip spilling into the chunk below. Only non-empty parts are returned.
    """
    spec = plan.spec
    P = spec.patch_size
    ya, yb, xa, xb, ey0, ey1, ex0, ex1 = _extent(plan, i, j)
    if block.shape[-2:] != (ey1 - ey0, ex1 - ex0):  # the block must match our bookkeeping
        raise RuntimeError(f"block {(i, j)}: got {block.shape[-2:]}, expected {(ey1 - ey0, ex1 - ex0)}")
    rows = owned_windows(plan.rows, P, plan.ybounds, i) - ey0
    cols = owned_windows(plan.cols, P, plan.xbounds, j) - ex0
    acc = np.zeros((spec.n_classes, ey1 - ey0, ex1 - ex0), dtype=np.float64)
    wsum = np.zeros((ey1 - ey0, ex1 - ex0), dtype=np.float64)
    model, dev = cached_model(spec, plan.device)
    accumulate_windows(
        block, plan.positions, model,
        mean=np.asarray(spec.mean, np.float32), std=np.asarray(spec.std, np.float32),
        windows=[(r, c) for r in rows for c in cols], size=P, weights=blend_weights(P, plan.overlap, BLEND_FLOOR),
        acc=acc, wsum=wsum, batch_size=plan.batch_size, ignore_index=spec.ignore_index, device=dev,
    )
    del block
    sy, sx = _split3(ey0, ya, yb, ey1), _split3(ex0, xa, xb, ex1)
    out = {}
    for dy, ry in sy.items():
        for dx, rx in sx.items():
            if ry.stop > ry.start and rx.stop > rx.start:
                out[(dy, dx)] = (np.ascontiguousarray(acc[:, ry, rx]), np.ascontiguousarray(wsum[ry, rx]))
    return out


def read_padded(src: CubeSource, dates: Sequence[int], bands: Sequence[str], y0: int, y1: int, x0: int,
                x1: int, block_cache: int | None = None) -> np.ndarray:
    """Rows [y0, y1) x cols [x0, x1) of the area, mirrored beyond its edge when the area is
    smaller than one window (padding only ever spans one chunk, which then starts at 0);
    ``block_cache``: see :func:`~crop2seg_pipeline.blocks.read_block`."""
    H, W = src.grid.shape
    ry1, rx1 = min(y1, H), min(x1, W)
    if (ry1 < y1 and y0 != 0) or (rx1 < x1 and x0 != 0):
        raise RuntimeError(f"padded block must start at 0, got rows {y0}:{y1}, cols {x0}:{x1} of {H} x {W}")
    block = read_block(src, (y0, ry1, x0, rx1), dates, bands, block_cache=block_cache)
    if ry1 < y1 or rx1 < x1:
        block = np.pad(block, ((0, 0), (0, 0), (0, y1 - ry1), (0, x1 - rx1)), mode="symmetric")
    return block


def read_and_predict_chunk(src: CubeSource, dates: Sequence[int], plan: WindowPlan, i: int, j: int,
                           block_cache: int | None = None) -> dict:
    """Dask task: read chunk (i, j) with its halo (:func:`read_padded`), then :func:`predict_chunk`."""
    tune_malloc()  # the block too comes from the heap (the model cache tunes only at its first load)
    _, _, _, _, ey0, ey1, ex0, ex1 = _extent(plan, i, j)
    return predict_chunk(read_padded(src, dates, plan.spec.bands, ey0, ey1, ex0, ex1, block_cache), plan, i, j)


def owned_counts(plan: WindowPlan) -> dict[tuple[int, int], int]:
    """``{(i, j): windows owned by chunk (i, j)}`` of a plan."""
    P = plan.spec.patch_size
    rows = owned_per_chunk(plan.rows, P, plan.ybounds)
    cols = owned_per_chunk(plan.cols, P, plan.xbounds)
    return {(i, j): a * b for i, a in enumerate(rows) for j, b in enumerate(cols)}


#: Model-task priorities (window counts) are capped here; what runs after them gets more.
MODEL_PRIORITY_TOP = 10_000


def _owned_count(counts: dict[tuple[int, int], int], key: tuple) -> int:
    """The priority of model task ``(name, i, j)``: its window count."""
    return min(counts[(key[1], key[2])], MODEL_PRIORITY_TOP)


def _part(parts: dict, side: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Dask task (runs where the model task ran): one part, so that only it travels."""
    return parts[side]


def blend_chunk(parts: list, sides: list, shape: tuple[int, int], block_id: tuple[int, int]) -> np.ndarray:
    """Dask task: a chunk's blended probabilities ``(class, y, x)`` float32 from its own core sums
    and the sums its neighbours' windows spill into it (``sides``: where each neighbour lies;
    ``parts``: the neighbour's part facing this chunk)."""
    h, w = shape
    acc = wsum = None
    for (a, ws), (di, dj) in zip(parts, sides):
        ry = slice(0, h) if di == 0 else (slice(0, ws.shape[0]) if di < 0 else slice(h - ws.shape[0], h))
        rx = slice(0, w) if dj == 0 else (slice(0, ws.shape[1]) if dj < 0 else slice(w - ws.shape[1], w))
        if acc is None:
            acc = np.zeros((a.shape[0], h, w), dtype=np.float64)
            wsum = np.zeros((h, w), dtype=np.float64)
        acc[:, ry, rx] += a
        wsum[ry, rx] += ws
    if not (wsum > 0).all():  # an invariant of the plan, checked where it matters
        raise RuntimeError(f"block {block_id}: {(wsum <= 0).sum()} pixels not covered by any window")
    np.divide(acc, wsum, out=acc)
    return acc.astype(np.float32)


def finish_chunk(
    probs: np.ndarray, parcel_id: np.ndarray | None, *, n_classes: int, y0: int, x0: int,
    prob_store: str | None, device_of: str, extras: Any = None,
) -> dict:
    """Dask task: class/confidence of a chunk, its class and per-parcel histograms, probability write,
    and with ``extras`` (a :class:`~.extras.ChunkExtras`) the extra outputs of :func:`.extras.chunk_extras`."""
    cls = classes_of(probs)
    conf = confidence_of(probs)
    out: dict[str, Any] = {
        "y0": y0, "x0": x0, "class": cls, "confidence": conf,
        "hist": np.bincount(cls.ravel(), minlength=n_classes).astype(np.int64),
        "device": str(resolve_device(device_of)),
    }
    if parcel_id is not None:
        inside = parcel_id > 0
        pid = parcel_id[inside].astype(np.int64)
        c = cls[inside].astype(np.int64)
        keys, counts = np.unique(pid * n_classes + c, return_counts=True)
        upid, inv = np.unique(pid, return_inverse=True)
        out["parcel_hist"] = (keys // n_classes, keys % n_classes, counts)
        out["parcel_conf"] = (upid, np.bincount(inv, weights=probs.max(axis=0)[inside].astype(np.float64)))
    if prob_store is not None:
        from ..outputs import write_probability_block

        write_probability_block(prob_store, probs, y0, x0)
    if extras is not None:
        from .extras import chunk_extras

        out.update(chunk_extras(probs, cls, parcel_id, extras, y0, x0))
    return out


# ----------------------------------------------------------------------------- the graph


def window_graph(
    plan: WindowPlan,
    *,
    source: CubeSource | None = None,
    dates: Sequence[int] | None = None,
    array: da.Array | None = None,
    resources: Mapping[str, Any] | None = None,
    small_area: bool = False,
) -> da.Array:
    """The lazy ``(class, y, x)`` float32 probabilities of the planned area.

    Two layers over the chunks: one model task per chunk running the windows it owns (annotated
    with ``resources``), then one cheap blend task per chunk adding its core sums and the strips
    its (up to 8) neighbours spill into it. A part task per (chunk, neighbour) picks the part of
    the sums facing that neighbour, so only the strips (less than ``patch_size`` wide, below and
    to the right) travel between workers.

    Parameters
    ----------
    plan
        From :func:`plan_windows`.
    source, dates
        Model tasks read their haloed blocks with the block reader (these dates, the model's
        bands); or
    array
        ``(time, band, y, x)`` dask array chunked as the plan (its blocks come through
        ``dask.array.overlap``).
    resources
        Dask resource annotation of the model tasks, e.g. ``{"GPU": 1}``.
    small_area
        The area is small (``predict.SMALL_AREA_PX`` per thread): Dask priorities on the model
        tasks by their window count (the largest first, so that the queue shares the windows
        evenly between the threads; see :mod:`crop2seg_pipeline.kernels.chunking`), part and
        blend tasks above every model task (``MODEL_PRIORITY_TOP + 1``: cheap, and they free the
        sums), and model reads with :data:`~crop2seg_pipeline.blocks.PREDICT_BLOCK_CACHE`. The
        model tasks may then all run before any chunk is finished downstream, so the sums of
        the whole area may be held at once, and every file block of the area may stay decoded.
    """
    ny, nx = plan.shape
    if (source is None) == (array is None):
        raise ValueError("give either source (with dates) or array")
    if source is not None:
        token = dask.base.tokenize(source, list(dates or []), plan)
        src_name, dates_name = f"predict-source-{token}", f"predict-dates-{token}"
        run_name = f"predict-windows-{token}"
        cache = PREDICT_BLOCK_CACHE if small_area else None  # a small area: all its file blocks fit
        run_layer = {(run_name, i, j): (read_and_predict_chunk, src_name, dates_name, plan, i, j, cache)
                     for i in range(ny) for j in range(nx)}
        layers = {src_name: MaterializedLayer({src_name: source}),
                  dates_name: MaterializedLayer({dates_name: list(dates or [])})}
        deps = {src_name: set(), dates_name: set(), run_name: {src_name, dates_name}}
    else:
        token = dask.base.tokenize(array, plan)
        depth = {0: 0, 1: 0, 2: plan.depth_y, 3: plan.depth_x}
        haloed = da.overlap.overlap(array, depth=depth, boundary="none", allow_rechunk=False) if any(
            plan.depth_y + plan.depth_x) else array
        run_name = f"predict-windows-{token}"
        run_layer = {(run_name, i, j): (predict_chunk, (haloed.name, 0, 0, i, j), plan, i, j)
                     for i in range(ny) for j in range(nx)}
        layers = dict(haloed.dask.layers)
        deps = dict(haloed.dask.dependencies)
        deps[run_name] = {haloed.name}
    part_name, name = f"predict-parts-{token}", f"predict-{token}"
    part_layer, blend_layer = {}, {}
    for i in range(ny):
        for j in range(nx):
            keys, sides = [], []
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    ii, jj = i + di, j + dj
                    if not (0 <= ii < ny and 0 <= jj < nx):
                        continue
                    # the neighbour's strip towards us exists only where its halo is not empty
                    if (di < 0 and plan.depth_y[1] == 0) or (di > 0 and plan.depth_y[0] == 0) or \
                            (dj < 0 and plan.depth_x[1] == 0) or (dj > 0 and plan.depth_x[0] == 0):
                        continue
                    part_key = (part_name, ii, jj, -di, -dj)
                    part_layer[part_key] = (_part, (run_name, ii, jj), (-di, -dj))
                    keys.append(part_key)
                    sides.append((di, dj))
            shape = (plan.ybounds[i + 1] - plan.ybounds[i], plan.xbounds[j + 1] - plan.xbounds[j])
            blend_layer[(name, 0, i, j)] = (blend_chunk, keys, sides, shape, (i, j))
    annotations: dict[str, Any] = {"resources": dict(resources)} if resources else {}
    after: dict[str, Any] | None = None
    if small_area:  # the model tasks with the most windows first (the queue then balances)
        annotations["priority"] = functools.partial(_owned_count, owned_counts(plan))
        after = {"priority": MODEL_PRIORITY_TOP + 1}
    layers[run_name] = MaterializedLayer(run_layer, annotations=annotations or None)
    layers[part_name] = MaterializedLayer(part_layer, annotations=after)
    deps[part_name] = {run_name}
    layers[name] = MaterializedLayer(blend_layer, annotations=after)
    deps[name] = {part_name}
    ychunks = tuple(np.diff(plan.ybounds).tolist())
    xchunks = tuple(np.diff(plan.xbounds).tolist())
    return da.Array(HighLevelGraph(layers, deps), name, chunks=((plan.spec.n_classes,), ychunks, xchunks),
                    dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))


def finish_tasks(probs: da.Array, pid_blocks: Any, n_classes: int, *, prob_store: str | None, device: str,
                 extras: Any = None, small_area: bool = False) -> list:
    """One :func:`finish_chunk` task per chunk of ``probs``
    (on a ``small_area``, above every model task, as the blends).

    The blocks are taken without graph optimization: dask's low-level fusion drops layer
    annotations, and the model layer's (its priorities; ``resources`` such as ``{"GPU": 1}``)
    must reach the scheduler.
    """
    ychunks, xchunks = probs.chunks[1], probs.chunks[2]
    yb, xb = bounds(ychunks), bounds(xchunks)
    blocks = probs.to_delayed(optimize_graph=False)
    with dask.annotate(**({"priority": MODEL_PRIORITY_TOP + 1} if small_area else {})):
        return [
            dask.delayed(finish_chunk, pure=True)(
                blocks[0, i, j], None if pid_blocks is None else pid_blocks[i, j],
                n_classes=n_classes, y0=yb[i], x0=xb[j], prob_store=prob_store, device_of=device, extras=extras,
                dask_key_name=f"finish-{probs.name}-{i}-{j}",
            )
            for i in range(len(ychunks)) for j in range(len(xchunks))
        ]
