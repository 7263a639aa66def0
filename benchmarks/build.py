"""Benchmark of crop2seg-build-dataset against a raw-I/O baseline, on growing scenes.

    python benchmarks/build.py                       # 1024, 2048, 4096 px, T=24
    python benchmarks/build.py --sizes 512 1024 --dates 12

For each scene size, on the same LocalCluster (2 workers x 1 thread, memory limit per worker):

- pipeline: the whole build (pass 1 + pass 2, every patch kept) through ``build_dataset``;
- raw I/O (``benchmarks/rawio.py``): the same COG windows read with rasterio (20 m bands repeated
  2 x 2 to 10 m, files kept open), cut into the same patches and written to a Zarr v3 array with
  the same codec, one task per chunk.

Prints a table and writes ``benchmarks/results/build.json``. Throughput is Mpixel x dates / s.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from distributed import Client, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MemorySampler, now, print_table, write_json  # noqa: E402
from rawio import raw_tasks  # noqa: E402

from crop2seg_pipeline.build import build_dataset  # noqa: E402
from crop2seg_pipeline.demo import make_demo_scene  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="6GB")
    ap.add_argument("--patch-size", type=int, default=128)
    ap.add_argument("--chunksize", type=int, default=512, help="work chunk side (px)")
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
                tasks = raw_tasks(scene.items, str(out_raw), args.patch_size, args.chunksize, size, size)
                t0 = now()
                client.gather(client.compute(tasks))
                t_raw = now() - t0
            client.run(lambda: __import__("gc").collect())
            with MemorySampler(client) as mem_pipe:
                t0 = now()
                summary = build_dataset(scene.items, scene.parcels, out_pipe, mapping=scene.mapping, client=client,
                                        patch_size=args.patch_size, chunksize=args.chunksize, min_crop_cover=0.0)
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
