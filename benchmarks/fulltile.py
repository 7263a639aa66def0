"""A full Sentinel-2 tile through crop2seg-build-dataset, beside a raw-I/O baseline on the same files.

    python benchmarks/fulltile.py [--dates 24] [--workers 2] [--workdir /var/tmp/crop2seg-fulltile]

1. Generates (once; kept in ``--workdir``) a full-size 10980 x 10980 px tile on the real 33UWQ
   grid: ``--dates`` dates, one tiled (1024 px), DEFLATE GeoTIFF per band and date at native
   10/20 m resolution plus SCL, written block by block by ``--workers`` processes (never a whole
   band in memory); 275 x 275 = 75,625 rectangular parcels of 13 crop classes with their own
   phenology, written in EPSG:5514 (S-JTSK, as the Czech LPIS); moving clouds in SCL and bands.
2. On the command's local cluster (:func:`crop2seg_pipeline.cluster.connect`) of ``--workers``
   workers x 1 thread: the raw-I/O baseline
   (``benchmarks/rawio.py``: the same windows read with rasterio, the same patches written with
   the same codec, one task per chunk) and the whole build (``build_dataset``, every patch kept),
   page cache dropped before each when the machine allows it.
3. Prints wall time per pass, throughput, peak RSS of every process (sampled every 0.5 s over
   the process tree) and the pipeline / raw-I/O throughput ratio; writes JSON.

Goals (issue 11): the whole build under 10 minutes on 2 cores, total RSS of all processes under
4 GB, pipeline / raw-I/O throughput >= 0.9.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MemorySampler, drop_caches, now, print_table, write_json  # noqa: E402
from rawio import raw_tasks  # noqa: E402

TILE, EPSG = "33UWQ", 32633
X0, Y0 = 499980.0, 5500020.0
SIZE = 10980
CELL = 40  # px: 275 x 275 parcels of 400 m
BANDS10 = ("B02", "B03", "B04", "B08")
BANDS20 = ("B05", "B06", "B07", "B8A", "B11", "B12")
BLOCK = 1024
#                      B02    B03    B04    B05    B06    B07    B08    B8A    B11    B12
SOIL = np.array([0.095, 0.125, 0.150, 0.175, 0.195, 0.210, 0.220, 0.230, 0.300, 0.250])
GREEN = np.array([0.028, 0.060, 0.028, 0.090, 0.270, 0.350, 0.400, 0.410, 0.200, 0.095])
ORDER = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def _dates(n: int) -> list[dt.date]:
    start = dt.date(2021, 9, 20)
    return [start + dt.timedelta(days=int(round(d))) for d in np.linspace(0, 380, n)]


def _parcel_tables(seed: int = 0) -> dict:
    """Per parcel (275 x 275 grid): class 1..13, green-up peak day and amplitude."""
    rng = np.random.default_rng(seed)
    n = SIZE // CELL + 1
    cls = rng.integers(1, 14, (n, n)).astype(np.uint8)
    peak = (60 + 25 * cls + rng.normal(0, 12, (n, n))).astype(np.float32)  # days after start
    amp = rng.uniform(0.5, 0.95, (n, n)).astype(np.float32)
    return {"class": cls, "peak": peak, "amp": amp}


def _green(tables: dict, day: float) -> np.ndarray:
    return (tables["amp"] * np.exp(-(((day - tables["peak"]) / 45.0) ** 2))).astype(np.float32)


def _cloud(rows: np.ndarray, cols: np.ndarray, t: int) -> np.ndarray:
    """Smooth cloud field in [0, 1] (varies by date), thresholded at 0.7 -> ~20-30 % cover."""
    a = np.sin(rows[:, None] / 900.0 + 1.7 * t) * np.sin(cols[None, :] / 1300.0 + 0.9 * t)
    b = np.sin((rows[:, None] + cols[None, :]) / 2100.0 + 2.3 * t)
    return 0.5 + 0.35 * a + 0.15 * b


def _noise(rows: np.ndarray, cols: np.ndarray, salt: int) -> np.ndarray:
    """Cheap deterministic per-pixel texture in [-1, 1) (an integer hash, no RNG per pixel)."""
    h = (rows[:, None].astype(np.uint32) * np.uint32(73856093)) ^ (cols[None, :].astype(np.uint32) * np.uint32(19349663))
    h ^= np.uint32(salt * 83492791 & 0xFFFFFFFF)
    h *= np.uint32(2654435761)
    return ((h >> np.uint32(20)).astype(np.float32) / 2048.0) - 1.0


def _write_band(args: tuple) -> str:
    """One GeoTIFF (band of one date), block by block."""
    import rasterio
    from rasterio.transform import from_origin

    path, band, t, day, tables, offset = args
    res = 10 if band in BANDS10 or band == "SCL_10" else 20
    n = SIZE * 10 // res
    bi = ORDER.index(band) if band != "SCL" else None
    green = _green(tables, day)
    prof = dict(driver="GTiff", width=n, height=n, count=1, dtype="uint8" if band == "SCL" else "uint16",
                crs=f"EPSG:{EPSG}", transform=from_origin(X0, Y0, res, res), tiled=True, blockxsize=BLOCK // (res // 10),
                blockysize=BLOCK // (res // 10), compress="DEFLATE", predictor=2, zlevel=1, nodata=0)
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **prof) as ds:
        step = prof["blockysize"]
        for r0 in range(0, n, step):
            for c0 in range(0, n, step):
                rows = np.arange(r0, min(r0 + step, n))
                cols = np.arange(c0, min(c0 + step, n))
                r10, c10 = rows * (res // 10), cols * (res // 10)  # 10 m pixel of this pixel's corner
                cell_r, cell_c = r10 // CELL, c10 // CELL
                inside = ((r10 % CELL) >= 1)[:, None] & ((c10 % CELL) >= 1)[None, :]
                g = np.where(inside, green[cell_r[:, None], cell_c[None, :]], 0.15)
                cloud = _cloud(r10, c10, t) > 0.7
                if band == "SCL":
                    out = np.where(cloud, 9, np.where(g > 0.3, 4, 5)).astype(np.uint8)
                else:
                    refl = SOIL[bi] + g * (GREEN[bi] - SOIL[bi]) + 0.01 * _noise(r10, c10, 7 * t + bi)
                    refl = np.where(cloud, 0.5 + 0.02 * _noise(r10, c10, t), refl)
                    out = np.clip(refl * 10000 + offset, 1, 65535).astype(np.uint16)
                ds.write(out, 1, window=((r0, r0 + len(rows)), (c0, c0 + len(cols))))
    os.replace(tmp, path)
    return str(path)


def generate(root: Path, n_dates: int, workers: int) -> Path:
    """The tile's files, items.json and parcels.gpkg under ``root`` (reused when complete)."""
    items_path = root / "items.json"
    if items_path.exists() and (root / "parcels.gpkg").exists():
        return items_path
    root.mkdir(parents=True, exist_ok=True)
    tables = _parcel_tables()
    dates = _dates(n_dates)
    jobs = []
    for t, d in enumerate(dates):
        folder = root / "S2" / d.strftime("%Y%m%d")
        folder.mkdir(parents=True, exist_ok=True)
        offset = 1000 if d >= dt.date(2022, 1, 25) else 0
        for band in (*ORDER, "SCL"):
            path = folder / f"{band}.tif"
            if not path.exists():
                jobs.append((path, band, t, float((d - dates[0]).days), tables, offset))
    t0 = now()
    with mp.get_context("spawn").Pool(workers) as pool:
        for k, _ in enumerate(pool.imap_unordered(_write_band, jobs), 1):
            if k % 22 == 0 or k == len(jobs):
                print(f"  generated {k}/{len(jobs)} files ({now() - t0:.0f} s)", flush=True)
    _write_parcels(root / "parcels.gpkg", tables)
    _write_items(items_path, dates)
    return items_path


def _write_parcels(path: Path, tables: dict) -> None:
    import geopandas as gpd
    import shapely

    n = SIZE // CELL + (1 if SIZE % CELL else 0)
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    x0 = X0 + jj * CELL * 10 + 10
    y1 = Y0 - ii * CELL * 10 - 10
    x1 = np.minimum(x0 + CELL * 10 - 10, X0 + SIZE * 10)
    y0 = np.maximum(y1 - CELL * 10 + 10, Y0 - SIZE * 10)
    keep = (x1 > x0) & (y1 > y0)
    geoms = shapely.box(x0[keep], y0[keep], x1[keep], y1[keep])
    codes = {1: "TTP", 2: "ZELEN", 3: "JEC_J", 4: "PSE_O", 5: "REP_O", 6: "KUK_S", 7: "JETEL", 8: "REP_C",
             9: "LEN", 10: "SAD", 11: "CHMEL", 12: "VINICE", 13: "SLUN"}
    cls = tables["class"][ii[keep], jj[keep]]
    gdf = gpd.GeoDataFrame({"ID_DPB": np.arange(1, keep.sum() + 1), "KOD_PLODINY": [codes[int(c)] for c in cls]},
                           geometry=shapely.segmentize(geoms, 100.0), crs=f"EPSG:{EPSG}").to_crs(5514)
    gdf.to_file(path, layer="parcels", driver="GPKG")


def _write_items(path: Path, dates: list[dt.date]) -> None:
    feats = []
    for d in dates:
        baseline = "04.00" if d >= dt.date(2022, 1, 25) else "03.01"
        ymd = d.strftime("%Y%m%d")
        assets = {}
        for band in (*ORDER, "SCL"):
            res = 10 if band in BANDS10 else 20
            n = SIZE * 10 // res
            assets[band] = {"href": f"S2/{ymd}/{band}.tif", "type": "image/tiff; application=geotiff",
                            "roles": ["data"], "proj:epsg": EPSG, "proj:shape": [n, n],
                            "proj:transform": [float(res), 0.0, X0, 0.0, -float(res), Y0]}
        feats.append({
            "type": "Feature", "stac_version": "1.0.0", "id": f"S2A_MSIL2A_{ymd}T100031_N{baseline.replace('.', '')}_R122_T{TILE}_fulltile",
            "geometry": None, "bbox": None,
            "properties": {"datetime": f"{d.isoformat()}T10:00:31Z", "proj:epsg": EPSG, "s2:mgrs_tile": TILE,
                           "s2:processing_baseline": baseline, "eo:cloud_cover": 25.0},
            "assets": assets, "links": [],
        })
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="4GB", help="per worker")
    ap.add_argument("--chunksize", type=int, default=512)
    ap.add_argument("--workdir", default="/var/tmp/crop2seg-fulltile")
    ap.add_argument("--skip-raw", action="store_true", help="only the pipeline")
    ap.add_argument("--out", default="benchmarks/results/fulltile.json")
    a = ap.parse_args()

    from crop2seg_pipeline.build import build_dataset
    from crop2seg_pipeline.cluster import connect

    work = Path(a.workdir)
    print(f"tile: {SIZE} x {SIZE} px, {a.dates} dates, {(SIZE // CELL + 1) ** 2:,} parcels in EPSG:5514 -> {work}")
    t0 = now()
    items = generate(work / f"tile-{a.dates}d", a.dates, a.workers)
    print(f"tile ready ({now() - t0:.0f} s)")
    stores = {"raw": work / "raw.zarr", "pipeline": work / "pipeline.zarr"}
    for p in stores.values():
        shutil.rmtree(p, ignore_errors=True)
    result: dict = {"dates": a.dates, "workers": a.workers, "chunksize": a.chunksize, "size": SIZE}
    passes: dict[str, float] = {}
    # the local cluster crop2seg-build-dataset starts (its worker environment included)
    with connect("local", n_workers=a.workers, threads_per_worker=1, memory_limit=a.memory_limit,
                 dashboard_address=":0") as client:
        if not a.skip_raw:
            result["raw_cache_dropped"] = drop_caches()
            tasks = raw_tasks(items, str(stores["raw"]), 128, a.chunksize, SIZE, SIZE)
            with MemorySampler(client, interval=0.5) as mem:
                t0 = now()
                client.gather(client.compute(tasks))
                result["raw_s"] = now() - t0
            result["raw_load_avg"] = os.getloadavg()  # (1, 5, 15 min) at its end: how shared the cores were
            result["raw_total_peak_mb"] = mem.total_peak / 2**20
            print(f"raw I/O: {result['raw_s']:.0f} s, all processes peak {result['raw_total_peak_mb']:.0f} MB", flush=True)
            shutil.rmtree(stores["raw"], ignore_errors=True)
        result["pipeline_cache_dropped"] = drop_caches()
        marks: list[tuple[str, float]] = []

        def progress(msg: str) -> None:
            marks.append((msg, now()))
            if "%" not in msg or msg.endswith("(100%)") or "(100%)" in msg:
                print(f"  {msg}", flush=True)

        with MemorySampler(client, interval=0.5) as mem:
            t0 = now()
            summary = build_dataset(items, work / f"tile-{a.dates}d" / "parcels.gpkg", stores["pipeline"], client=client,
                                    min_crop_cover=0.0, chunksize=a.chunksize, progress=progress)
            result["pipeline_s"] = now() - t0
            result["pipeline_load_avg"] = os.getloadavg()
        starts = {label: next(t for m, t in marks if m.startswith(label)) for label in ("pass 1/2", "pass 2/2")}
        passes["before pass 1 (plan, parcels)"] = starts["pass 1/2"] - t0
        passes["pass 1 + skeleton"] = starts["pass 2/2"] - starts["pass 1/2"]
        ends = [t for m, t in marks if m.startswith("pass 2:") and "100%" in m]
        passes["pass 2"] = (ends[-1] if ends else t0 + result["pipeline_s"]) - starts["pass 2/2"]
        passes["statistics, footprints"] = t0 + result["pipeline_s"] - (ends[-1] if ends else t0 + result["pipeline_s"])
        result["passes_s"] = passes
        result["patches"] = summary.n_patches
        result["pipeline_total_peak_mb"] = mem.total_peak / 2**20
        result["pipeline_worker_peak_mb"] = {k: v / 2**20 for k, v in mem.per_worker_peak.items()}
    mpx = SIZE * SIZE * a.dates / 1e6
    result["pipeline_mpx_dates_s"] = mpx / result["pipeline_s"]
    if "raw_s" in result:
        result["raw_mpx_dates_s"] = mpx / result["raw_s"]
        result["ratio"] = result["raw_s"] / result["pipeline_s"]
    store_bytes = sum(f.stat().st_size for f in stores["pipeline"].rglob("*") if f.is_file())
    result["store_gb"] = store_bytes / 1e9
    shutil.rmtree(stores["pipeline"], ignore_errors=True)

    print()
    print_table([{"pass": k, "s": v} for k, v in passes.items()] + [{"pass": "whole build", "s": result["pipeline_s"]}],
                [("pass", "pipeline", ""), ("s", "seconds", ".0f")])
    print()
    rows = [{"what": "pipeline (build_dataset)", "s": result["pipeline_s"], "thr": result["pipeline_mpx_dates_s"],
             "rss": result["pipeline_total_peak_mb"]}]
    if "raw_s" in result:
        rows.append({"what": "raw I/O (same reads and writes)", "s": result["raw_s"], "thr": result["raw_mpx_dates_s"],
                     "rss": result["raw_total_peak_mb"]})
    print_table(rows, [("what", "", ""), ("s", "wall (s)", ".0f"), ("thr", "Mpx x dates / s", ".1f"),
                       ("rss", "peak RSS, all processes (MB)", ".0f")])
    if "ratio" in result:
        print(f"\npipeline / raw-I/O throughput: {result['ratio']:.2f}; {result['patches']} patches, "
              f"store {result['store_gb']:.1f} GB")
    print("load average (1/5/15 min) at the end of raw I/O: "
          f"{result.get('raw_load_avg')}, of the pipeline: {result['pipeline_load_avg']} on {os.cpu_count()} CPUs")
    write_json(a.out, result)


if __name__ == "__main__":
    main()
