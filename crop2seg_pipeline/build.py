"""crop2seg-build-dataset: STAC items + LPIS parcels -> Zarr patch store, on a Dask cluster.

:func:`build_dataset` reads top to bottom:

1. normalize and select items, group them by tile; per tile: the output grid, the block
   reader's source, parcels read and reprojected to the tile's CRS and a lazy per-chunk label
   raster; the output path checked;
2. pass 1 (cheap: labels + SCL only) on the cluster: per-patch class cover, clear-sky and valid
   fractions -> patches to keep, dates to drop, splits by spatial blocks;
3. the store skeleton (coordinates, dates, clear fractions, fingerprint of the inputs);
4. pass 2 (heavy) on the cluster: each task reads one chunk, cuts its kept patches, writes them
   as whole Zarr chunks, computes its share of the normalization statistics and drops a resume
   marker; chunks that already have a marker are not scheduled again;
5. statistics combined from the markers, footprint table, store marked complete.

The task bodies are :mod:`crop2seg_pipeline.graph.build`; they read their windows with the
block reader (:mod:`crop2seg_pipeline.blocks`). Peak memory of a worker is bounded by one chunk
(``chunksize`` pixels square, all dates and bands), never by the tile size, the number of dates
or the number of tiles.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely.geometry

from . import __version__, storage
from .blocks import RESAMPLINGS, CubeSource, cube_source
from .errors import Crop2SegError, StoreError
from .graph.build import chunk_windows, pass1_tasks, pass2_chunk, shared
from .graph.labels import rasterize_labels
from .graph.run import run_tasks
from .grid import Grid, grid_of_items
from .items import normalize_items, require_single_crs, select_items
from .kernels.patches import Moments, assign_splits
from .mapping import CropMapping
from .nomenclature import BANDS, CLASS_NAMES, DEFAULT_UNCLEAR_SCL, N_CLASSES, NOT_CLASSIFIED
from .parcels import ParcelReport, read_parcels
from .checks import (check_bbox, check_dates, check_fraction, check_patch_size, check_percent, check_split,
                     check_target_crs)
from .interrupts import pause_point
from .locks import writer_lock
from .sharedfs import check_shared_filesystem, local_folder
from .store import (CODECS, DEFAULT_CODEC, clear_store, create_skeleton, finalize, prepare_target, read_attrs,
                    read_markers, write_json_atomic)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class BuildConfig:
    """Everything that defines a patch store. Two builds with equal configs give equal stores.

    Attributes
    ----------
    items : path/URL of a STAC ItemCollection (or a list of them)
    parcels : path of the LPIS parcels (any OGR format or GeoParquet)
    out : path of the Zarr patch store to write
    mapping : crop-code -> class-id CSV (None: the shipped Czech table)
    id_column, crop_column, layer : parcel attributes / layer to use
    patch_size : patch side in pixels
    bbox, bbox_crs : optional area of interest
    start, end : optional date range
    max_cloud : drop items whose ``eo:cloud_cover`` (%) is above this
    min_crop_cover : keep a patch when at least this share of it is a crop class (1..13)
    min_date_clear : drop a tile's dates whose clear-sky share over the tile is at most this
    split : train/val/test shares
    split_block : side (in patches) of the spatial blocks assigned to one split
    seed : seed of the split assignment
    chunksize : side of a work chunk in pixels, a multiple of ``patch_size`` (the unit of work and
        of worker memory: one chunk with all its dates and bands)
    resampling_20m : how 20 m bands reach 10 m (see :func:`crop2seg_pipeline.cube.load_cube`)
    codec : compression of the patch arrays (:data:`crop2seg_pipeline.store.CODECS`)
    unclear_scl : SCL classes that are not clear sky
    epsg : CRS of the output grids (EPSG code of a projected CRS in metres); None: each tile's
        items' own CRS (an error when a tile's items are in several)
    antimeridian : ``bbox`` (lon/lat) crosses the 180th meridian: minx is east of it, maxx west
    """

    items: Any
    parcels: str
    out: str
    mapping: str | None = None
    id_column: str = "ID_DPB"
    crop_column: str = "KOD_PLODINY"
    layer: str | None = None
    patch_size: int = 128
    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str = "EPSG:4326"
    start: str | None = None
    end: str | None = None
    max_cloud: float | None = None
    min_crop_cover: float = 0.3
    min_date_clear: float = 0.0
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_block: int = 2
    seed: int = 0
    chunksize: int = 512
    resampling_20m: str = "nearest"
    unclear_scl: tuple[int, ...] = DEFAULT_UNCLEAR_SCL
    codec: str = DEFAULT_CODEC

    epsg: int | None = None
    antimeridian: bool = False

    def validate(self) -> None:
        """Every check of the parameters that reads nothing (the commands run it before anything
        starts); raises :class:`~crop2seg_pipeline.errors.Crop2SegError` naming the option."""
        check_patch_size(self.patch_size)
        check_fraction(self.min_crop_cover, "--min-crop-cover")
        check_fraction(self.min_date_clear, "--min-date-clear")
        check_percent(self.max_cloud, "--max-cloud")
        check_split(self.split)
        check_dates(self.start, self.end)
        check_bbox(self.bbox, self.bbox_crs, antimeridian=self.antimeridian)
        check_target_crs(self.epsg)
        if self.chunksize < self.patch_size or self.chunksize % self.patch_size:
            raise Crop2SegError(
                f"--chunksize must be a multiple of --patch-size ({self.patch_size}), got {self.chunksize}"
            )
        if self.split_block < 1:
            raise Crop2SegError(f"--split-block must be >= 1, got {self.split_block}")
        if self.codec not in CODECS:
            raise Crop2SegError(f"--codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if self.resampling_20m not in RESAMPLINGS:
            raise Crop2SegError(f"--resampling-20m must be one of {', '.join(RESAMPLINGS)}, got {self.resampling_20m!r}")
        if not str(self.out).strip():
            raise Crop2SegError("--out is empty; give the path of the patch store to write")


@dataclass
class BuildSummary:
    """What a build did; printed by the CLI and saved as ``build.json`` in the store."""

    store: str
    n_patches: int
    n_written: int
    n_resumed: int
    skipped: dict[str, int]
    splits: dict[str, int]
    dates_dropped: dict[str, list[str]]
    class_pixels: dict[str, int]
    unmapped_codes: dict[str, int]
    parcels: dict[str, Any]
    tiles: list[str]
    n_dates: dict[str, int]
    seconds: float
    dashboard: str | None = None
    normalization: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format(self) -> str:
        lines = [
            f"patch store : {self.store}",
            f"patches     : {self.n_patches} ({self.n_written} written now, {self.n_resumed} already done)",
            "splits      : " + ", ".join(f"{k} {v}" for k, v in self.splits.items()),
            "skipped     : " + (", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.skipped.items()) or "none"),
            "tiles/dates : " + ", ".join(f"{t}: {self.n_dates[t]} dates" for t in self.tiles),
        ]
        dropped = {t: d for t, d in self.dates_dropped.items() if d}
        if dropped:
            lines.append("dates dropped (no clear sky): " + "; ".join(f"{t}: {', '.join(d)}" for t, d in dropped.items()))
        present = {k: v for k, v in self.class_pixels.items() if v}
        lines.append("classes     : " + ", ".join(f"{k} {v / 1e6:.2f} Mpx" if v >= 1e4 else f"{k} {v} px" for k, v in present.items()))
        if self.unmapped_codes:
            lines.append(
                "unmapped crop codes (-> Not classified): "
                + ", ".join(f"{k} ({v} parcels)" for k, v in sorted(self.unmapped_codes.items()))
            )
        lines.append(f"time        : {self.seconds:.1f} s")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- driver


@dataclass
class _Tile:
    """One tile of the build: its grid, reader source, parcels' labels, and (after pass 1) dates."""

    tile: str
    grid: Grid
    source: CubeSource
    labels: Any  # xr.Dataset of lazy label / parcel_id
    report: ParcelReport
    windows: dict[tuple[int, int], tuple[int, int, int, int]]
    keep_t: np.ndarray | None = None
    times: pd.DatetimeIndex | None = None


@dataclass
class BuildPlan:
    """Step 1 of a build: its inputs read and checked, nothing written (see :func:`plan_build`)."""

    cfg: BuildConfig
    mapping: CropMapping
    selected: list[dict]
    tiles: list[_Tile]
    state: str  # "new", "existing" or "overwrite" (see store.prepare_target)
    fingerprint: str


#: Who holds a store's writer lock (shown to a second writer).
LOCK_HOLDER = "crop2seg-build-dataset"


def plan_build(config: BuildConfig, overwrite: bool = False) -> BuildPlan:
    """Read and check a build's inputs and its target; writes nothing, starts nothing.

    The items are normalized and selected, each tile's grid planned and its parcels read and
    reprojected; the output path must be new, empty or a patch store of the same inputs (or
    ``overwrite``). The commands call it before they start a cluster, so bad inputs fail fast.
    """
    cfg = config
    cfg.validate()
    mapping = CropMapping.read(cfg.mapping)
    selected = select_items(normalize_items(cfg.items), bbox=cfg.bbox, bbox_crs=cfg.bbox_crs, start=cfg.start,
                            end=cfg.end, max_cloud=cfg.max_cloud, antimeridian=cfg.antimeridian)
    tiles = [_plan_tile(name, its, cfg, mapping) for name, its in _by_tile(selected)]
    state = prepare_target(cfg.out, overwrite)
    fingerprint = _fingerprint(cfg, selected, mapping)
    if state == "existing" and read_attrs(cfg.out).get("fingerprint") != fingerprint:
        raise StoreError(
            f"{cfg.out} holds a patch store built from other inputs or parameters; pass --overwrite "
            "to rebuild it, or choose another --out"
        )
    return BuildPlan(cfg, mapping, selected, tiles, state, fingerprint)


def build_dataset(
    items: Any = None,
    parcels: str | None = None,
    out: str | None = None,
    *,
    config: BuildConfig | None = None,
    client: Any = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    plan: BuildPlan | None = None,
    **options: Any,
) -> BuildSummary:
    """Build (or resume) a Zarr patch store.

    Parameters
    ----------
    items, parcels, out
        STAC items (path/URL), parcel file and output store path; or pass ``config``.
    config
        A :class:`BuildConfig`; keyword ``options`` are its other fields.
    client
        A ``distributed.Client``; None runs on the current default Dask scheduler.
    overwrite
        Delete an existing patch store at ``out`` (once pass 1 has succeeded, under the store's
        lock; a path holding anything else is never deleted).
    progress
        Callable receiving human-readable progress lines (default: logging).
    plan
        The :func:`plan_build` of ``config`` when the caller made it already (the command does,
        before it starts the cluster).

    Returns
    -------
    BuildSummary

    Raises
    ------
    LockHeld
        Another live build writes ``out`` (see :mod:`crop2seg_pipeline.locks`).
    """
    t_start = time.perf_counter()
    if plan is not None:
        config = plan.cfg
    if config is None:
        if items is None or parcels is None or out is None:
            raise Crop2SegError("build_dataset needs items, parcels and out (or config=)")
        config = BuildConfig(items=items, parcels=str(parcels), out=str(out), **options)
    cfg = config
    cfg.validate()
    say = progress or log.info
    with writer_lock(cfg.out, LOCK_HOLDER, "patch store"):
        # 1. inputs, checked before anything is written (under the lock: nobody else writes the store)
        plan = plan or plan_build(cfg, overwrite)
        # the workers write the store and read the assets: they must see the client's local paths
        check_shared_filesystem(client, cfg.out, "--out")
        check_shared_filesystem(client, local_folder(a["href"] for it in plan.selected for a in it["assets"].values()),
                                "--items")
        return _build(plan, client, say, t_start)


def _build(plan: BuildPlan, client: Any, say: Callable[[str], None], t_start: float) -> BuildSummary:
    cfg, tiles, fingerprint = plan.cfg, plan.tiles, plan.fingerprint
    incomplete = (f"The patch store {cfg.out} is incomplete (finished chunks are kept): fix the cause and run the "
                  "same command again to resume.")

    # 2. pass 1: labels + SCL only -> patches kept, dates kept, splits
    unclear = tuple(cfg.unclear_scl)
    tasks = {(k, keys): task for k, t in enumerate(tiles)
             for keys, task in pass1_tasks(shared(t.source, f"source-{t.tile}"), t.labels["label"].data, t.windows,
                                           patch_size=cfg.patch_size, unclear=unclear).items()}
    n_chunks = sum(len(keys) for _, keys in tasks)
    say(f"pass 1/2: class cover and clear sky of {n_chunks} chunks in {len(tasks)} tasks (SCL and labels only)")
    results = run_tasks(list(tasks.values()), client, label="pass 1", say=say,
                        on_failure="Nothing was written; fix the cause and run again.")
    pass1 = {(k, key): r for (k, keys), group in zip(tasks, results) for key, r in zip(keys, group, strict=True)}
    patches, clear_of, skipped, dates_dropped = _select_patches(tiles, pass1, cfg)
    patches["split"] = _splits(patches, cfg)
    _check_train_split(patches, cfg)

    # 3. skeleton (or the check that an existing one is this build's)
    n = len(patches)
    if plan.state == "overwrite":
        say(f"--overwrite: deleting the patch store {cfg.out}")
        clear_store(cfg.out)
    if plan.state in ("new", "overwrite"):
        dates, clear = _dates_and_clear(tiles, patches, clear_of)
        say(f"creating patch store {cfg.out} ({n} patches x {dates.shape[1]} dates)")
        create_skeleton(cfg.out, patches, dates, clear, BANDS, cfg.patch_size,
                        _store_attrs(cfg, plan.selected, fingerprint), codec_name=cfg.codec)
    else:
        _check_same_patches(cfg.out, patches)
    pause_point("skeleton")

    # 4. pass 2: the heavy part, resumable
    tasks2, n_resumed = _pass2_tasks(tiles, patches, cfg, read_markers(cfg.out), fingerprint)
    if n_resumed:
        say(f"resuming: {n_resumed} patches already written, {len(tasks2)} chunks to go")
    say(f"pass 2/2: writing {n - n_resumed} patches from {len(tasks2)} chunks")
    run_tasks(tasks2, client, label="pass 2", say=say, on_failure=incomplete)
    pause_point("finalize")

    # 5. statistics from all markers (resumed ones included), footprints, completion
    return _finish(cfg, tiles, patches, skipped, dates_dropped, n_resumed, client, t_start)


def _check_train_split(patches: pd.DataFrame, cfg: BuildConfig) -> None:
    """Training and the normalization statistics need train patches: refuse before writing."""
    if not (patches["split"] == "train").any():
        n_blocks = len(set(zip(patches["tile"], patches["row"] // cfg.split_block, patches["col"] // cfg.split_block)))
        raise Crop2SegError(
            f"no patch went to the train split ({len(patches)} patches in {n_blocks} split blocks of "
            f"{cfg.split_block} x {cfg.split_block} patches, --split {','.join(f'{v:g}' for v in cfg.split)}); "
            "lower --split-block, raise the train share of --split, or widen the area. Nothing was written."
        )


def _by_tile(items: Sequence[dict]) -> list[tuple[str, list[dict]]]:
    by: dict[str, list[dict]] = {}
    for it in items:
        by.setdefault(it["properties"]["crop2seg:tile"], []).append(it)
    return sorted(by.items())


def _plan_tile(name: str, items: list[dict], cfg: BuildConfig, mapping: CropMapping) -> _Tile:
    """A tile's grid, block-reader source, parcels and lazy labels (nothing is read but parcels)."""
    grid = grid_of_items(items, require_single_crs(items, cfg.epsg, where=f"tile {name}"), 10.0, cfg.bbox,
                         cfg.bbox_crs)
    P = cfg.patch_size
    if grid.height < P or grid.width < P:
        raise Crop2SegError(f"tile {name}: the area is {grid.height} x {grid.width} px, smaller than one {P} px patch")
    gdf, report = read_parcels(
        cfg.parcels, id_column=cfg.id_column, crop_column=cfg.crop_column, layer=cfg.layer, mapping=mapping,
        target_crs=grid.epsg, bbox=grid.bounds,
    )
    return _Tile(
        tile=name, grid=grid, source=cube_source(items, grid, BANDS, cfg.resampling_20m),
        labels=rasterize_labels(gdf, grid, chunks=cfg.chunksize), report=report,
        windows=chunk_windows(grid.height, grid.width, cfg.chunksize),
    )


def _select_patches(tiles: list[_Tile], pass1: dict, cfg: BuildConfig):
    """From pass-1 results: the kept patches (a DataFrame in store order), their clear fractions
    on the kept dates, what was skipped, and the dates dropped per tile (no clear sky)."""
    P, cp = cfg.patch_size, cfg.chunksize // cfg.patch_size
    rows_out, clear_of, dates_dropped = [], {}, {}
    skipped = {"low_crop_cover": 0, "no_data": 0}
    for k, t in enumerate(tiles):
        res = {key: r for (tk, key), r in pass1.items() if tk == k}
        clear_px = sum(r["clear_px"] for r in res.values())
        px = sum(r["px"] for r in res.values())
        keep_t = clear_px / max(px, 1) > cfg.min_date_clear
        times = pd.to_datetime(list(t.source.times))
        dates_dropped[t.tile] = [str(d.date()) for d, keep in zip(times, keep_t) if not keep]
        if not keep_t.any():
            raise Crop2SegError(f"tile {t.tile}: no date has clear sky over the area (all {len(times)} dates cloudy)")
        t.keep_t, t.times = keep_t, times
        for (by, bx), r in sorted(res.items()):
            counts = r["counts"]
            for i in range(counts.shape[0]):
                for j in range(counts.shape[1]):
                    c = counts[i, j]
                    crop = c[1:NOT_CLASSIFIED].sum() / c.sum()
                    row, col = by * cp + i, bx * cp + j
                    if not r["valid"][keep_t, i, j].any():
                        skipped["no_data"] += 1
                        continue
                    if crop < cfg.min_crop_cover:
                        skipped["low_crop_cover"] += 1
                        continue
                    clear_of[(t.tile, row, col)] = r["clear"][keep_t, i, j]
                    rows_out.append({
                        "tile": t.tile, "row": row, "col": col, "by": by, "bx": bx, "li": i, "lj": j,
                        "epsg": t.grid.epsg, "x0": t.grid.x0 + col * P * t.grid.resolution,
                        "y0": t.grid.y0 - row * P * t.grid.resolution, "crop_cover": float(crop),
                        **{f"px_{c_}": int(c[c_]) for c_ in range(N_CLASSES)},
                    })
    if not rows_out:
        raise Crop2SegError(
            f"no patch has at least {cfg.min_crop_cover:.0%} crop cover and valid data "
            f"({skipped['low_crop_cover']} below the cover, {skipped['no_data']} without data); "
            "check that the parcels overlap the scene or lower --min-crop-cover"
        )
    patches = pd.DataFrame(rows_out).sort_values(["tile", "by", "bx", "row", "col"], kind="stable")
    return patches.reset_index(drop=True), clear_of, skipped, dates_dropped


def _dates_and_clear(tiles: list[_Tile], patches: pd.DataFrame, clear_of: dict) -> tuple[np.ndarray, np.ndarray]:
    """(patch, time) dates and clear fractions, each tile's kept dates padded with NaT / NaN."""
    kept = {t.tile: t.times[t.keep_t].values for t in tiles}
    t_max = max(len(d) for d in kept.values())
    dates = np.full((len(patches), t_max), np.datetime64("NaT"), dtype="datetime64[ns]")
    clear = np.full((len(patches), t_max), np.nan, dtype=np.float32)
    for k, r in enumerate(patches.itertuples()):
        d = kept[r.tile]
        dates[k, : len(d)] = d
        clear[k, : len(d)] = clear_of[(r.tile, r.row, r.col)]
    return dates, clear


def _store_attrs(cfg: BuildConfig, selected: Sequence[dict], fingerprint: str) -> dict:
    return {
        "fingerprint": fingerprint,
        "class_names": list(CLASS_NAMES),
        "bands": list(BANDS),
        "patch_size": cfg.patch_size,
        "resolution": 10.0,
        "software": f"crop2seg-pipeline {__version__}",
        "build_parameters": _jsonable(
            {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"} | {"items": _describe_items(cfg.items)}
        ),
        "source_items": [it["id"] for it in selected],
        "pixel_convention": "x0, y0: upper-left corner of the patch; pixel (i, j) covers x0+j*res .. x0+(j+1)*res",
    }


def _pass2_tasks(tiles: list[_Tile], patches: pd.DataFrame, cfg: BuildConfig, done: dict,
                 fingerprint: str) -> tuple[list, int]:
    """One :func:`~crop2seg_pipeline.graph.build.pass2_chunk` task per chunk holding kept patches
    and no resume marker; returns the tasks and the number of patches already written."""
    tasks, n_resumed = [], 0
    for t in tiles:
        src = shared(t.source, f"source-{t.tile}")
        dates = np.flatnonzero(t.keep_t).tolist()
        lab = t.labels["label"].data.to_delayed()
        pid = t.labels["parcel_id"].data.to_delayed()
        for (by, bx), grp in patches[patches["tile"] == t.tile].groupby(["by", "bx"], sort=True):
            key = f"{t.tile}_{by}_{bx}"
            index = grp.index.tolist()
            if key in done and done[key].get("index") == index:
                n_resumed += len(grp)
                continue
            tasks.append(dask.delayed(pass2_chunk)(
                src, t.windows[(by, bx)], dates, lab[by, bx], pid[by, bx],
                store=cfg.out if storage.is_url(cfg.out) else os.path.abspath(cfg.out), key=key, index=index, rows=grp["li"].tolist(), cols=grp["lj"].tolist(),
                train=(grp["split"] == "train").tolist(), patch_size=cfg.patch_size, unclear=tuple(cfg.unclear_scl),
                dask_key_name=f"write-{key}-{fingerprint[:8]}",
            ))
    return tasks, n_resumed


def _finish(cfg: BuildConfig, tiles: list[_Tile], patches: pd.DataFrame, skipped: dict, dates_dropped: dict,
            n_resumed: int, client: Any, t_start: float) -> BuildSummary:
    """Pooled statistics from every marker, class counts, the footprint table; store marked complete."""
    moments = Moments.zeros(len(BANDS))
    for m in read_markers(cfg.out).values():
        moments = moments + Moments.from_dict(m["moments"])
    class_pixels = {
        s: [int(patches.loc[patches["split"] == s, f"px_{c}"].sum()) for c in range(N_CLASSES)] for s in SPLITS
    }
    norm = {"mean": moments.mean.tolist(), "std": moments.std.tolist(), "count": moments.count.tolist()}
    unmapped: dict[str, int] = {}
    for t in tiles:
        for k, v in t.report.unmapped_codes.items():
            unmapped[k] = unmapped.get(k, 0) + v
    n = len(patches)
    summary = BuildSummary(
        store=str(cfg.out),
        n_patches=n,
        n_written=n - n_resumed,
        n_resumed=n_resumed,
        skipped=skipped,
        splits={s: int((patches["split"] == s).sum()) for s in SPLITS},
        dates_dropped=dates_dropped,
        class_pixels={CLASS_NAMES[c]: sum(class_pixels[s][c] for s in SPLITS) for c in range(N_CLASSES)},
        unmapped_codes=unmapped,
        parcels=_merge_reports([t.report for t in tiles]),
        tiles=[t.tile for t in tiles],
        n_dates={t.tile: int(t.keep_t.sum()) for t in tiles},
        seconds=0.0,
        dashboard=getattr(client, "dashboard_link", None),
        normalization={"mean": norm["mean"], "std": norm["std"]},
    )
    _write_footprints(cfg.out, patches, cfg.patch_size)
    summary.seconds = time.perf_counter() - t_start
    write_json_atomic(storage.join(cfg.out, "build.json"), _jsonable(summary.to_dict()))
    finalize(cfg.out, {
        "normalization": {"train": norm},
        "class_pixel_counts": class_pixels,
        "splits": summary.splits,
        "unmapped_codes": unmapped,
        "dates_dropped": dates_dropped,
    })
    return summary


# ----------------------------------------------------------------------------- helpers


def _splits(patches: pd.DataFrame, cfg: BuildConfig) -> list[str]:
    block = list(zip(patches["tile"], patches["row"] // cfg.split_block, patches["col"] // cfg.split_block))
    counts = Counter(block)  # one pass: list.count per block was quadratic in the patch count
    keys = sorted(counts)
    weights = [counts[k] for k in keys]
    assigned = assign_splits(keys, weights, cfg.split, cfg.seed)
    return [SPLITS[assigned[b]] for b in block]


_LATER_FIELDS = {"epsg": None, "antimeridian": False}


def _fingerprint(cfg: BuildConfig, items: Sequence[Mapping], mapping: CropMapping) -> str:
    if storage.is_url(cfg.parcels):
        parcels_id = [storage.redact(cfg.parcels), *storage.file_version(cfg.parcels)]
    else:
        parcels = Path(cfg.parcels)
        st = parcels.stat() if parcels.exists() else None
        parcels_id = [str(parcels.resolve()), st.st_size if st else None, st.st_mtime_ns if st else None]
    payload = {
        # fields added later are left out at their defaults: earlier stores keep their fingerprint
        "config": _jsonable({k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "items")
                             and not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}),
        "items": [[it["id"], sorted((b, a["href"]) for b, a in it["assets"].items())] for it in items],
        "parcels": parcels_id,
        "mapping": sorted(mapping.codes.items()),
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _check_same_patches(path: str, patches: pd.DataFrame) -> None:
    import zarr

    g = zarr.open_group(str(path), mode="r", zarr_format=3)
    rows, cols = g["row"][:], g["col"][:]
    if len(rows) != len(patches) or not (np.array_equal(rows, patches["row"]) and np.array_equal(cols, patches["col"])):
        raise StoreError(f"{path}: the existing store's patches differ from this build's; pass --overwrite")


def _write_footprints(path: str, patches: pd.DataFrame, patch_size: int, resolution: float = 10.0) -> None:
    """``patches.gpkg`` beside the arrays: patch squares with split and class cover (one CRS, or WGS84)."""
    epsgs = sorted(set(patches["epsg"].tolist()))
    p = resolution * patch_size
    frames = []
    for epsg in epsgs:
        sub = patches[patches["epsg"] == epsg]
        geoms = [shapely.geometry.box(x0, y0 - p, x0 + p, y0) for x0, y0 in zip(sub["x0"], sub["y0"])]
        cover = sub[[f"px_{c}" for c in range(N_CLASSES)]].to_numpy()
        frame = gpd.GeoDataFrame(
            {
                "patch": sub.index.to_numpy(),
                "tile": sub["tile"].to_numpy(),
                "row": sub["row"].to_numpy(),
                "col": sub["col"].to_numpy(),
                "split": sub["split"].to_numpy(),
                "crop_cover": sub["crop_cover"].round(4).to_numpy(),
                "main_class": [CLASS_NAMES[i] for i in cover.argmax(axis=1)],
                **{f"cover_{c:02d}": (cover[:, c] / cover.sum(axis=1)).round(4) for c in range(N_CLASSES)},
            },
            geometry=geoms,
            crs=f"EPSG:{epsg}",
        )
        frames.append(frame if len(epsgs) == 1 else frame.to_crs(4326))
    out = pd.concat(frames) if len(frames) > 1 else frames[0]
    if storage.is_url(path):  # GPKG needs random access: written locally, then uploaded whole
        with tempfile.TemporaryDirectory(prefix="crop2seg-footprints-") as tmp:
            out.to_file(Path(tmp) / "patches.gpkg", layer="patches", driver="GPKG")
            storage.upload(Path(tmp) / "patches.gpkg", storage.join(path, "patches.gpkg"))
        return
    target = Path(path) / "patches.gpkg"
    if target.exists():
        target.unlink()
    out.to_file(target, layer="patches", driver="GPKG")


def _merge_reports(reports: list) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in reports:
        d = dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r)
        for k, v in d.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
    return out


def _describe_items(items: Any) -> Any:
    if isinstance(items, (str, os.PathLike)):
        return storage.redact(str(items))
    if isinstance(items, (list, tuple)) and all(isinstance(i, (str, os.PathLike)) for i in items):
        return [storage.redact(str(i)) for i in items]
    return "<in-memory items>"


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (dt.date, Path)):
        return str(x)
    return x


def default_demo_paths(root: str | os.PathLike = "crop2seg-demo") -> tuple[Path, Path]:
    """(scene folder, store path) used when ``crop2seg-build-dataset`` runs with no arguments."""
    root = Path(root)
    return root / "scene", root / "patches.zarr"

