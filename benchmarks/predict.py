"""Benchmark whole-tile inference (not run in CI).

For growing square areas of a demo scene (all its dates), measures

* the whole pipeline (:func:`crop2seg_pipeline.predict.predict` on a fresh LocalCluster started
  as ``crop2seg-predict`` starts it, with :data:`crop2seg_pipeline.cluster.WORKER_ENV`: cube
  reads, windows, model, blending, COG writing) in Mpixel/s: "cold", the first predict on the
  cluster, which pays the workers' imports and model load as the command does; and "warm", a
  second predict on the same cluster (the model already in the workers' cache), as the web
  app, a notebook or a long-lived cluster predicts its second area;
* the bare model in one process on the same number of windows as the area's plan (random
  uint16 inputs of the same shape, the same batch size, the same per-batch standardization and
  masked softmax, ``torch.inference_mode``, the same malloc tuning as the workers), with torch
  using as many threads as the cluster's workers x threads in all (the same cores), in Mpixel/s
  of the area;
* the peak resident memory of each worker (sampled with psutil through ``client.run``) and of
  the client process.

    python benchmarks/predict.py --sizes 256,512,1024 --dates 12 --out bench-predict.json

``--repeat N`` keeps the best of N runs of each measurement (for shared, noisy machines).
``windows`` is planned/computed: since each window is owned by the one chunk holding its center,
computed == planned (before, windows straddling a chunk edge ran in both chunks).

Weights: ``--weights DIR`` or a randomly initialised (seeded) ``utae-small`` with 128 px windows
(speed does not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from crop2seg_pipeline.cluster import worker_environment
from crop2seg_pipeline.cube import load_cube
from crop2seg_pipeline.demo import make_demo_scene
from crop2seg_pipeline.kernels.windows import owned_windows, plan_axis
from crop2seg_pipeline.malloc import tune_malloc
from crop2seg_pipeline.models import build_model, load_model, save_weights
from crop2seg_pipeline.nomenclature import BANDS, CLASS_NAMES
from crop2seg_pipeline.predict import predict, read_model_spec


def _random_weights(folder: Path, scene) -> Path:
    cube = load_cube(scene.items, chunksize=256).isel(y=slice(0, 256), x=slice(0, 256))
    s2 = cube["s2"].values.astype(np.float64)
    torch.manual_seed(0)
    model = build_model("utae-small", len(CLASS_NAMES))
    return save_weights(model, folder, {
        "bands": list(BANDS), "normalization": {"mean": s2.mean(axis=(0, 2, 3)), "std": s2.std(axis=(0, 2, 3))},
        "class_names": list(CLASS_NAMES), "reference_date": "2021-09-01", "patch_size": 128, "ignore_index": 14,
    })


def _windows(size: int, chunk: int, P: int, stride: int) -> tuple[int, int]:
    """(windows planned on the area, windows computed by the chunk tasks)."""
    o = plan_axis(size, P, stride)
    bounds = list(range(0, size, chunk)) + [size]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < P:  # merged as predict does
        bounds.pop(-2)
    per_axis = sum(len(owned_windows(o, P, bounds, k)) for k in range(len(bounds) - 1))  # one owner per window
    return len(o) ** 2, per_axis**2


def _bare_model(weights: Path, n_windows: int, T: int, P: int, batch: int, threads: int) -> float:
    """Seconds of the model alone on ``n_windows`` windows: per batch, uint16 -> float32 standardized
    in place, forward, masked softmax (as the pipeline), in one process on ``threads`` torch threads."""
    torch.set_num_threads(threads)
    tune_malloc()  # as the pipeline's workers do (see crop2seg_pipeline/malloc.py)
    model = load_model(weights)
    spec = read_model_spec(weights)
    rng = np.random.default_rng(0)
    x = rng.integers(1, 4000, (batch, T, len(spec.bands), P, P)).astype(np.uint16)
    buf = np.empty(x.shape, np.float32)
    pos = torch.arange(T, dtype=torch.float32)[None].expand(batch, -1) * 20
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)
    std = np.where(std > 0, std, np.float32(1))[:, None, None]
    t0 = time.perf_counter()
    done = 0
    with torch.inference_mode():
        while done < n_windows:
            n = min(batch, n_windows - done)
            xb = buf[:n]
            np.subtract(x[:n], mean, out=xb, dtype=np.float32)  # = kernels.windows.preprocess, in place
            np.divide(xb, std, out=xb)
            xt = torch.from_numpy(xb)
            logits = model(xt, pos[:n])
            logits[:, spec.ignore_index] = float("-inf")
            torch.softmax(logits, dim=1)
            done += n
    return time.perf_counter() - t0


class _MemorySampler:
    def __init__(self, client, every: float = 0.2):
        self.client, self.every, self.peak = client, every, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                for w, rss in self.client.run(lambda: psutil.Process().memory_info().rss).items():
                    self.peak[w] = max(self.peak.get(w, 0), rss)
            except Exception:  # noqa: BLE001 - sampling is best effort
                pass
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256,512,1024", help="area sides in px (comma-separated)")
    ap.add_argument("--dates", type=int, default=12, help="dates of the demo scene")
    ap.add_argument("--scene", default=None, help="demo scene folder (default: a cache in the temp dir)")
    ap.add_argument("--weights", default=None, help="weights folder (default: random utae-small, 128 px)")
    ap.add_argument("--chunksize", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--threads-per-worker", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="best of N runs of each measurement")
    ap.add_argument("--out", default="bench-predict.json")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    from distributed import Client, LocalCluster

    scene_dir = Path(args.scene or Path(tempfile.gettempdir()) / f"crop2seg-bench-scene-{max(sizes)}-{args.dates}")
    scene = make_demo_scene(scene_dir, size=max(max(sizes), 64), n_dates=args.dates, seed=0)
    work = Path(tempfile.mkdtemp(prefix="crop2seg-bench-"))
    weights = Path(args.weights) if args.weights else _random_weights(work / "weights", scene)
    spec = read_model_spec(weights)
    P, stride = spec.patch_size, spec.patch_size - args.overlap
    g = scene.grid
    rows = []
    threads = args.workers * args.threads_per_worker  # the bare model uses the cluster's cores
    for size in sizes:
        bbox = (g.x0, g.y0 - size * g.resolution, g.x0 + size * g.resolution, g.y0)
        best, warm_best, peak_any = None, None, 0
        for rep in range(args.repeat):
            # a fresh cluster per run (client.restart() can hang on a loaded machine): the first
            # predict pays what crop2seg-predict pays (worker imports, model load: "cold"); the
            # second on the same cluster finds the model in the workers' cache, as the web app or
            # a notebook's second area does ("warm")
            with worker_environment(), LocalCluster(n_workers=args.workers, threads_per_worker=args.threads_per_worker,
                                                    dashboard_address=":0") as lc, Client(lc) as client:
                client.wait_for_workers(args.workers)
                with _MemorySampler(client) as mem:
                    runs = [predict(scene.items, weights, work / f"out-{size}-{rep}-{k}", bbox=bbox,
                                    bbox_crs=f"EPSG:{g.epsg}", overlap=args.overlap, batch_size=args.batch_size,
                                    chunksize=args.chunksize, client=client, progress=lambda m: None)
                            for k in ("cold", "warm")]
            s, warm = runs
            peak = max(mem.peak.values(), default=0)
            if best is None or s.seconds < best[0].seconds:
                best = (s, dict(mem.peak))
            if warm_best is None or warm.seconds < warm_best.seconds:
                warm_best = warm
            peak_any = max(peak, peak_any)
        s, peaks = best
        planned, computed = _windows(size, args.chunksize, P, stride)
        bare_s = min(_bare_model(weights, planned, s.n_dates, P, args.batch_size, threads)
                     for _ in range(args.repeat))
        mpx = size * size / 1e6
        rows.append({
            "size": size, "dates": s.n_dates, "chunks": s.n_chunks, "windows_planned": planned,
            "windows_computed": computed, "pipeline_s": s.seconds, "pipeline_mpx_s": round(mpx / s.seconds, 4),
            "pipeline_warm_s": warm_best.seconds,
            "bare_model_s": round(bare_s, 3), "bare_model_mpx_s": round(mpx / bare_s, 4),
            "ratio": round(bare_s / s.seconds, 3), "ratio_warm": round(bare_s / warm_best.seconds, 3),
            "peak_worker_rss_mb": round(peak_any / 2**20, 1),
            "peak_worker_rss_mb_each": {w: round(v / 2**20, 1) for w, v in peaks.items()},
        })
        print(f"size {size}: pipeline {s.seconds:.1f} s (warm {warm_best.seconds:.1f} s), bare model {bare_s:.1f} s",
              file=sys.stderr)
    client_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads_bare": threads,
                    "workers": args.workers, "threads_per_worker": args.threads_per_worker,
                    "load_avg_at_end": os.getloadavg()},
        "settings": {"patch_size": P, "overlap": args.overlap, "batch_size": args.batch_size,
                     "chunksize": args.chunksize, "weights": str(weights), "repeat": args.repeat},
        "client_peak_rss_mb": round(client_peak, 1),
        "rows": rows,
    }
    hdr = (f"{'size':>6} {'T':>3} {'chunks':>6} {'windows':>9} {'pipeline s':>10} {'Mpx/s':>7} {'warm s':>7} "
           f"{'bare s':>7} {'bare Mpx/s':>10} {'ratio':>6} {'warm':>6} {'peak worker MB':>14}")
    print(hdr)
    for r in rows:
        print(f"{r['size']:>6} {r['dates']:>3} {r['chunks']:>6} {r['windows_planned']:>4}/{r['windows_computed']:<4} "
              f"{r['pipeline_s']:>10.2f} {r['pipeline_mpx_s']:>7.3f} {r['pipeline_warm_s']:>7.2f} "
              f"{r['bare_model_s']:>7.2f} {r['bare_model_mpx_s']:>10.3f} {r['ratio']:>6.2f} {r['ratio_warm']:>6.2f} "
              f"{r['peak_worker_rss_mb']:>14.0f}")
    print(f"client peak RSS {client_peak:.0f} MB; windows = planned/computed; ratio = pipeline Mpx/s / bare model Mpx/s "
          "(warm: the second predict on the same cluster); "
          f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
