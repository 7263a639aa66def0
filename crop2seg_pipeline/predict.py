"""crop2seg-predict: whole tiles through a batched model on overlapping windows, on Dask.

:func:`predict` reads top to bottom:

1. the weights folder -> :class:`~crop2seg_pipeline.models.spec.ModelSpec` (bands,
   normalization, reference date, window size, classes, SCL date rule), checked by loading the
   model once on the client; the items normalized and selected, the output grid, the block
   reader's source; the parcels, when given, read and reprojected;
2. dates without clear sky over the area are dropped as when the training store was built (an
   SCL-only pass: one task per chunk, no reflectance read);
3. the window graph (:mod:`crop2seg_pipeline.graph.windows`): one model task per chunk reads its
   haloed block itself and runs the windows it owns, a blend task per chunk; then one finishing
   task per chunk (class, confidence, histograms, per-parcel counts, optional probability write);
4. the client writes each chunk into tiled GeoTIFFs as it completes, then COGs, a quicklook, the
   parcel GeoPackage and a summary, each under a temporary name renamed into place when complete,
   and ``manifest.json`` listing them (:mod:`crop2seg_pipeline.manifest`: a prediction never
   replaces a file it did not write, and removes its previous outputs that this run does not
   write). The folder is held by a writer lock for the whole run.

:func:`predict_cube` is the lazy Python-API path over a user's cube (its blocks come through
``dask.array.overlap``); both give the same probabilities.

Peak memory of a worker thread is one chunk plus its halo (all dates and bands), its float64
sums and a batch of windows, plus the edge strips waiting for neighbours; the client holds at
most a chunk of class/confidence at a time, never the tile.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .blocks import CubeSource, cube_source
from .checks import check_bbox, check_dates, check_target_crs
from .errors import Crop2SegError, EmptySelectionError, MissingBandError
from .graph.build import PASS1_GROUP, chunk_windows, shared
from .graph.clearsky import clear_tasks
from .graph.model_cache import model_loads
from .graph.run import run_tasks
from .graph.windows import (
    BLEND_FLOOR,
    WindowPlan,
    finish_tasks,
    min_chunks,
    plan_windows,
    window_graph,
)
from .grid import grid_of_items
from .interrupts import pause_point
from .items import normalize_items, require_single_crs, select_items
from .kernels.chunking import axis_chunks, balanced_chunksize
from .kernels.dates import date_positions
from .kernels.windows import classes_of, confidence_of
from .locks import writer_lock
from . import storage
from .manifest import MANIFEST, OutputFolder
from .remote_folder import RemoteFolder
from .sharedfs import check_shared_filesystem, local_folder
from .models.spec import ModelSpec, read_model_spec
from .predict_outputs import PredictExtras

log = logging.getLogger(__name__)

__all__ = [
    "BLEND_FLOOR",
    "DateRangeWarning",
    "ModelSpec",
    "PredictPlan",
    "PredictSummary",
    "default_demo_weights",
    "model_loads",
    "output_names",
    "plan_prediction",
    "predict",
    "predict_cube",
    "read_model_spec",
]


class DateRangeWarning(UserWarning):
    """The cube has dates outside the range of dates the model was trained on."""


def default_demo_weights() -> Path:
    """Where the package ships the weights trained on the demo scene."""
    return Path(__file__).resolve().parent / "data" / "demo_weights"


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


# ----------------------------------------------------------------------------- checks and plans


def _check_settings(spec: ModelSpec, overlap: int, batch_size: int) -> None:
    P = spec.patch_size
    if not 0 <= overlap < P:
        raise Crop2SegError(f"--overlap must be in [0, {P - 1}] px (the window is {P} px), got {overlap}")
    if batch_size < 1:
        raise Crop2SegError(f"--batch-size must be >= 1, got {batch_size}")


def _check_dates(times: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The model's date positions of ``times``; warns when they leave the training date range."""
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


def _area_chunks(height: int, width: int, chunksize: int, patch_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chunks of the area (padded up to one window when smaller), none smaller than a window."""
    return axis_chunks(height, chunksize, patch_size), axis_chunks(width, chunksize, patch_size)


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


def _threads(client: Any) -> int:
    """Task threads of the cluster (this machine's CPUs without a client)."""
    if client is None:
        return max(1, os.cpu_count() or 1)
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001 - no scheduler info: assume one thread
        return 1


#: An area of at most this many pixels per task thread is "small": its model tasks get
#: priorities (the largest first) and may all run before a chunk is finished downstream, so its
#: float64 sums may be held at once (15 classes: 120 MB per thread at 1 Mpx).
SMALL_AREA_PX = 1_000_000


def work_chunksize(height: int, width: int, chunksize: int, patch_size: int, threads: int, overlap: int = 32) -> int:
    """The chunk side to use: ``chunksize``, or a smaller side when that lets the area's model
    tasks finish sooner on ``threads`` task threads (a small area cut so that every thread has
    work and the threads get equal shares of its windows; see
    :func:`~crop2seg_pipeline.kernels.chunking.balanced_chunksize`)."""
    return balanced_chunksize(height, width, chunksize, patch_size, max(patch_size - overlap, 1), threads)


# ----------------------------------------------------------------------------- the lazy API


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
        Dask resource annotation of the model tasks, e.g. ``{"GPU": 1}`` on GPU workers. Dask's
        low-level graph fusion drops annotations: compute with ``optimize_graph=False`` (e.g.
        ``dask.compute(ds, optimize_graph=False)``) for the annotation to reach the scheduler.

    Returns
    -------
    xr.Dataset
        ``class`` (y, x) uint8, ``confidence`` (y, x) uint8 = ``round(255 * max probability)``,
        with ``probabilities`` (class_id, y, x) float32 when asked (dimension ``class_id``, since
        ``class`` names the class map), on the cube's grid (``y``/``x`` pixel centers,
        ``spatial_ref``, attributes ``epsg``, ``transform``).
    """
    spec = weights_dir if isinstance(weights_dir, ModelSpec) else read_model_spec(weights_dir)
    _check_settings(spec, overlap, batch_size)
    have = [str(b) for b in cube["band"].values]
    lacking = [b for b in spec.bands if b not in have]
    if lacking:
        raise MissingBandError(
            f"the cube lacks band(s) {lacking} that the model in {spec.weights_dir} needs "
            f"(it has {have}); load it with bands={list(spec.bands)}"
        )
    if cube.sizes["time"] < 1:
        raise EmptySelectionError("the cube has no date to predict from")
    positions = _check_dates(cube["time"].values, spec)
    s2 = cube["s2"].sel(band=list(spec.bands)).data
    arr = s2 if isinstance(s2, da.Array) else da.from_array(s2, chunks=(-1, -1, 512, 512))
    P = spec.patch_size
    H, W = arr.shape[-2:]
    pad = (max(P - H, 0), max(P - W, 0))
    if any(pad):  # smaller than one window: mirror the area up to one window, crop afterwards
        arr = da.pad(arr, ((0, 0), (0, 0), (0, pad[0]), (0, pad[1])), mode="symmetric")
    ychunks, xchunks = min_chunks(arr.chunks[2], P), min_chunks(arr.chunks[3], P)
    arr = arr.rechunk({0: -1, 1: -1, 2: ychunks, 3: xchunks})
    plan = plan_windows(spec, positions, ychunks, xchunks, overlap=overlap, batch_size=batch_size, device=device)
    probs = window_graph(plan, array=arr, resources=resources)
    if any(pad):
        probs = probs[:, :H, :W]
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


def source_probabilities(
    src: CubeSource, dates: Sequence[int], spec: ModelSpec, *, chunksize: int, overlap: int, batch_size: int,
    device: str, resources: Mapping[str, Any] | None = None, small_area: bool = False,
) -> tuple[da.Array, WindowPlan]:
    """The lazy ``(class, y, x)`` probabilities of ``src``'s area on ``dates`` (indices), model
    tasks reading their own haloed blocks (the path of :func:`predict`), and the window plan
    (``small_area``: see :func:`~crop2seg_pipeline.graph.windows.window_graph`)."""
    _check_settings(spec, overlap, batch_size)
    times = np.array([src.times[d] for d in dates], dtype="datetime64[ns]")
    positions = _check_dates(times, spec)
    ychunks, xchunks = _area_chunks(*src.grid.shape, chunksize, spec.patch_size)
    plan = plan_windows(spec, positions, ychunks, xchunks, overlap=overlap, batch_size=batch_size, device=device)
    probs = window_graph(plan, source=src, dates=dates, resources=resources, small_area=small_area)
    H, W = src.grid.shape
    if probs.shape[1:] != (H, W):  # padded up to one window
        probs = probs[:, :H, :W]
    return probs, plan


# ----------------------------------------------------------------------------- the pipeline


def _clear_dates(src: CubeSource, spec: ModelSpec, chunksize: int, client: Any,
                 say: Callable[[str], None]) -> tuple[list[int], list[str]]:
    """Dates whose clear-sky share over the area is above ``spec.min_date_clear`` (as the store
    build): an SCL-only pass. Returns the kept date indices and the dropped ISO dates."""
    times = [t[:10] for t in src.times]
    if spec.min_date_clear is None:
        return list(range(len(times))), []
    # one SCL window per file block group (not per model chunk: sums are all this pass needs)
    windows = chunk_windows(*src.grid.shape, max(chunksize, PASS1_GROUP))
    results = run_tasks(clear_tasks(shared(src, "source"), windows, spec.unclear_scl), client,
                        label="date check", say=say, on_failure="Nothing was written; fix the cause and run again.")
    clear_px = sum(r[0] for r in results)
    share = clear_px / max(sum(r[1] for r in results), 1)
    keep = share > spec.min_date_clear
    if not keep.any():
        raise EmptySelectionError(
            f"no date has clear sky over the area (all {len(times)} dates have a clear share <= "
            f"{spec.min_date_clear}); widen --start/--end or the --bbox"
        )
    dropped = [t for t, k in zip(times, keep) if not k]
    if dropped:
        say(f"dropping {len(dropped)} dates without clear sky over the area: {', '.join(dropped)}")
    return np.flatnonzero(keep).tolist(), dropped


def _share(flags: Any) -> float | None:
    """Share of True among the non-null flags (None when all are null)."""
    f = flags.dropna()
    return float(f.astype(bool).mean()) if len(f) else None


#: Who holds a prediction folder's writer lock and is named in its manifest.
COMMAND = "crop2seg-predict"


@dataclass
class PredictPlan:
    """Step 1 of a prediction: model, inputs and output folder checked, nothing computed or
    written (see :func:`plan_prediction`)."""

    spec: ModelSpec
    grid: Any
    src: CubeSource
    parcels: Any  # GeoDataFrame or None
    folder: OutputFolder
    settings: dict[str, Any]
    chunksize: int
    overlap: int
    batch_size: int
    device: str
    probabilities: bool
    polygons: bool = False
    min_polygon_area: float = 5000.0
    remote: RemoteFolder | None = None  # --out is an object-store URL: folder is its staging folder


def output_names(parcels: bool, probabilities: bool, polygons: bool = False) -> list[str]:
    """The files a prediction writes into its folder (beside ``manifest.json``)."""
    names = ["classes.tif", "classes.tif.aux.xml", "confidence.tif", "quicklook.png", "summary.json"]
    if parcels:
        names.append("parcels.gpkg")
    if probabilities:
        names += ["probabilities.zarr", "probabilities.tif"]
    if polygons:
        names.append("polygons.gpkg")
    return names


def check_arguments(*, bbox: Sequence[float] | None = None, bbox_crs: Any = "EPSG:4326", start: Any = None,
                    end: Any = None, epsg: Any = None, antimeridian: bool = False, overlap: int = 32,
                    batch_size: int = 8, chunksize: int = 512, out_dir: Any = None,
                    min_polygon_area: float = 5000.0) -> None:
    """The checks of :func:`predict`'s arguments that read nothing (the command runs them first)."""
    check_dates(start, end)
    check_bbox(bbox, bbox_crs, antimeridian=antimeridian)
    check_target_crs(epsg)
    if overlap < 0:
        raise Crop2SegError(f"--overlap must be >= 0, got {overlap}")
    if batch_size < 1:
        raise Crop2SegError(f"--batch-size must be >= 1, got {batch_size}")
    if chunksize < 16:
        raise Crop2SegError(f"--chunksize must be at least 16 px, got {chunksize}")
    if not min_polygon_area >= 0:
        raise Crop2SegError(f"--min-polygon-area must be >= 0 m2, got {min_polygon_area}")
    if out_dir is not None and not storage.is_url(out_dir):
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise Crop2SegError(f"--out {out} exists and is not a folder")


def plan_prediction(
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
    epsg: int | None = None,
    antimeridian: bool = False,
    overlap: int = 32,
    batch_size: int = 8,
    device: str = "auto",
    chunksize: int = 512,
    probabilities: bool = False,
    polygons: bool = False,
    min_polygon_area: float = 5000.0,
) -> PredictPlan:
    """Read and check everything a prediction needs, compute and write nothing.

    The weights folder is loaded once (a broken one fails here), the items normalized and
    selected, the output grid and the reader's source planned, the parcels read and reprojected,
    and the output folder checked: a file there under one of the output names that this package
    did not write (see :mod:`crop2seg_pipeline.manifest`) refuses the run. The command calls it
    before it starts a cluster.
    """
    from .mapping import CropMapping
    from .parcels import read_parcels

    check_arguments(bbox=bbox, bbox_crs=bbox_crs, start=start, end=end, epsg=epsg, antimeridian=antimeridian,
                    overlap=overlap, batch_size=batch_size, chunksize=chunksize, out_dir=out_dir,
                    min_polygon_area=min_polygon_area)
    if storage.is_url(weights_dir):  # downloaded once into the local cache
        weights_dir = storage.cached_copy(str(weights_dir))
    spec = read_model_spec(weights_dir)
    selected = select_items(normalize_items(items, bands=spec.bands), bbox=bbox, bbox_crs=bbox_crs, start=start,
                            end=end, antimeridian=antimeridian)
    _check_settings(spec, overlap, batch_size)
    grid = grid_of_items(selected, require_single_crs(selected, check_target_crs(epsg)), 10.0, bbox, bbox_crs)
    src = cube_source(selected, grid, spec.bands, spec.resampling_20m)
    gdf = None
    if parcels is not None:
        gdf, _ = read_parcels(
            parcels, id_column=id_column, crop_column=crop_column, layer=layer,
            mapping=CropMapping.read(mapping), target_crs=grid.epsg, bbox=grid.bounds,
        )
    settings = {"weights": spec.weights_dir, "overlap": overlap, "batch_size": batch_size, "device": device,
                "chunksize": chunksize, "patch_size": spec.patch_size, "bbox": list(bbox) if bbox else None,
                "bbox_crs": str(bbox_crs), "epsg": grid.epsg, "start": None if start is None else str(start),
                "end": None if end is None else str(end), "parcels": None if parcels is None else str(parcels),
                "probabilities": bool(probabilities), "polygons": bool(polygons), "min_polygon_area": min_polygon_area}
    names = output_names(gdf is not None, probabilities, polygons)
    remote = None
    if storage.is_url(out_dir):  # made in a local staging folder, uploaded when complete
        remote = RemoteFolder(str(out_dir))
        remote.check(names)
    folder = OutputFolder(remote.staging if remote else out_dir, COMMAND, settings)
    folder.plan(names)
    return PredictPlan(spec, grid, src, gdf, folder, settings, chunksize, overlap, batch_size, device, probabilities,
                       polygons, min_polygon_area, remote)


def predict(
    items: Any = None,
    weights_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    client: Any = None,
    progress: Callable[[str], None] | None = None,
    plan: PredictPlan | None = None,
    **options: Any,
) -> PredictSummary:
    """Predict crop classes over the area of ``items`` and write the outputs to ``out_dir``.

    Parameters
    ----------
    items
        STAC items (path/URL of an ItemCollection, or anything
        :func:`~crop2seg_pipeline.items.read_items` accepts).
    weights_dir
        Weights folder (``weights.pt`` + ``model.json``).
    out_dir
        Output folder (created): ``classes.tif`` (+ ``classes.tif.aux.xml``, the class names),
        ``confidence.tif``, ``quicklook.png``, ``summary.json``; ``parcels.gpkg`` with
        ``parcels``; ``probabilities.zarr`` (float32) and ``probabilities.tif`` (uint8 COG,
        probability x 255) with ``probabilities``; ``polygons.gpkg`` with ``polygons``;
        ``manifest.json`` lists them. Other files in the folder are never touched; a file under one of these names that
        this package did not write refuses the run (:mod:`crop2seg_pipeline.manifest`).
    client
        A ``distributed.Client``; None runs on the current default Dask scheduler.
    progress
        Callable receiving progress lines (default: logging).
    plan
        The :func:`plan_prediction` of these arguments when the caller made it already (the
        command does, before it starts the cluster); ``items``, ``weights_dir``, ``out_dir``
        and ``options`` are then not given.
    **options
        The keyword arguments of :func:`plan_prediction`: ``parcels``, ``mapping``,
        ``id_column``, ``crop_column``, ``layer`` (the LPIS parcels to score and how to read
        them), ``bbox``, ``bbox_crs``, ``start``, ``end`` (area and dates), ``epsg`` (CRS of
        the output grid when the items are in several), ``antimeridian``, ``overlap``,
        ``batch_size``, ``device`` (see :func:`predict_cube`), ``chunksize`` (the largest side
        of a chunk: the unit of work and of worker memory; small areas are cut finer so that
        every worker thread has work), ``probabilities``, ``polygons``, ``min_polygon_area``
        (polygons of the class map, Background dropped, area above it in m2: see
        :mod:`crop2seg_pipeline.predict_outputs`).

    Raises
    ------
    LockHeld
        Another live prediction writes ``out_dir``.
    OutputConflict
        ``out_dir`` holds files under the output names that this package did not write.
    """
    t_start = time.perf_counter()
    say = progress or log.info
    if plan is None:
        if items is None or weights_dir is None or out_dir is None:
            raise Crop2SegError("predict needs items, weights_dir and out_dir (or plan=)")
        check_arguments(out_dir=out_dir)
        target = out_dir
    else:
        target = plan.remote.url if plan.remote else plan.folder.folder
    with writer_lock(target, COMMAND, "prediction folder"):
        if plan is None:
            plan = plan_prediction(items, weights_dir, out_dir, **options)
        if plan.remote is None:
            return _predict(plan, client, say, t_start)
        try:
            summary = _predict(plan, client, say, t_start)
            say(f"uploading the outputs to {storage.redact(plan.remote.url)}")
            plan.remote.publish(plan.folder)
            return summary
        finally:
            plan.remote.cleanup()


def _predict(plan: PredictPlan, client: Any, say: Callable[[str], None], t_start: float) -> PredictSummary:
    from .graph.labels import rasterize_labels
    from .outputs import (
        TiledRaster,
        create_probability_store,
        finalize_probability_store,
        parcel_table,
        write_quicklook,
    )

    spec, grid, src, gdf, folder = plan.spec, plan.grid, plan.src, plan.parcels, plan.folder
    out = folder.folder
    shown = plan.remote.url if plan.remote else str(out)  # where the outputs end up
    chunksize, overlap, batch_size, device = plan.chunksize, plan.overlap, plan.batch_size, plan.device
    nothing = f"Nothing final was written to {out}; fix the cause and run again."
    # the workers read the weights and the assets (and write the probability store): they must see these paths
    check_shared_filesystem(client, spec.weights_dir, "--weights")
    check_shared_filesystem(client, local_folder(r.href for refs in src.refs for r in refs.values()), "--items")
    if plan.probabilities:
        check_shared_filesystem(client, out, "--out")

    # 2. dates with clear sky (SCL only); chunks small enough that every worker thread has work
    threads = _threads(client)
    chunksize = work_chunksize(grid.height, grid.width, chunksize, spec.patch_size, threads, overlap)
    dates, dropped = _clear_dates(src, spec, chunksize, client, say)
    say(f"predicting {grid.height} x {grid.width} px, {len(dates)} dates with {spec.weights_dir} "
        f"({spec.patch_size} px windows, overlap {overlap}, batch {batch_size}, device {device})")

    # 3. the window graph, then one finishing task per chunk
    # a small area: the largest model tasks first (the threads finish together), all its file blocks cached
    small_area = grid.height * grid.width <= SMALL_AREA_PX * threads
    probs, _ = source_probabilities(src, dates, spec, chunksize=chunksize, overlap=overlap, batch_size=batch_size,
                                    device=device, resources=_gpu_resources(client, device), small_area=small_area)
    ychunks, xchunks = probs.chunks[1], probs.chunks[2]
    pid_blocks = None
    if gdf is not None:
        pid = rasterize_labels(gdf, grid, chunks=chunksize)["parcel_id"].data.rechunk((ychunks, xchunks))
        pid_blocks = pid.to_delayed()
    prob_store = None
    if plan.probabilities:
        prob_store = str(folder.temp("probabilities.zarr"))
        create_probability_store(prob_store, grid, spec.class_names, (ychunks, xchunks))
    extras = PredictExtras(folder, grid, spec.class_names, probabilities=plan.probabilities, polygons=plan.polygons,
                           parcels=gdf is not None, min_polygon_area=plan.min_polygon_area)
    tasks = finish_tasks(probs, pid_blocks, spec.n_classes, prob_store=prob_store, device=device,
                         extras=extras.options if extras.active else None, small_area=small_area)

    # 4. run; the client writes each chunk as it arrives (into temporary files: nothing final yet)
    hist = np.zeros(spec.n_classes, np.int64)
    ph: list[tuple] = []
    pc: list[tuple] = []
    devices: set[str] = set()
    cls_tmp, conf_tmp = folder.temp("classes.tif"), folder.temp("confidence.tif")
    try:
        with TiledRaster(cls_tmp, grid, kind="classes", class_names=spec.class_names) as cls_out, \
                TiledRaster(conf_tmp, grid, kind="confidence") as conf_out, extras:

            def on_result(_: int, r: dict) -> None:
                cls_out.write(r["class"], r["y0"], r["x0"])
                conf_out.write(r["confidence"], r["y0"], r["x0"])
                hist[:] += r["hist"]
                devices.add(r["device"])
                if "parcel_hist" in r:
                    ph.append(r["parcel_hist"])
                    pc.append(r["parcel_conf"])
                extras.on_result(r)

            run_tasks(tasks, client, label="predict", say=say, on_result=on_result, on_failure=nothing)
        extras.finish_polygons(
            lambda ts, cb: run_tasks(ts, client, label="polygons", say=say, on_result=lambda _, r: cb(r),
                                     unit="classes", on_failure=nothing),
            say)
        if prob_store:
            finalize_probability_store(prob_store)

        # 5. parcels, quicklook, summary: written under temporary names, then renamed into place
        area = {name: round(float(n) * grid.resolution**2 / 1e4, 4) for name, n in zip(spec.class_names, hist)}
        parcel_summary = None
        table = None
        if gdf is not None:
            table = extras.parcel_columns(parcel_table(gdf, ph, pc, spec.class_names, ignore_index=spec.ignore_index),
                                          ph, spec.ignore_index)
            compared = table["agreement"].dropna()
            parcel_summary = {
                "n_parcels": len(table),
                "n_with_pixels": int((table["n_pixels"] > 0).sum()),
                "n_compared": len(compared),
                "agreement_share": float(compared.astype(bool).mean()) if len(compared) else None,
                "homogenized_agreement_share": _share(table["homogenized_agreement"]),
                "soft_agreement_share": _share(table["soft_agreement"]),
            }
        ql_tmp = folder.temp("quicklook.png")
        write_quicklook(cls_tmp, ql_tmp, spec.class_names, hist,
                        title=f"crop classes, {grid.height} x {grid.width} px, EPSG:{grid.epsg}")
        pause_point("finalize")
        folder.commit("classes.tif", cls_tmp)
        folder.commit("classes.tif.aux.xml", Path(str(cls_tmp) + ".aux.xml"))
        folder.commit("confidence.tif", conf_tmp)
        folder.commit("quicklook.png", ql_tmp)
        if table is not None:
            with folder.output("parcels.gpkg") as tmp:
                table.to_file(tmp, layer="parcels", driver="GPKG")
        if prob_store:
            folder.commit("probabilities.zarr", prob_store)
        extras.commit()
    finally:
        folder.discard_temps()  # what was not renamed into place (an error, an interrupt)
    files = {"classes": storage.join(shown, "classes.tif"), "confidence": storage.join(shown, "confidence.tif"),
             "quicklook": storage.join(shown, "quicklook.png")}
    if table is not None:
        files["parcels"] = storage.join(shown, "parcels.gpkg")
    if prob_store:
        files["probabilities"] = storage.join(shown, "probabilities.zarr")
    files.update({k: storage.join(shown, Path(v).name) for k, v in extras.files.items()})
    seconds = time.perf_counter() - t_start
    mpx = grid.height * grid.width / 1e6
    files["summary"] = storage.join(shown, "summary.json")
    summary = PredictSummary(
        out_dir=shown, files=files, shape=grid.shape, epsg=grid.epsg, n_dates=len(dates),
        dates_dropped=dropped, n_chunks=len(tasks), device=sorted(devices), area_ha=area,
        parcels=parcel_summary, seconds=round(seconds, 3), megapixels=round(mpx, 4),
        throughput_mpx_s=round(mpx / seconds, 4) if seconds > 0 else math.nan,
        dashboard=getattr(client, "dashboard_link", None), settings={**plan.settings, "chunksize": chunksize},
    )
    with folder.output("summary.json") as tmp:
        tmp.write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    folder.finish()
    files["manifest"] = storage.join(shown, MANIFEST)
    return summary
