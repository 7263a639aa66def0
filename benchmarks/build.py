"""Benchmark of crop2seg-build-dataset against a raw-I/O baseline, on growing scenes.

    python benchmarks/build.py                       # 1024, 2048, 4096 px, T=24
    python benchmarks/build.py --sizes 512 1024 --dates 12

For each scene size, on the same LocalCluster (2 workers x 1 thread, memory limit per worker):

- pipeline: the whole build (pass 1 + pass 2, every patch kept) through ``build_dataset``;
- raw I/O: the same COG windows read with rasterio (20 m bands repeated 2 x 2 to 10 m), cut into
  the same patches and written to a Zarr v3 array with the same codec, one task per chunk.

Prints a table and writes ``benchmarks/results/build.json``. Throughput is Mpixel x dates / s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import dask
import numpy as np
import rasterio
import zarr
from distributed import Client, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MemorySampler, now, print_table, write_json  # noqa: E402

from crop2seg_pipeline.build import build_dataset  # noqa: E402
from crop2seg_pipeline.demo import make_demo_scene  # noqa: E402
from crop2seg_pipeline.nomenclature import BANDS  # noqa: E402
from crop2seg_pipeline.store import CODEC  # noqa: E402


def _raw_chunk(paths: list[dict], offsets: list[int], out: str, index0: int, r0: int, c0: int, n_rows: int, n_cols: int, p: int) -> int:
    """Read one chunk's windows straight from the COGs and write its patches (raw I/O baseline)."""
    t = len(paths)
    h, w = n_rows * p, n_cols * p
    block = np.zeros((t, len(BANDS), h, w), np.uint16)
    for ti, item in enumerate(paths):
        for b, band in enumerate(BANDS):
            with rasterio.open(item[band]) as ds:
                if ds.res[0] == 10:
                    block[ti, b] = ds.read(1, window=((r0, r0 + h), (c0, c0 + w)))
                else:
                    a = ds.read(1, window=((r0 // 2, (r0 + h) // 2), (c0 // 2, (c0 + w) // 2)))
                    block[ti, b] = np.repeat(np.repeat(a, 2, 0), 2, 1)
        with rasterio.open(item["SCL"]) as ds:
            ds.read(1, window=((r0 // 2, (r0 + h) // 2), (c0 // 2, (c0 + w) // 2)))
        off = offsets[ti]
        if off:
            v = block[ti].astype(np.int32) + off
            np.maximum(v, 1, out=v)
            v[block[ti] == 0] = 0
            block[ti] = v
    arr = zarr.open_array(out, mode="r+")
    k = index0
    for i in range(n_rows):
        for j in range(n_cols):
            arr[k] = block[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p]
            k += 1
    return block.nbytes


def raw_baseline(scene, out: str, patch: int, chunk_patches: int, client: Client) -> float:
    items = json.loads(Path(scene.items).read_text())["features"]
    root = Path(scene.items).parent
    paths = [{b: str(root / it["assets"][b]["href"]) for b in (*BANDS, "SCL")} for it in items]
    offsets = [int(round(it["assets"]["B02"].get("raster:offset", 0) / 1e-4)) for it in items]
    n_r, n_c = scene.grid.height // patch, scene.grid.width // patch
    zarr.create_array(out, shape=(n_r * n_c, len(items), len(BANDS), patch, patch), chunks=(1, len(items), len(BANDS), patch, patch),
                      dtype="uint16", compressors=[CODEC], fill_value=0, zarr_format=3, overwrite=True)
    tasks, k = [], 0
    for br in range(0, n_r, chunk_patches):
        for bc in range(0, n_c, chunk_patches):
            rows, cols = min(chunk_patches, n_r - br), min(chunk_patches, n_c - bc)
            tasks.append(dask.delayed(_raw_chunk)(paths, offsets, out, k, br * patch, bc * patch, rows, cols, patch))
            k += rows * cols
    t0 = now()
    client.gather(client.compute(tasks))
    return now() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="6GB")
    ap.add_argument("--patch-size", type=int, default=128)
    ap.add_argument("--chunk-patches", type=int, default=4)
    ap.add_argument("--workdir", default=None, help="where scenes are generated (kept between runs)")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "build.json"))
    args = ap.parse_args()
    work = Path(args.workdir or Path(tempfile.gettempdir()) / "crop2seg-bench")
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit, dashboard_address=":0") as lc, Client(lc) as client:
        print(f"cluster: {args.workers} workers x 1 thread, {args.memory_limit} each; dashboard {client.dashboard_link}")
        for size in args.sizes:
            scene = make_demo_scene(work / f"scene-{size}-{args.dates}", size=size, n_dates=args.dates, seed=0)
            px = size * size * args.dates / 1e6
            out_pipe, out_raw = work / f"pipeline-{size}.zarr", work / f"raw-{size}.zarr"
            for p in (out_pipe, out_raw):
                shutil.rmtree(p, ignore_errors=True)
            client.run(lambda: __import__("gc").collect())
            with MemorySampler(client) as mem_raw:
                t_raw = raw_baseline(scene, str(out_raw), args.patch_size, args.chunk_patches, client)
            client.run(lambda: __import__("gc").collect())
            with MemorySampler(client) as mem_pipe:
                t0 = now()
                summary = build_dataset(scene.items, scene.parcels, out_pipe, mapping=scene.mapping, client=client,
                                        patch_size=args.patch_size, chunksize=args.chunk_patches * args.patch_size, min_crop_cover=0.0)
                t_pipe = now() - t0
            row = {
                "size": size, "dates": args.dates, "patches": summary.n_patches,
                "pipeline_s": t_pipe, "raw_s": t_raw,
                "pipeline_mpx_dates_s": px / t_pipe, "raw_mpx_dates_s": px / t_raw,
                "ratio": t_raw / t_pipe,
                "worker_peak_mb": mem_pipe.worker_peak_max / 2**20, "raw_worker_peak_mb": mem_raw.worker_peak_max / 2**20,
                "total_peak_mb": mem_pipe.total_peak / 2**20,
                "per_worker_peak_mb": {k: v / 2**20 for k, v in mem_pipe.per_worker_peak.items()},
            }
            rows.append(row)
            print(f"size {size}: pipeline {t_pipe:.1f} s, raw {t_raw:.1f} s, ratio {row['ratio']:.2f}, "
                  f"worker peak {row['worker_peak_mb']:.0f} MB", flush=True)
    base = rows[0]["worker_peak_mb"]
    for r in rows:
        r["worker_peak_vs_smallest"] = r["worker_peak_mb"] / base
    print()
    table = print_table(rows, [
        ("size", "scene (px)", ""), ("dates", "T", ""), ("patches", "patches", ""),
        ("pipeline_s", "pipeline (s)", ".1f"), ("raw_s", "raw I/O (s)", ".1f"),
        ("pipeline_mpx_dates_s", "pipeline Mpx·dates/s", ".1f"), ("raw_mpx_dates_s", "raw Mpx·dates/s", ".1f"),
        ("ratio", "pipeline / raw", ".2f"), ("worker_peak_mb", "peak RSS / worker (MB)", ".0f"),
        ("worker_peak_vs_smallest", "vs smallest", ".2f"), ("raw_worker_peak_mb", "raw peak / worker (MB)", ".0f"),
        ("total_peak_mb", "all processes (MB)", ".0f"),
    ])
    write_json(args.json, {"args": vars(args), "rows": rows, "table": table})


if __name__ == "__main__":
    main()
