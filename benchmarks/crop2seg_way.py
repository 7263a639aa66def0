"""The whole-tile-in-RAM way (Crop2Seg's dataset build) beside crop2seg-build-dataset, same scene.

    python benchmarks/crop2seg_way.py [--size 2048] [--dates 24] [--workers 2]

The Crop2Seg way, as its ``dataset_creator.py`` does it (read from the seed notes), in one
process: every band of every date read whole into one (time, band, y, x) uint16 array (20 m
bands repeated 2 x 2, as our default ``nearest``; Crop2Seg's cubic would only be slower), labels
rasterized once over the whole area, every 128 px patch cut and saved uncompressed with
``np.save`` (``DATA_S2/S2_{id}.npy``, ``ANNOTATIONS/TARGET_{id}.npy``). Then the same scene
through ``build_dataset`` (every patch kept) on a LocalCluster of ``--workers`` x 1 thread started
beforehand. Both write every patch; wall time and peak RSS (all processes, sampled) are printed
side by side and written as JSON. Page cache dropped before each run when allowed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MemorySampler, drop_caches, now, print_table, write_json  # noqa: E402

PATCH = 128


def crop2seg_way(scene, out: Path) -> int:
    """Whole area in RAM, one process, uncompressed .npy patches; returns the patch count."""
    import geopandas as gpd
    import rasterio
    import rasterio.features

    from crop2seg_pipeline.mapping import CropMapping
    from crop2seg_pipeline.nomenclature import BANDS

    doc = json.loads(Path(scene.items).read_text())
    items = sorted(doc["features"], key=lambda it: it["properties"]["datetime"])
    root = Path(scene.items).parent
    H, W = scene.grid.shape
    cube = np.zeros((len(items), len(BANDS), H, W), np.uint16)
    for t, it in enumerate(items):
        off = int(round(it["assets"]["B02"].get("raster:offset", 0) / 1e-4))
        for b, band in enumerate(BANDS):
            with rasterio.open(root / it["assets"][band]["href"]) as ds:
                a = ds.read(1)
            if a.shape != (H, W):
                a = np.repeat(np.repeat(a, 2, 0), 2, 1)
            if off:
                valid = a > 0
                a = np.where(valid, np.maximum(a.astype(np.int32) + off, 1), 0).astype(np.uint16)
            cube[t, b] = a
        with rasterio.open(root / it["assets"]["SCL"]["href"]) as ds:
            ds.read(1)
    gdf = gpd.read_file(scene.parcels).to_crs(scene.grid.epsg)
    mapping = CropMapping.read(scene.mapping)
    classes = mapping.map(gdf["KOD_PLODINY"]).to_numpy()
    label = rasterio.features.rasterize(zip(gdf.geometry, classes), out_shape=(H, W), transform=scene.grid.transform,
                                        fill=0, dtype="uint8")
    (out / "DATA_S2").mkdir(parents=True)
    (out / "ANNOTATIONS").mkdir()
    k = 0
    for r in range(H // PATCH):
        for c in range(W // PATCH):
            np.save(out / "DATA_S2" / f"S2_{k}.npy", cube[:, :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH])
            np.save(out / "ANNOTATIONS" / f"TARGET_{k}.npy", label[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH])
            k += 1
    return k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunksize", type=int, default=512)
    ap.add_argument("--scene-dir", default=str(Path(tempfile.gettempdir()) / "crop2seg-bench-scenes"))
    ap.add_argument("--out", default="benchmarks/results/crop2seg_way.json")
    a = ap.parse_args()

    from distributed import Client, LocalCluster

    from crop2seg_pipeline.build import build_dataset
    from crop2seg_pipeline.demo import make_demo_scene

    scene = make_demo_scene(Path(a.scene_dir) / f"{a.size}px-{a.dates}d", size=a.size, n_dates=a.dates, seed=0)
    work = Path(tempfile.mkdtemp(prefix="crop2seg-way-"))
    rows = []
    try:
        dropped = drop_caches()
        with MemorySampler(interval=0.2) as mem:
            t0 = now()
            n = crop2seg_way(scene, work / "npy")
            t_way = now() - t0
        rows.append({"what": "whole tile in RAM, 1 process, .npy (Crop2Seg)", "s": t_way, "patches": n,
                     "rss": mem.total_peak / 2**20, "cache_dropped": dropped})
        shutil.rmtree(work / "npy")
        with LocalCluster(n_workers=a.workers, threads_per_worker=1, dashboard_address=":0") as lc, Client(lc) as client:
            client.run(lambda: None)
            dropped = drop_caches()
            with MemorySampler(client, interval=0.2) as mem:
                t0 = now()
                s = build_dataset(scene.items, scene.parcels, work / "store.zarr", mapping=scene.mapping, client=client,
                                  min_crop_cover=0.0, chunksize=a.chunksize, progress=lambda m: None)
                t_build = now() - t0
        rows.append({"what": f"crop2seg-build-dataset, {a.workers} workers x 1 thread", "s": t_build,
                     "patches": s.n_patches, "rss": mem.total_peak / 2**20, "cache_dropped": dropped,
                     "worker_peak_mb": mem.worker_peak_max / 2**20})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{a.size} x {a.size} px, {a.dates} dates (demo scene, seed 0), every patch written")
    print_table(rows, [("what", "", ""), ("s", "wall (s)", ".1f"), ("patches", "patches", ""),
                       ("rss", "peak RSS, all processes (MB)", ".0f")])
    print(f"build / whole-tile-in-RAM time: {rows[1]['s'] / rows[0]['s']:.2f}")
    write_json(a.out, {"size": a.size, "dates": a.dates, "rows": rows})


if __name__ == "__main__":
    main()
