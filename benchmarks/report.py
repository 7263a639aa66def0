"""Benchmark of crop2seg-report on patch stores of growing size: time and worker memory.

    python benchmarks/report.py                       # 512, 1024, 2048 px demo scenes, T=24
    python benchmarks/report.py --sizes 512 1024 --dates 12

For each size a demo store is built (128 px patches, every patch kept), then its report is made
on a LocalCluster of 2 workers x 1 thread. Worker memory (peak RSS sampled from the workers) must
stay flat while the store grows: each task reads one patch, the tree reduction holds a few small
summaries. "whole report" is a second full run including the figures (drawn on the client).
Baseline in the same run: the same patches read (``s2`` decoded, nothing computed) one
task per patch on the same cluster.

Prints a table and writes ``benchmarks/results/report.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import dask
import numpy as np
from distributed import Client, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MemorySampler, now, print_table, write_json  # noqa: E402

from crop2seg_pipeline.build import build_dataset  # noqa: E402
from crop2seg_pipeline.demo import make_demo_scene  # noqa: E402
from crop2seg_pipeline.report import make_report  # noqa: E402
from crop2seg_pipeline.report.store_stats import store_statistics  # noqa: E402
from crop2seg_pipeline.store import open_store  # noqa: E402


def _nbytes(block: np.ndarray) -> int:
    return int(block.nbytes)


def read_baseline(store: Path, client: Client) -> float:
    """Decode every patch of ``s2`` once, one task per patch (the I/O floor of the report)."""
    blocks = open_store(store)["s2"].data.to_delayed().ravel()
    t0 = now()
    client.compute([dask.delayed(_nbytes)(b) for b in blocks], sync=True)
    return now() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--memory-limit", default="6GB")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "report.json"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-report-"))
    rows = []
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=args.memory_limit,
                          dashboard_address=":0") as lc, Client(lc) as client:
            for size in args.sizes:
                scene = make_demo_scene(work / f"scene-{size}", size=size, n_dates=args.dates, seed=11)
                store = work / f"store-{size}.zarr"
                build_dataset(scene.items, scene.parcels, store, mapping=scene.mapping, patch_size=128,
                              min_crop_cover=0.0, client=client, progress=lambda m: None)
                ds = open_store(store)
                n, raw_gb = ds.sizes["patch"], ds["s2"].nbytes / 1e9
                base = read_baseline(store, client)
                before = max(client.run(lambda: __import__("psutil").Process().memory_info().rss).values())
                with MemorySampler(client) as mem:
                    t0 = now()
                    store_statistics(store, client=client, progress=lambda m: None)
                    reduce_s = now() - t0
                    make_report(store, work / f"report-{size}", client=client, progress=lambda m: None)
                    seconds = now() - t0 - reduce_s
                rows.append({"size": size, "patches": n, "s2_gb": raw_gb, "reduce_s": reduce_s, "read_s": base,
                             "ratio": base / reduce_s, "report_s": seconds,
                             "worker_peak_mb": mem.worker_peak_max / 2**20, "worker_before_mb": before / 2**20})
                print(f"{size} px: {n} patches, {raw_gb:.2f} GB of s2, reduction {reduce_s:.1f} s (read alone "
                      f"{base:.1f} s), whole report {seconds:.1f} s, worker peak {rows[-1]['worker_peak_mb']:.0f} MB",
                      flush=True)
                shutil.rmtree(scene.items.parent, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]["worker_peak_mb"]
    for r in rows:
        r["peak_vs_smallest"] = r["worker_peak_mb"] / base
    print_table(rows, [
        ("size", "scene (px)", ""), ("patches", "patches", ""), ("s2_gb", "s2 (GB, decoded)", ".2f"),
        ("reduce_s", "reduction (s)", ".1f"), ("read_s", "read alone (s)", ".1f"),
        ("ratio", "read / reduction throughput", ".2f"), ("report_s", "whole report (s)", ".1f"),
        ("worker_before_mb", "RSS / worker before (MB)", ".0f"), ("worker_peak_mb", "peak RSS / worker (MB)", ".0f"),
        ("peak_vs_smallest", "vs smallest", ".2f"),
    ])
    write_json(args.out, {"rows": rows, "dates": args.dates, "workers": "2 x 1 thread"})


if __name__ == "__main__":
    main()
