"""crop2seg-build-dataset: STAC items + LPIS parcels -> Zarr patch store, on a Dask cluster.

Reads top to bottom:

1. normalize and select items, group them by tile; check the output path;
2. per tile: lazy cube (one chunk = all dates and bands of a spatial block), parcels read and
   reprojected to the tile's CRS, labels rasterized lazily per chunk;
3. pass 1 (cheap: labels + SCL only) on the cluster: per-patch class cover, clear-sky and
   valid fractions -> patches to keep, split by spatial blocks, dates to drop;
4. skeleton of the store (coordinates, dates, clear fractions, fingerprint of the inputs);
5. pass 2 (heavy) on the cluster: each task reads one cube chunk, cuts its kept patches, writes
   them as whole Zarr chunks, computes its share of the normalization statistics and drops a
   resume marker; tasks that already have a marker are not scheduled again;
6. statistics combined from the markers, footprint table, store marked complete.

Peak memory of a worker is bounded by one chunk (``chunk_patches * patch_size`` pixels square,
all dates and bands), never by the tile size, the number of dates or the number of tiles.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import sys
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

from . import __version__
from .cube import load_cube
from .errors import Crop2SegError, StoreError
from .grid import Grid
from .items import normalize_items, select_items
from .kernels.patches import Moments, assign_splits, cut_patches, patch_class_counts, patch_fraction
from .kernels.s2 import clear_mask
from .labels import CropMapping, read_parcels, rasterize_labels
from .nomenclature import BANDS, CLASS_NAMES, DEFAULT_UNCLEAR_SCL, N_CLASSES, NOT_CLASSIFIED
from .store import (
    create_skeleton,
    finalize,
    prepare_target,
    read_attrs,
    read_markers,
    write_marker,
    write_patches,
)

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
    chunk_patches : side of a work chunk, in patches (chunk = chunk_patches * patch_size px)
    resampling_20m : how 20 m bands reach 10 m (see :func:`crop2seg_pipeline.cube.load_cube`)
    unclear_scl : SCL classes that are not clear sky
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
    chunk_patches: int = 4
    resampling_20m: str = "nearest"
    unclear_scl: tuple[int, ...] = DEFAULT_UNCLEAR_SCL

    def validate(self) -> None:
        if self.patch_size < 8:
            raise Crop2SegError(f"--patch-size must be at least 8, got {self.patch_size}")
        if not 0.0 <= self.min_crop_cover <= 1.0:
            raise Crop2SegError(f"--min-crop-cover is a fraction in [0, 1], got {self.min_crop_cover}")
        if len(self.split) != 3 or any(s < 0 for s in self.split) or sum(self.split) <= 0:
            raise Crop2SegError(f"--split takes three non-negative shares (train,val,test), got {self.split}")
        if self.chunk_patches < 1 or self.split_block < 1:
            raise Crop2SegError("chunk_patches and split_block must be >= 1")


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


# ----------------------------------------------------------------------------- tasks (run on workers)


def _pass1_block(label: np.ndarray, scl: np.ndarray, patch_size: int, unclear: tuple[int, ...]) -> dict:
    """Per-patch class counts and per-date clear/valid fractions of one chunk (labels + SCL only)."""
    clear = clear_mask(scl, unclear)
    valid = scl != 0
    return {
        "counts": patch_class_counts(label, patch_size),
        "clear": patch_fraction(clear, patch_size),
        "valid": patch_fraction(valid, patch_size),
        "clear_px": clear.sum(axis=(1, 2)),
        "px": int(label.size),
    }


def _pass2_block(
    items: list[dict],
    window: Grid,
    time_index: list[int],
    label: np.ndarray,
    parcel_id: np.ndarray,
    *,
    store: str,
    key: str,
    index: list[int],
    rows: list[int],
    cols: list[int],
    train: list[bool],
    patch_size: int,
    unclear: tuple[int, ...],
    resampling_20m: str,
) -> dict:
    """One chunk, start to end, in one task: read, cut the kept patches, write them, marker last.

    The chunk's cube is built and read inside the task (synchronously), so a worker thread never
    holds more than one chunk and the graph has one small task per chunk.
    """
    cube = load_cube(
        items, grid=window, chunksize=(window.height, window.width), resampling_20m=resampling_20m,
        check_files=False,
    ).isel(time=time_index)
    s2, scl = dask.compute(cube["s2"].data, cube["scl"].data, scheduler="sync")
    s2p = cut_patches(s2, rows, cols, patch_size)
    write_patches(store, index, s2p, cut_patches(label, rows, cols, patch_size), cut_patches(parcel_id, rows, cols, patch_size))
    tr = np.asarray(train, dtype=bool)
    moments = Moments.zeros(s2.shape[1])
    if tr.any():
        clear = cut_patches(clear_mask(scl, unclear), rows, cols, patch_size)
        moments = Moments.of(s2p[tr], clear[tr])
    info = {"index": index, "moments": moments.to_dict()}
    write_marker(store, key, info)
    return {"key": key, "n": len(index), "moments": info["moments"], "pixels": int(s2p.size)}


# ----------------------------------------------------------------------------- driver


def build_dataset(
    items: Any = None,
    parcels: str | None = None,
    out: str | None = None,
    *,
    config: BuildConfig | None = None,
    client: Any = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
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
        Delete an existing patch store at ``out`` first (a path holding anything else is never
        deleted).
    progress
        Callable receiving human-readable progress lines (default: logging).

    Returns
    -------
    BuildSummary
    """
    t_start = time.perf_counter()
    if config is None:
        if items is None or parcels is None or out is None:
            raise Crop2SegError("build_dataset needs items, parcels and out (or config=)")
        config = BuildConfig(items=items, parcels=str(parcels), out=str(out), **options)
    config.validate()
    say = progress or log.info
    cfg = config
    P = cfg.patch_size
    chunk = cfg.chunk_patches * P

    # 1. inputs, checked before anything is written
    mapping = CropMapping.read(cfg.mapping)
    all_items = normalize_items(cfg.items)
    sel = select_items(all_items, bbox=cfg.bbox, bbox_crs=cfg.bbox_crs, start=cfg.start, end=cfg.end, max_cloud=cfg.max_cloud)
    by_tile: dict[str, list[dict]] = {}
    for it in sel:
        by_tile.setdefault(it["properties"]["crop2seg:tile"], []).append(it)
    tiles = sorted(by_tile)

    plans = []
    parcel_reports = []
    for tile in tiles:
        cube = load_cube(
            by_tile[tile], bbox=cfg.bbox, bbox_crs=cfg.bbox_crs, chunksize=chunk, resampling_20m=cfg.resampling_20m
        )
        grid = Grid.from_coords(cube["x"].values, cube["y"].values, cube.attrs["epsg"])
        if grid.height < P or grid.width < P:
            raise Crop2SegError(f"tile {tile}: the area is {grid.height} x {grid.width} px, smaller than one {P} px patch")
        gdf, report = read_parcels(
            cfg.parcels,
            id_column=cfg.id_column,
            crop_column=cfg.crop_column,
            layer=cfg.layer,
            mapping=mapping,
            target_crs=grid.epsg,
            bbox=grid.bounds,
        )
        parcel_reports.append(report)
        labels = rasterize_labels(gdf, grid, chunks=chunk)
        plans.append({"tile": tile, "cube": cube, "grid": grid, "labels": labels, "items": by_tile[tile]})

    state = prepare_target(cfg.out, overwrite)
    fingerprint = _fingerprint(cfg, sel, mapping)
    if state == "existing":
        attrs = read_attrs(cfg.out)
        if attrs.get("fingerprint") != fingerprint:
            raise StoreError(
                f"{cfg.out} holds a patch store built from other inputs or parameters; pass --overwrite "
                "to rebuild it, or choose another --out"
            )

    # 2. pass 1: labels + SCL only
    say(f"pass 1/2: class cover and clear sky of {sum(_n_blocks(p['grid'], chunk) for p in plans)} chunks")
    tasks, where = [], []
    for ti, plan in enumerate(plans):
        lab = plan["labels"]["label"].data.to_delayed()
        scl = plan["cube"]["scl"].data.to_delayed()
        for (by, bx), lab_blk in np.ndenumerate(lab):
            tasks.append(dask.delayed(_pass1_block)(lab_blk, scl[0, by, bx], P, tuple(cfg.unclear_scl)))
            where.append((ti, by, bx))
    results = _run(tasks, client, say, "pass 1")

    patch_rows, dates_dropped, tile_dates = [], {}, {}
    skipped = {"low_crop_cover": 0, "no_data": 0}
    clear_of: dict[tuple, np.ndarray] = {}
    for ti, plan in enumerate(plans):
        cube, grid, tile = plan["cube"], plan["grid"], plan["tile"]
        res = {(by, bx): r for (t, by, bx), r in zip(where, results) if t == ti}
        clear_px = sum(r["clear_px"] for r in res.values())
        px = sum(r["px"] for r in res.values())
        keep_t = clear_px / max(px, 1) > cfg.min_date_clear
        times = pd.to_datetime(cube["time"].values)
        dates_dropped[tile] = [str(t.date()) for t, k in zip(times, keep_t) if not k]
        if not keep_t.any():
            raise Crop2SegError(f"tile {tile}: no date has clear sky over the area (all {len(times)} dates cloudy)")
        tile_dates[tile] = times[keep_t]
        plan["keep_t"] = keep_t
        for (by, bx), r in res.items():
            nr, nc = r["counts"].shape[:2]
            for i in range(nr):
                for j in range(nc):
                    counts = r["counts"][i, j]
                    crop = counts[1:NOT_CLASSIFIED].sum() / counts.sum()
                    row, col = by * cfg.chunk_patches + i, bx * cfg.chunk_patches + j
                    if not r["valid"][keep_t, i, j].any():
                        skipped["no_data"] += 1
                        continue
                    if crop < cfg.min_crop_cover:
                        skipped["low_crop_cover"] += 1
                        continue
                    clear_of[(tile, row, col)] = r["clear"][keep_t, i, j]
                    patch_rows.append({
                        "tile": tile, "row": row, "col": col, "by": by, "bx": bx, "li": i, "lj": j,
                        "epsg": grid.epsg, "x0": grid.x0 + col * P * grid.resolution,
                        "y0": grid.y0 - row * P * grid.resolution, "crop_cover": float(crop),
                        **{f"px_{c}": int(counts[c]) for c in range(N_CLASSES)},
                    })
    if not patch_rows:
        raise Crop2SegError(
            f"no patch has at least {cfg.min_crop_cover:.0%} crop cover and valid data "
            f"({skipped['low_crop_cover']} below the cover, {skipped['no_data']} without data); "
            "check that the parcels overlap the scene or lower --min-crop-cover"
        )
    patches = pd.DataFrame(patch_rows).sort_values(["tile", "by", "bx", "row", "col"], kind="stable").reset_index(drop=True)
    patches["split"] = _splits(patches, cfg)

    # 3. skeleton
    t_max = max(len(d) for d in tile_dates.values())
    n = len(patches)
    dates = np.full((n, t_max), np.datetime64("NaT"), dtype="datetime64[ns]")
    clear = np.full((n, t_max), np.nan, dtype=np.float32)
    for k, r in enumerate(patches.itertuples()):
        d = tile_dates[r.tile].values
        dates[k, : len(d)] = d
        clear[k, : len(d)] = clear_of[(r.tile, r.row, r.col)]
    if state == "new":
        attrs = {
            "fingerprint": fingerprint,
            "class_names": list(CLASS_NAMES),
            "bands": list(BANDS),
            "patch_size": P,
            "resolution": 10.0,
            "software": f"crop2seg-pipeline {__version__}",
            "build_parameters": _jsonable(
                {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"} | {"items": _describe_items(cfg.items)}
            ),
            "source_items": [it["id"] for it in sel],
            "pixel_convention": "x0, y0: upper-left corner of the patch; pixel (i, j) covers x0+j*res .. x0+(j+1)*res",
        }
        say(f"creating patch store {cfg.out} ({n} patches x {t_max} dates)")
        create_skeleton(cfg.out, patches, dates, clear, BANDS, P, attrs)
    else:
        _check_same_patches(cfg.out, patches)

    # 4. pass 2: the heavy part, resumable
    done = read_markers(cfg.out)
    tasks, n_resumed = [], 0
    for ti, plan in enumerate(plans):
        tile = plan["tile"]
        grid = plan["grid"]
        items_key = dask.delayed(plan["items"], traverse=False)  # one shared key, not a copy per task
        time_index = np.flatnonzero(plan["keep_t"]).tolist()
        lab = plan["labels"]["label"].data.to_delayed()
        pid = plan["labels"]["parcel_id"].data.to_delayed()
        sub = patches[patches["tile"] == tile]
        for (by, bx), grp in sub.groupby(["by", "bx"], sort=True):
            key = f"{tile}_{by}_{bx}"
            if key in done and done[key].get("index") == grp.index.tolist():
                n_resumed += len(grp)
                continue
            window = grid.window(by * chunk, bx * chunk, min(chunk, grid.height - by * chunk), min(chunk, grid.width - bx * chunk))
            tasks.append(dask.delayed(_pass2_block)(
                items_key, window, time_index, lab[by, bx], pid[by, bx],
                store=str(cfg.out), key=key, index=grp.index.tolist(), rows=grp["li"].tolist(),
                cols=grp["lj"].tolist(), train=(grp["split"] == "train").tolist(), patch_size=P,
                unclear=tuple(cfg.unclear_scl), resampling_20m=cfg.resampling_20m,
                dask_key_name=f"write-{key}-{fingerprint[:8]}",
            ))
    if n_resumed:
        say(f"resuming: {n_resumed} patches already written, {len(tasks)} chunks to go")
    say(f"pass 2/2: writing {n - n_resumed} patches from {len(tasks)} chunks")
    _run(tasks, client, say, "pass 2", volume=lambda r: r["pixels"])

    # 5. statistics from all markers (resumed ones included), footprints, completion
    markers = read_markers(cfg.out)
    moments = Moments.zeros(len(BANDS))
    for m in markers.values():
        moments = moments + Moments.from_dict(m["moments"])
    class_pixels = {
        s: [int(patches.loc[patches["split"] == s, f"px_{c}"].sum()) for c in range(N_CLASSES)] for s in SPLITS
    }
    norm = {"mean": moments.mean.tolist(), "std": moments.std.tolist(), "count": moments.count.tolist()}
    unmapped: dict[str, int] = {}
    for rep in parcel_reports:
        for k, v in rep.unmapped_codes.items():
            unmapped[k] = unmapped.get(k, 0) + v
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
        parcels=_merge_reports(parcel_reports),
        tiles=tiles,
        n_dates={t: int(len(d)) for t, d in tile_dates.items()},
        seconds=0.0,
        dashboard=getattr(client, "dashboard_link", None),
        normalization={"mean": norm["mean"], "std": norm["std"]},
    )
    _write_footprints(cfg.out, patches, plans)
    finalize(
        cfg.out,
        {
            "normalization": {"train": norm},
            "class_pixel_counts": class_pixels,
            "splits": summary.splits,
            "unmapped_codes": unmapped,
            "dates_dropped": dates_dropped,
        },
    )
    summary.seconds = time.perf_counter() - t_start
    (Path(cfg.out) / "build.json").write_text(json.dumps(_jsonable(summary.to_dict()), indent=2))
    return summary


# ----------------------------------------------------------------------------- helpers


def _n_blocks(grid: Grid, chunk: int) -> int:
    return -(-grid.height // chunk) * -(-grid.width // chunk)


def _run(tasks: list, client: Any, say: Callable[[str], None], label: str, volume: Callable | None = None) -> list:
    """Compute delayed tasks, on ``client`` when given, reporting progress; results in order."""
    if not tasks:
        return []
    t0 = time.perf_counter()
    results: list = [None] * len(tasks)
    last = 0.0
    if client is not None:
        from distributed import as_completed

        futures = client.compute(tasks)
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for k, fut in enumerate(as_completed(futures), 1):
                results[index[fut.key]] = fut.result()
                now = time.perf_counter()
                if now - last > 2 or k == len(tasks):
                    last = now
                    say(f"{label}: {k}/{len(tasks)} chunks ({100 * k / len(tasks):.0f}%), {now - t0:.1f} s")
        except BaseException:
            # Ctrl-C or a failed task: stop the rest of this pass on the cluster now. Left alone,
            # the futures (kept alive by the traceback) would go on writing to the store behind
            # the caller's back, and a re-run on the same client would get their stale results.
            try:
                client.cancel(futures)
            except Exception as e:  # noqa: BLE001 (the original error matters more; say why cancel failed)
                log.warning("%s: could not cancel the remaining tasks (%s); they may still run", label, e)
            raise
        return results
    step = max(1, os.cpu_count() or 1)
    for s in range(0, len(tasks), step):
        part = dask.compute(*tasks[s : s + step])
        results[s : s + len(part)] = part
        say(f"{label}: {s + len(part)}/{len(tasks)} chunks, {time.perf_counter() - t0:.1f} s")
    return results


def _splits(patches: pd.DataFrame, cfg: BuildConfig) -> list[str]:
    block = list(zip(patches["tile"], patches["row"] // cfg.split_block, patches["col"] // cfg.split_block))
    counts = Counter(block)  # one pass: list.count per block was quadratic in the patch count
    keys = sorted(counts)
    weights = [counts[k] for k in keys]
    assigned = assign_splits(keys, weights, cfg.split, cfg.seed)
    return [SPLITS[assigned[b]] for b in block]


def _fingerprint(cfg: BuildConfig, items: Sequence[Mapping], mapping: CropMapping) -> str:
    parcels = Path(cfg.parcels)
    st = parcels.stat() if parcels.exists() else None
    payload = {
        "config": _jsonable({k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "items")}),
        "items": [[it["id"], sorted((b, a["href"]) for b, a in it["assets"].items())] for it in items],
        "parcels": [str(parcels.resolve()), st.st_size if st else None, st.st_mtime_ns if st else None],
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


def _write_footprints(path: str, patches: pd.DataFrame, plans: list[dict]) -> None:
    epsgs = sorted({p["grid"].epsg for p in plans})
    p = plans[0]["grid"].resolution * int(read_attrs(path).get("patch_size", 128))
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
        return str(items)
    if isinstance(items, (list, tuple)) and all(isinstance(i, (str, os.PathLike)) for i in items):
        return [str(i) for i in items]
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the crop2seg-build-dataset command")
