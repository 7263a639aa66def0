"""crop2seg-predict: the lazy cube of a whole tile -> a batched U-TAE on overlapping windows.

:func:`predict` reads top to bottom:

1. the weights folder's ``model.json`` -> :class:`ModelSpec` (bands, normalization, reference
   date, window size, classes, SCL date rule), validated on the client by loading the model once;
2. the lazy cube of the items with exactly the model's bands, in its order; dates without clear
   sky over the area are dropped as when the training store was built;
3. :func:`predict_cube`: two task layers over spatial chunks (all dates and bands per chunk).
   Windows of ``patch_size`` px are planned once on the *global* grid at a stride of
   ``patch_size - overlap`` (the last one shifted back to the edge), so results do not depend on
   the chunking. Each window is *owned* by the one chunk holding its origin and runs exactly
   once: a chunk's model task gets its block with a halo of less than ``patch_size`` below and
   to the right (the reach of the windows it owns). :func:`predict` has the task read that
   haloed block from the items itself: no separate read tasks that would run ahead of the slow
   model tasks and pile blocks up in worker memory; on chunks aligned with the files' tiles the
   read touches 2 x 2 tiles. :func:`predict_cube` on a user's lazy cube takes it from
   ``dask.array.overlap``. The task loads the model from the weights path through a per-process
   cache (never pickled into the graph; torch threads = the worker's threads), runs its windows
   in batches and adds their edge-weighted softmax probabilities into float64 sums over the
   haloed block, returned as 3 x 3 parts (core, edge strips, corners). A cheap blend task per
   chunk adds its core sums and the strips its neighbours spill into it and divides by the
   weight sum. float64 sums make the float32 result independent of the order of the additions,
   hence of the chunking;
4. one finishing task per chunk (class, confidence, class histogram, per-parcel histograms with
   the parcel-id raster of the same chunk, optional probability region write); the client
   writes each chunk into tiled GeoTIFFs as it completes, then COGs, a quicklook, the parcel
   GeoPackage and a summary.

Peak memory of a worker thread (with :func:`predict`) is one chunk plus its halo (all dates and
bands), its float64 sums and a batch of windows, plus the edge strips waiting for neighbours; the
client holds at most a chunk of class/confidence at a time, never the tile.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from .cube import clear_sky, cube_grid_of, load_cube
from .errors import Crop2SegError, EmptySelectionError, MissingBandError
from .grid import Grid
from .items import normalize_items, select_items
from .kernels.dates import position_range
from .kernels.windows import (
    accumulate_windows,
    blend_weights,
    classes_of,
    confidence_of,
    date_positions,
    owned_halo,
    owned_windows,
    plan_axis,
)
from .malloc import tune_malloc_for_torch
from .nomenclature import BANDS, CLASS_NAMES, DEFAULT_UNCLEAR_SCL, NOT_CLASSIFIED

log = logging.getLogger(__name__)

__all__ = [
    "ModelSpec",
    "PredictSummary",
    "DateRangeWarning",
    "read_model_spec",
    "predict_cube",
    "predict",
    "model_loads",
    "default_demo_weights",
]

#: Blend weight at a window's very edge (a floor > 0: every covered pixel gets a weight).
BLEND_FLOOR = 0.05


class DateRangeWarning(UserWarning):
    """The cube has dates outside the range of dates the model was trained on."""


def default_demo_weights() -> Path:
    """Where the package ships the weights trained on the demo scene."""
    return Path(__file__).resolve().parent / "data" / "demo_weights"


# ----------------------------------------------------------------------------- model spec


@dataclass(frozen=True)
class ModelSpec:
    """What inference needs from a weights folder's ``model.json`` (small; safe to ship in graphs).

    Attributes
    ----------
    weights_dir : absolute path of the weights folder (workers load the model from it)
    fingerprint : (size, mtime_ns) of ``weights.pt`` and ``model.json``; part of the cache key
    bands : input bands, in the model's order (``model.json["bands"]``)
    mean, std : per-band normalization (``model.json["normalization"]``)
    reference_date : ISO date; positions are days since it (``model.json["reference_date"]``)
    date_encoding : how dates become positions (``model.json["date_encoding"]``, default ``days``;
        :func:`crop2seg_pipeline.kernels.dates.date_positions`)
    patch_size : window side the model was trained on (``model.json["patch_size"]``, default 128)
    class_names : output classes (``model.json["class_names"]``)
    ignore_index : class never predicted (``model.json["ignore_index"]``, default 14)
    downscale : the model's spatial size divisor
    date_range : (first, last) ISO training dates (``model.json["training"]["date_range"]``) or None
    min_date_clear : dates whose clear-sky share over the area is at most this are dropped
        (``model.json["preprocessing"]["min_date_clear"]``, default 0.0 as the store build)
    unclear_scl : SCL classes that are not clear sky (``model.json["preprocessing"]["unclear_scl"]``)
    """

    weights_dir: str
    fingerprint: tuple
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    reference_date: str
    patch_size: int
    class_names: tuple[str, ...]
    ignore_index: int | None
    downscale: int
    date_range: tuple[str, str] | None = None
    min_date_clear: float | None = 0.0
    unclear_scl: tuple[int, ...] = DEFAULT_UNCLEAR_SCL
    date_encoding: str = "days"

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def position_range(self) -> tuple[float, float] | None:
        if self.date_range is None:
            return None
        return position_range(self.date_range[0], self.date_range[1], self.reference_date, self.date_encoding)


def _fingerprint(folder: Path) -> tuple:
    out = []
    for name in ("weights.pt", "model.json"):
        st = (folder / name).stat()
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def read_model_spec(weights_dir: str | os.PathLike) -> ModelSpec:
    """Read and validate a weights folder for inference (loads the model once, on CPU).

    Raises
    ------
    CheckpointError
        Missing/corrupt folder or files, keys inference needs absent from ``model.json``, bands
        that are not Sentinel-2 bands of this pipeline, classes other than the nomenclature's,
        a patch size the model cannot take.
    """
    from .models import CheckpointError, load_model

    folder = Path(weights_dir).expanduser().resolve()
    _, meta = load_model(folder, "cpu", expect_classes=list(CLASS_NAMES))
    model_json = folder / "model.json"
    norm = meta.get("normalization") or {}
    missing = [k for k, v in (("bands", meta.get("bands")), ("normalization.mean", norm.get("mean")),
                              ("normalization.std", norm.get("std")),
                              ("reference_date", meta.get("reference_date"))) if v is None]
    if missing:
        raise CheckpointError(
            f"{model_json} lacks {', '.join(missing)}: inference must feed the model exactly as it "
            "was trained; re-save the weights with crop2seg-train (or add these keys)"
        )
    bands = [str(b) for b in meta["bands"]]
    unknown = [b for b in bands if b not in BANDS]
    if unknown:
        raise CheckpointError(
            f"{model_json}: the model was trained on band(s) {unknown}, which this pipeline does "
            f"not read (it reads {list(BANDS)}); use weights trained on Sentinel-2 bands"
        )
    mean = [float(v) for v in norm["mean"]]
    std = [float(v) for v in norm["std"]]
    if len(mean) != len(bands) or len(std) != len(bands):
        raise CheckpointError(
            f"{model_json}: normalization has {len(mean)} means / {len(std)} stds for {len(bands)} bands"
        )
    try:
        ref = dt.date.fromisoformat(str(meta["reference_date"])[:10]).isoformat()
    except ValueError:
        raise CheckpointError(f"{model_json}: reference_date {meta['reference_date']!r} is not an ISO date") from None
    downscale = int(meta["config"].get("str_conv_s", 2)) ** (len(meta["config"].get("encoder_widths", [0] * 4)) - 1)
    patch = int(meta.get("patch_size", 128))
    if patch < downscale or patch % downscale:
        raise CheckpointError(f"{model_json}: patch_size {patch} is not a multiple of the model's {downscale}")
    training = meta.get("training") or {}
    rng = training.get("date_range", meta.get("date_range"))
    date_range = None
    if rng is not None:
        try:
            date_range = tuple(dt.date.fromisoformat(str(d)[:10]).isoformat() for d in rng)
        except (TypeError, ValueError):
            raise CheckpointError(f"{model_json}: training.date_range {rng!r} is not [first, last] ISO dates") from None
        if len(date_range) != 2:
            raise CheckpointError(f"{model_json}: training.date_range must be [first, last], got {rng!r}")
    pre = meta.get("preprocessing") or {}
    ignore = meta.get("ignore_index", NOT_CLASSIFIED)
    return ModelSpec(
        weights_dir=str(folder),
        fingerprint=_fingerprint(folder),
        bands=tuple(bands),
        mean=tuple(mean),
        std=tuple(std),
        reference_date=ref,
        patch_size=patch,
        class_names=tuple(meta.get("class_names") or CLASS_NAMES),
        ignore_index=None if ignore is None else int(ignore),
        downscale=downscale,
        date_range=date_range,  # type: ignore[arg-type]
        min_date_clear=pre.get("min_date_clear", 0.0),
        unclear_scl=tuple(int(v) for v in pre.get("unclear_scl", DEFAULT_UNCLEAR_SCL)),
        date_encoding=str(meta.get("date_encoding", "days")),
    )


# ----------------------------------------------------------------------------- worker-side model cache

_CACHE_LOCK = threading.Lock()
_MODELS: dict[tuple, Any] = {}
_LOADS: Counter = Counter()


def model_loads() -> dict[str, int]:
    """How many times this process loaded each model (weights folder, device): a diagnostic."""
    return {f"{k[0]}|{k[1]}": v for k, v in _LOADS.items()}


def _resolve_device(device: str):
    import torch

    name = str(device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Crop2SegError(
            f"device {device!r} asked but CUDA is not available to PyTorch {torch.__version__} on this "
            "worker; use --device cpu or auto, or GPU workers"
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise Crop2SegError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def _cached_model(spec: ModelSpec, device: str):
    """The model of ``spec`` on this process, loaded at most once per (folder, device)."""
    import torch

    from .models import load_model

    dev = _resolve_device(device)
    key = (spec.weights_dir, str(dev), spec.fingerprint)
    model = _MODELS.get(key)
    if model is not None:
        return model, dev
    with _CACHE_LOCK:
        model = _MODELS.get(key)
        if model is None:
            threads = _worker_threads()
            if threads and torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            tune_malloc_for_torch()  # large tensors from the heap, not fresh mmaps (see .malloc)
            model, _ = load_model(spec.weights_dir, dev)
            for old in [k for k in _MODELS if k[:2] == key[:2]]:  # weights replaced since
                del _MODELS[old]
            _MODELS[key] = model
            _LOADS[key] += 1
    return model, dev


# ----------------------------------------------------------------------------- the lazy graph


@dataclass(frozen=True)
class _Plan:
    """Everything one block task needs besides its data (small: a few arrays of origins)."""

    spec: ModelSpec
    device: str
    positions: np.ndarray
    rows: np.ndarray  # global window origins along y
    cols: np.ndarray
    ybounds: tuple[int, ...]  # block edges along y
    xbounds: tuple[int, ...]
    depth_y: tuple[int, int]
    depth_x: tuple[int, int]
    overlap: int
    batch_size: int

    def __dask_tokenize__(self):
        return (
            "crop2seg-predict-plan", self.spec, self.device, self.positions.tobytes(), self.rows.tobytes(),
            self.cols.tobytes(), self.ybounds, self.xbounds, self.depth_y, self.depth_x, self.overlap,
            self.batch_size,
        )


def _block_extent(plan: _Plan, i: int, j: int) -> tuple[int, int, int, int, int, int, int, int]:
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


def _predict_chunk(block: np.ndarray, plan: _Plan, i: int, j: int) -> dict:
    """Dask task: run the windows *owned* by chunk (i, j) (their origin lies in its core) once.

    Returns the weighted probability sums and weight sums (float64, so that the order in which
    the sums of neighbouring chunks are added does not change the float32 result) split in the
    3 x 3 parts of the haloed block: ``{(dy, dx): (acc, wsum)}``, ``(0, 0)`` being the core and
    e.g. ``(1, 0)`` the strip spilling into the chunk below. Only non-empty parts are returned.
    """
    spec = plan.spec
    P = spec.patch_size
    ya, yb, xa, xb, ey0, ey1, ex0, ex1 = _block_extent(plan, i, j)
    if block.shape[-2:] != (ey1 - ey0, ex1 - ex0):  # dask's overlap must match our bookkeeping
        raise RuntimeError(f"block {(i, j)}: got {block.shape[-2:]}, expected {(ey1 - ey0, ex1 - ex0)}")
    rows = owned_windows(plan.rows, P, plan.ybounds, i) - ey0
    cols = owned_windows(plan.cols, P, plan.xbounds, j) - ex0
    K = spec.n_classes
    acc = np.zeros((K, ey1 - ey0, ex1 - ex0), dtype=np.float64)
    wsum = np.zeros((ey1 - ey0, ex1 - ex0), dtype=np.float64)
    model, dev = _cached_model(spec, plan.device)
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


@dataclass(frozen=True)
class _Source:
    """Where a model task reads its haloed block itself, instead of taking it from read tasks.

    With the cube read in separate tasks, Dask runs the cheap reads far ahead of the slow model
    tasks and every worker fills with blocks waiting for the model (peak memory grew with the
    area). Reading inside the model task bounds a worker to one haloed block per thread.

    Attributes
    ----------
    grid : the cube's grid (unpadded)
    times : the dates kept (ISO datetimes, ``datetime64[ns]`` strings), in the cube's order
    bands : bands in the model's order
    resampling_20m : as the cube was built
    """

    grid: Grid
    times: tuple[str, ...]
    bands: tuple[str, ...]
    resampling_20m: str


class _Items:
    """The normalized STAC items as one graph literal (one key shared by all tasks, not traversed)."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __dask_tokenize__(self):
        return ("crop2seg-items", json.dumps(self.items, sort_keys=True, default=str))


def _read_block(items: _Items, src: _Source, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """The (time, band, y, x) uint16 cube of rows [y0, y1) x cols [x0, x1) of the (padded) area,
    read synchronously in the calling task; equal to the same slice of the lazy cube."""
    H, W = src.grid.shape
    ry1, rx1 = min(y1, H), min(x1, W)
    if (ry1 < y1 and y0 != 0) or (rx1 < x1 and x0 != 0):  # padding only ever spans one chunk
        raise RuntimeError(f"padded block must start at 0, got rows {y0}:{y1}, cols {x0}:{x1} of {H} x {W}")
    # widen to even offsets so that 20 m bands are read at 20 m (as for the whole cube), then crop
    ay0, ax0 = y0 - y0 % 2, x0 - x0 % 2
    ay1, ax1 = min(ry1 + ry1 % 2, H), min(rx1 + rx1 % 2, W)
    window = src.grid.window(ay0, ax0, ay1 - ay0, ax1 - ax0)
    cube = load_cube(
        items.items, bands=src.bands, grid=window, chunksize=(window.height, window.width),
        resampling_20m=src.resampling_20m, check_files=False,
    ).sel(time=np.array(src.times, dtype="datetime64[ns]"))
    block = cube["s2"].data.compute(scheduler="sync")[:, :, y0 - ay0 : ry1 - ay0, x0 - ax0 : rx1 - ax0]
    if ry1 < y1 or rx1 < x1:
        block = np.pad(block, ((0, 0), (0, 0), (0, y1 - ry1), (0, x1 - rx1)), mode="symmetric")
    return block


def _read_and_predict_chunk(items: _Items, src: _Source, plan: _Plan, i: int, j: int) -> dict:
    """Dask task: read chunk (i, j) with its halo, then :func:`_predict_chunk` (one block in memory)."""
    _, _, _, _, ey0, ey1, ex0, ex1 = _block_extent(plan, i, j)
    return _predict_chunk(_read_block(items, src, ey0, ey1, ex0, ex1), plan, i, j)


def _part(parts: dict, side: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Dask task (runs where the model task ran): one part, so that only it travels."""
    return parts[side]


def _blend_chunk(parts: list, sides: list, shape: tuple[int, int], block_id: tuple[int, int]) -> np.ndarray:
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


def _min_chunks(chunks: Sequence[int], minimum: int) -> tuple[int, ...]:
    """Merge chunks smaller than ``minimum`` into a neighbour (so the halo fits in one neighbour)."""
    out: list[int] = []
    for c in chunks:
        if out and (c < minimum or out[-1] < minimum):
            out[-1] += c
        else:
            out.append(c)
    return tuple(out)


def _bounds(chunks: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in np.concatenate([[0], np.cumsum(chunks)]))


def _check_dates(times: np.ndarray, spec: ModelSpec) -> np.ndarray:
    positions = date_positions(times, spec.reference_date, spec.date_encoding)
    rng = spec.position_range()
    if rng is not None:
        outside = (positions < rng[0]) | (positions > rng[1])
        if outside.any():
            bad = [str(np.datetime64(t, "D")) for t in np.asarray(times)[outside]]
            msg = (
                f"{outside.sum()} of {len(positions)} dates ({', '.join(bad[:6])}{' ...' if len(bad) > 6 else ''}) "
                f"lie outside the dates the model was trained on ({spec.date_range[0]} .. {spec.date_range[1]}, "
                f"reference {spec.reference_date}); its predictions there are extrapolations. Restrict "
                "--start/--end to the training season or use weights trained on it."
            )
            log.warning(msg)
            warnings.warn(msg, DateRangeWarning, stacklevel=3)
    return positions


def _probabilities(
    cube: xr.Dataset, spec: ModelSpec, *, overlap: int, batch_size: int, device: str,
    resources: Mapping[str, Any] | None, items: list[dict] | None = None,
) -> da.Array:
    """The lazy ``(class, y, x)`` float32 probabilities of ``cube`` (the heart of the graph).

    With ``items`` (the normalized items :func:`load_cube` built ``cube`` from), the model tasks
    read their haloed blocks from the items themselves and the cube's own read tasks never run;
    otherwise they take them from the cube's dask array."""
    P = spec.patch_size
    if not 0 <= overlap < P:
        raise Crop2SegError(f"--overlap must be in [0, {P - 1}] px (the window is {P} px), got {overlap}")
    if batch_size < 1:
        raise Crop2SegError(f"--batch-size must be >= 1, got {batch_size}")
    have = [str(b) for b in cube["band"].values]
    lacking = [b for b in spec.bands if b not in have]
    if lacking:
        raise MissingBandError(
            f"the cube lacks band(s) {lacking} that the model in {spec.weights_dir} needs "
            f"(it has {have}); load it with bands={list(spec.bands)}"
        )
    if cube.sizes["time"] < 1:
        raise EmptySelectionError("the cube has no date to predict from")
    s2 = cube["s2"].sel(band=list(spec.bands))
    positions = _check_dates(cube["time"].values, spec)
    arr = s2.data if isinstance(s2.data, da.Array) else da.from_array(s2.data, chunks=(-1, -1, 512, 512))
    H, W = arr.shape[-2:]
    pad = (max(P - H, 0), max(P - W, 0))
    if any(pad):  # smaller than one window: mirror the area up to one window, crop afterwards
        arr = da.pad(arr, ((0, 0), (0, 0), (0, pad[0]), (0, pad[1])), mode="symmetric")
    ychunks = _min_chunks(arr.chunks[2], P)
    xchunks = _min_chunks(arr.chunks[3], P)
    arr = arr.rechunk({0: -1, 1: -1, 2: ychunks, 3: xchunks})
    stride = P - overlap
    rows = plan_axis(arr.shape[2], P, stride)
    cols = plan_axis(arr.shape[3], P, stride)
    yb, xb = _bounds(ychunks), _bounds(xchunks)
    plan = _Plan(
        spec=spec, device=device, positions=positions, rows=rows, cols=cols, ybounds=yb, xbounds=xb,
        depth_y=owned_halo(rows, P, yb), depth_x=owned_halo(cols, P, xb), overlap=overlap, batch_size=batch_size,
    )
    source = None
    if items is not None:
        source = _Source(
            grid=cube_grid_of(cube), times=tuple(str(t) for t in cube["time"].values.astype("datetime64[ns]")),
            bands=tuple(spec.bands), resampling_20m=str(cube.attrs.get("resampling_20m", "nearest")),
        )
    probs = _window_graph(arr, plan, resources, source, None if items is None else _Items(items))
    if any(pad):
        probs = probs[:, :H, :W]
    return probs


def _window_graph(
    arr: da.Array, plan: _Plan, resources: Mapping[str, Any] | None, source: _Source | None = None,
    items: _Items | None = None,
) -> da.Array:
    """Two layers over the haloed blocks of ``arr``: one model task per chunk running the windows
    it owns (:func:`_predict_chunk`, annotated with ``resources``), then one cheap task per chunk
    adding its core sums and the strips its (up to 8) neighbours spill into it (:func:`_blend_chunk`).

    Every planned window runs exactly once; a part task per (chunk, neighbour) picks the part of
    the sums facing that neighbour, so only the strips (less than ``patch_size`` wide, below and to
    the right) travel between workers. With a ``source``, the model tasks read their blocks themselves
    (:func:`_read_and_predict_chunk`) and ``arr`` only gives the shape and chunks.
    """
    ny, nx = len(plan.ybounds) - 1, len(plan.xbounds) - 1
    if source is not None:
        token = dask.base.tokenize(source, items, plan)
        items_name = f"predict-items-{token}"
        run_name = f"predict-windows-{token}"
        run_layer = {(run_name, i, j): (_read_and_predict_chunk, items_name, source, plan, i, j)
                     for i in range(ny) for j in range(nx)}
        layers = {items_name: MaterializedLayer({items_name: items})}
        deps = {items_name: set(), run_name: {items_name}}
    else:
        token = dask.base.tokenize(arr, plan)
        depth = {0: 0, 1: 0, 2: plan.depth_y, 3: plan.depth_x}
        haloed = da.overlap.overlap(arr, depth=depth, boundary="none", allow_rechunk=False) if any(
            plan.depth_y + plan.depth_x) else arr
        run_name = f"predict-windows-{token}"
        run_layer = {(run_name, i, j): (_predict_chunk, (haloed.name, 0, 0, i, j), plan, i, j)
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
            blend_layer[(name, 0, i, j)] = (_blend_chunk, keys, sides, shape, (i, j))
    layers[run_name] = MaterializedLayer(run_layer, annotations={"resources": dict(resources)} if resources else None)
    layers[part_name] = MaterializedLayer(part_layer)
    deps[part_name] = {run_name}
    layers[name] = MaterializedLayer(blend_layer)
    deps[name] = {part_name}
    K = plan.spec.n_classes
    return da.Array(HighLevelGraph(layers, deps), name, chunks=((K,), arr.chunks[2], arr.chunks[3]),
                    dtype=np.float32, meta=np.empty((0, 0, 0), np.float32))


def predict_cube(
    cube: xr.Dataset,
    weights_dir: str | os.PathLike | ModelSpec,
    *,
    overlap: int = 32,
    batch_size: int = 8,
    device: str = "auto",
    probabilities: bool = False,
    resources: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Lazy crop-type prediction of a cube (nothing runs until you compute or write it).

    Parameters
    ----------
    cube
        A :func:`~crop2seg_pipeline.cube.load_cube` dataset (``s2`` (time, band, y, x) uint16 with
        at least the model's bands; chunks with all dates and bands of a spatial block).
    weights_dir
        Weights folder (``weights.pt`` + ``model.json``) or a :class:`ModelSpec` of one.
    overlap
        Overlap of neighbouring windows in px (stride = ``patch_size - overlap``).
    batch_size
        Windows per forward pass.
    device
        ``auto`` (CUDA when the worker has it), ``cpu``, ``cuda`` or ``cuda:N``; resolved on the
        worker that runs the task.
    probabilities
        Also return the per-class probabilities.
    resources
        Dask resource annotation of the model tasks, e.g. ``{"GPU": 1}`` on GPU workers.

    Returns
    -------
    xr.Dataset
        ``class`` (y, x) uint8, ``confidence`` (y, x) uint8 = ``round(255 * max probability)``,
        with ``probabilities`` (class_id, y, x) float32 when asked (dimension ``class_id``, since
        ``class`` names the class map), on the cube's grid (``y``/``x`` pixel centers,
        ``spatial_ref``, attributes ``epsg``, ``transform``).
    """
    spec = weights_dir if isinstance(weights_dir, ModelSpec) else read_model_spec(weights_dir)
    probs = _probabilities(cube, spec, overlap=overlap, batch_size=batch_size, device=device, resources=resources)
    return _as_dataset(cube, spec, probs, probabilities)


def _as_dataset(cube: xr.Dataset, spec: ModelSpec, probs: da.Array, with_probs: bool) -> xr.Dataset:
    cls = da.map_blocks(classes_of, probs, drop_axis=0, dtype=np.uint8, meta=np.empty((0, 0), np.uint8))
    conf = da.map_blocks(confidence_of, probs, drop_axis=0, dtype=np.uint8, meta=np.empty((0, 0), np.uint8))
    coords = {"y": cube["y"], "x": cube["x"]}
    if "spatial_ref" in cube.coords:
        coords["spatial_ref"] = cube["spatial_ref"]
    data = {
        "class": (("y", "x"), cls, {"long_name": "predicted crop class id", "class_names": list(spec.class_names)}),
        "confidence": (("y", "x"), conf, {"long_name": "max class probability x 255", "scale_factor": 1 / 255}),
    }
    if with_probs:
        coords["class_id"] = ("class_id", np.arange(spec.n_classes))
        coords["class_name"] = ("class_id", list(spec.class_names))
        data["probabilities"] = (("class_id", "y", "x"), probs, {"long_name": "blended softmax probability"})
    attrs = {k: cube.attrs[k] for k in ("epsg", "transform", "resolution") if k in cube.attrs}
    attrs.update(weights=spec.weights_dir, reference_date=spec.reference_date, patch_size=spec.patch_size,
                 bands=list(spec.bands), dates=[str(np.datetime64(t, "D")) for t in cube["time"].values])
    return xr.Dataset(data, coords=coords, attrs=attrs)


# ----------------------------------------------------------------------------- the pipeline


@dataclass
class PredictSummary:
    """What a prediction did; printed by the CLI and saved as ``OUTDIR/summary.json``."""

    out_dir: str
    files: dict[str, str]
    shape: tuple[int, int]
    epsg: int
    n_dates: int
    dates_dropped: list[str]
    n_chunks: int
    device: list[str]
    area_ha: dict[str, float]
    parcels: dict[str, Any] | None
    seconds: float
    megapixels: float
    throughput_mpx_s: float
    dashboard: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format(self) -> str:
        lines = [
            f"prediction  : {self.out_dir}",
            f"area        : {self.shape[0]} x {self.shape[1]} px in EPSG:{self.epsg}, {self.n_dates} dates"
            + (f" ({len(self.dates_dropped)} without clear sky dropped)" if self.dates_dropped else ""),
            "files       : " + ", ".join(Path(p).name for p in self.files.values()),
            "class area  : " + ", ".join(f"{k} {v:.1f} ha" for k, v in self.area_ha.items() if v > 0),
        ]
        if self.parcels:
            p = self.parcels
            share = p.get("agreement_share")
            lines.append(
                f"parcels     : {p['n_parcels']} ({p['n_with_pixels']} with pixels), agreement "
                + ("n/a" if share is None else f"{100 * share:.1f}% of {p['n_compared']} compared")
            )
        lines.append(
            f"time        : {self.seconds:.1f} s, {self.megapixels:.2f} Mpx, {self.throughput_mpx_s:.3f} Mpx/s "
            f"on {', '.join(self.device) or '?'} ({self.n_chunks} chunks)"
        )
        return "\n".join(lines)


def _finish_chunk(
    probs: np.ndarray, parcel_id: np.ndarray | None, *, n_classes: int, y0: int, x0: int,
    prob_store: str | None, device_of: str,
) -> dict:
    """Dask task: class/confidence of a chunk, its class and per-parcel histograms, probability write."""
    cls = classes_of(probs)
    conf = confidence_of(probs)
    out: dict[str, Any] = {
        "y0": y0, "x0": x0, "class": cls, "confidence": conf,
        "hist": np.bincount(cls.ravel(), minlength=n_classes).astype(np.int64),
        "device": str(_resolve_device(device_of)),
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
        from .outputs import write_probability_block

        write_probability_block(prob_store, probs, y0, x0)
    return out


def _gpu_resources(client: Any, device: str) -> dict | None:
    """``{"GPU": 1}`` when the model may run on CUDA and the cluster's workers declare GPUs."""
    if client is None or not str(device).lower().startswith(("cuda", "auto")):
        return None
    try:
        workers = client.scheduler_info().get("workers", {})
    except Exception:  # noqa: BLE001 - no scheduler info: no annotation
        return None
    if any((w.get("resources") or {}).get("GPU") for w in workers.values()):
        return {"GPU": 1}
    return None


def _select_dates(cube: xr.Dataset, spec: ModelSpec, client: Any, say: Callable[[str], None]) -> tuple[xr.Dataset, list[str]]:
    """Drop dates whose clear-sky share over the area is at most ``spec.min_date_clear`` (as the store build)."""
    if spec.min_date_clear is None:
        return cube, []
    share = clear_sky(cube, spec.unclear_scl).mean(("y", "x")).data
    share = client.compute(share).result() if client is not None else share.compute()
    keep = np.asarray(share) > spec.min_date_clear
    times = [str(np.datetime64(t, "D")) for t in cube["time"].values]
    dropped = [t for t, k in zip(times, keep) if not k]
    if not keep.any():
        raise EmptySelectionError(
            f"no date has clear sky over the area (all {len(times)} dates have a clear share <= "
            f"{spec.min_date_clear}); widen --start/--end or the --bbox"
        )
    if dropped:
        say(f"dropping {len(dropped)} dates without clear sky over the area: {', '.join(dropped)}")
    return cube.isel(time=np.flatnonzero(keep)), dropped


def _run_chunks(tasks: list, client: Any, on_result: Callable[[dict], None], say: Callable[[str], None]) -> None:
    """Compute chunk tasks and hand each result to ``on_result`` as soon as it is done."""
    t0, last, n = time.perf_counter(), 0.0, len(tasks)
    if client is not None:
        from distributed import as_completed

        futures = client.compute(tasks)
        for k, fut in enumerate(as_completed(futures), 1):
            on_result(fut.result())
            fut.release()
            now = time.perf_counter()
            if now - last > 2 or k == n:
                last = now
                say(f"predict: {k}/{n} chunks ({100 * k / n:.0f}%), {now - t0:.1f} s")
        return
    step = max(1, os.cpu_count() or 1)
    for s in range(0, n, step):
        for res in dask.compute(*tasks[s : s + step]):
            on_result(res)
        say(f"predict: {min(s + step, n)}/{n} chunks, {time.perf_counter() - t0:.1f} s")


def predict(
    items: Any,
    weights_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    parcels: str | os.PathLike | None = None,
    mapping: str | os.PathLike | None = None,
    id_column: str | None = "ID_DPB",
    crop_column: str = "KOD_PLODINY",
    layer: str | None = None,
    bbox: Sequence[float] | None = None,
    bbox_crs: Any = "EPSG:4326",
    start: Any = None,
    end: Any = None,
    overlap: int = 32,
    batch_size: int = 8,
    device: str = "auto",
    chunksize: int = 512,
    probabilities: bool = False,
    client: Any = None,
    progress: Callable[[str], None] | None = None,
) -> PredictSummary:
    """Predict crop classes over the area of ``items`` and write the outputs to ``out_dir``.

    Parameters
    ----------
    items
        STAC items (path/URL of an ItemCollection, or anything :func:`load_cube` accepts).
    weights_dir
        Weights folder (``weights.pt`` + ``model.json``).
    out_dir
        Output folder (created): ``classes.tif``, ``confidence.tif``, ``quicklook.png``,
        ``summary.json``; ``parcels.gpkg`` with ``parcels``; ``probabilities.zarr`` with
        ``probabilities``.
    parcels, mapping, id_column, crop_column, layer
        Optional LPIS parcels and how to read them (see :func:`~crop2seg_pipeline.labels.read_parcels`).
    bbox, bbox_crs, start, end
        Optional area and date range.
    overlap, batch_size, device
        See :func:`predict_cube`.
    chunksize
        Spatial chunk (px) of the cube: the unit of work and of worker memory.
    probabilities
        Also write per-class probabilities to ``probabilities.zarr``.
    client
        A ``distributed.Client``; None runs on the current default Dask scheduler.
    progress
        Callable receiving progress lines (default: logging).
    """
    from .labels import CropMapping, read_parcels, rasterize_labels
    from .outputs import (
        TiledRaster,
        create_probability_store,
        finalize_probability_store,
        parcel_table,
        write_quicklook,
    )

    t_start = time.perf_counter()
    say = progress or log.info
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise Crop2SegError(f"--out {out} exists and is not a folder")

    # 1. model and inputs, all checked before anything is computed or written
    spec = read_model_spec(weights_dir)
    norm = normalize_items(items, bands=spec.bands)
    cube = load_cube(norm, bands=spec.bands, bbox=bbox, bbox_crs=bbox_crs, start=start, end=end, chunksize=chunksize)
    selected = select_items(norm, bbox=bbox, bbox_crs=bbox_crs, start=start, end=end)  # what the cube holds
    grid = cube_grid_of(cube)
    gdf = None
    if parcels is not None:
        gdf, _ = read_parcels(
            parcels, id_column=id_column, crop_column=crop_column, layer=layer,
            mapping=CropMapping.read(mapping), target_crs=grid.epsg, bbox=grid.bounds,
        )
    cube, dropped = _select_dates(cube, spec, client, say)
    say(f"predicting {grid.height} x {grid.width} px, {cube.sizes['time']} dates with {spec.weights_dir} "
        f"({spec.patch_size} px windows, overlap {overlap}, batch {batch_size}, device {device})")

    # 2. the lazy graph
    resources = _gpu_resources(client, device)
    probs = _probabilities(cube, spec, overlap=overlap, batch_size=batch_size, device=device, resources=resources,
                           items=selected)
    ychunks, xchunks = probs.chunks[1], probs.chunks[2]
    pid_blocks = None
    if gdf is not None:
        pid = rasterize_labels(gdf, grid, chunks=chunksize)["parcel_id"].data.rechunk((ychunks, xchunks))
        pid_blocks = pid.to_delayed()
    out.mkdir(parents=True, exist_ok=True)
    prob_store = None
    if probabilities:
        prob_store = str(out / "probabilities.zarr")
        create_probability_store(prob_store, grid, spec.class_names, (ychunks, xchunks), cube)
    yb, xb = _bounds(ychunks), _bounds(xchunks)
    blocks = probs.to_delayed()
    tasks = []
    for i in range(len(ychunks)):
        for j in range(len(xchunks)):
            tasks.append(dask.delayed(_finish_chunk, pure=True)(
                blocks[0, i, j], None if pid_blocks is None else pid_blocks[i, j],
                n_classes=spec.n_classes, y0=yb[i], x0=xb[j], prob_store=prob_store, device_of=device,
                dask_key_name=f"finish-{probs.name}-{i}-{j}",
            ))

    # 3. run; the client writes each chunk as it arrives
    hist = np.zeros(spec.n_classes, np.int64)
    ph: list[tuple] = []
    pc: list[tuple] = []
    devices: set[str] = set()
    with TiledRaster(out / "classes.tif", grid, kind="classes", class_names=spec.class_names) as cls_out, \
            TiledRaster(out / "confidence.tif", grid, kind="confidence") as conf_out:

        def on_result(r: dict) -> None:
            cls_out.write(r["class"], r["y0"], r["x0"])
            conf_out.write(r["confidence"], r["y0"], r["x0"])
            hist[:] += r["hist"]
            devices.add(r["device"])
            if "parcel_hist" in r:
                ph.append(r["parcel_hist"])
                pc.append(r["parcel_conf"])

        _run_chunks(tasks, client, on_result, say)
    files = {"classes": str(out / "classes.tif"), "confidence": str(out / "confidence.tif")}
    if prob_store:
        finalize_probability_store(prob_store)
        files["probabilities"] = prob_store

    # 4. parcels, quicklook, summary
    res2_ha = grid.resolution**2 / 1e4
    area = {name: round(float(n) * res2_ha, 4) for name, n in zip(spec.class_names, hist)}
    parcel_summary = None
    if gdf is not None:
        table = parcel_table(gdf, ph, pc, spec.class_names, ignore_index=spec.ignore_index)
        target = out / "parcels.gpkg"
        if target.exists():
            target.unlink()
        table.to_file(target, layer="parcels", driver="GPKG")
        files["parcels"] = str(target)
        compared = table["agreement"].dropna()
        parcel_summary = {
            "n_parcels": int(len(table)),
            "n_with_pixels": int((table["n_pixels"] > 0).sum()),
            "n_compared": int(len(compared)),
            "agreement_share": float(compared.astype(bool).mean()) if len(compared) else None,
        }
    files["quicklook"] = str(out / "quicklook.png")
    write_quicklook(out / "classes.tif", out / "quicklook.png", spec.class_names, hist,
                    title=f"crop classes, {grid.height} x {grid.width} px, EPSG:{grid.epsg}")
    seconds = time.perf_counter() - t_start
    mpx = grid.height * grid.width / 1e6
    summary = PredictSummary(
        out_dir=str(out), files=files, shape=grid.shape, epsg=grid.epsg, n_dates=int(cube.sizes["time"]),
        dates_dropped=dropped, n_chunks=len(tasks), device=sorted(devices), area_ha=area,
        parcels=parcel_summary, seconds=round(seconds, 3), megapixels=round(mpx, 4),
        throughput_mpx_s=round(mpx / seconds, 4) if seconds > 0 else math.nan,
        dashboard=getattr(client, "dashboard_link", None),
        settings={"weights": spec.weights_dir, "overlap": overlap, "batch_size": batch_size, "device": device,
                  "chunksize": chunksize, "patch_size": spec.patch_size, "bbox": list(bbox) if bbox else None,
                  "start": None if start is None else str(start), "end": None if end is None else str(end)},
    )
    files["summary"] = str(out / "summary.json")
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    return summary
