"""Training throughput: patches/s and the share of step time spent waiting for data.

Runs a few training steps of the real training loop pieces (PatchDataset over Zarr ->
TrainTransform -> collate_patches -> U-TAE forward/backward/Adam) with several DataLoader
worker counts, and reports for each the steady-state patches/s and the data-wait share
(time blocked in ``next(loader)`` / step time; the goal is < 10 %). The first ``--warmup``
steps (worker start-up, allocator warm-up) are timed apart.

    python benchmarks/train.py                                 # synthetic 128 px store
    python benchmarks/train.py --dataset crop2seg-demo/patches.zarr --workers 0,2,4 --steps 20

Prints a table and writes JSON (``--json``, default ``benchmark-train.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from crop2seg_pipeline.dataset import PatchDataset
from crop2seg_pipeline.device import resolve_device
from crop2seg_pipeline.loss import class_weights, weighted_cross_entropy
from crop2seg_pipeline.malloc import tune_malloc
from crop2seg_pipeline.models import build_model
from crop2seg_pipeline.nomenclature import BANDS, CLASS_NAMES, N_CLASSES
from crop2seg_pipeline.store import create_skeleton, finalize, read_attrs, write_patches
from crop2seg_pipeline.augment import TemporalAugment, TrainTransform
from crop2seg_pipeline.train import intra_op_threads, make_loader


def synthetic_store(path: Path, n: int, size: int, t: int, seed: int = 0) -> Path:
    """A store of ``n`` train patches with blocky labels and smooth, class-dependent series."""
    rng = np.random.default_rng(seed)
    dates = np.full((n, t), np.datetime64("NaT"), "datetime64[ns]")
    days = np.datetime64("2021-03-01") + np.sort(rng.choice(240, t, replace=False)).astype("timedelta64[D]")
    dates[:] = days
    clear = np.ones((n, t), np.float32)
    patches = pd.DataFrame({"tile": ["33UWQ"] * n, "row": np.arange(n), "col": np.zeros(n, int),
                            "split": ["train"] * n, "epsg": [32633] * n,
                            "x0": np.full(n, 500000.0), "y0": 5500000.0 - 10.0 * size * np.arange(n)})
    create_skeleton(path, patches, dates, clear, BANDS, size, {"class_names": list(CLASS_NAMES)})
    block = max(size // 8, 1)
    counts = np.zeros(N_CLASSES, np.int64)
    for i in range(n):
        coarse = rng.integers(0, 8, (size // block + 1, size // block + 1))
        label = np.kron(coarse, np.ones((block, block), int))[:size, :size].astype(np.uint8)
        counts += np.bincount(label.ravel(), minlength=N_CLASSES)
        curve = 1000 + 200 * label[None, None] * np.sin(np.linspace(0, 3, t))[:, None, None, None]
        s2 = (curve + rng.normal(0, 80, (t, len(BANDS), size, size))).clip(1, 10000).astype(np.uint16)
        write_patches(path, [i], s2[None], label[None], label[None].astype(np.int32))
    finalize(path, {"normalization": {"train": {"mean": [1500.0] * len(BANDS), "std": [500.0] * len(BANDS)}},
                    "class_pixel_counts": {"train": counts.tolist(), "val": [0] * N_CLASSES,
                                           "test": [0] * N_CLASSES}})
    return path


def bench(store: str, model_name: str, batch_size: int, workers: int, steps: int, warmup: int,
          device: torch.device, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    # the augmentation crop2seg-train applies by default (spatial + temporal)
    ds = PatchDataset(store, split="train", transform=TrainTransform(seed=seed, augment=True, temporal=TemporalAugment()))
    net = build_model(model_name, n_classes=N_CLASSES, input_dim=len(ds.bands)).to(device).train()
    counts = (read_attrs(store).get("class_pixel_counts") or {}).get("train") or [1] * N_CLASSES
    weight = class_weights(counts).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sync = device.type == "cuda"
    waits, totals, sizes = [], [], []
    epoch = 0
    t_first = None
    t_start = time.perf_counter()
    while len(totals) < warmup + steps:
        epoch += 1
        ds.transform.epoch = epoch
        loader = make_loader(ds, batch_size, True, workers, seed=seed, epoch=epoch, pin_memory=sync)
        it = iter(loader)
        while len(totals) < warmup + steps:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            if t_first is None:
                t_first = t1 - t_start
            logits = net(batch["s2"].to(device, non_blocking=True), batch["positions"].to(device))
            s, w = weighted_cross_entropy(logits, batch["label"].to(device), weight)
            opt.zero_grad(set_to_none=True)
            (s / w.clamp_min(1e-12)).backward()
            opt.step()
            if sync:
                torch.cuda.synchronize(device)
            waits.append(t1 - t0)
            totals.append(time.perf_counter() - t0)
            sizes.append(batch["s2"].shape[0])
        del it, loader  # shuts the workers down
    w, tt, n = (np.array(v[warmup:], float) for v in (waits, totals, sizes))
    return {
        "workers": workers,
        "steps": int(len(tt)),
        "batch_size": batch_size,
        "patches_per_s": float(n.sum() / tt.sum()),
        "data_wait_share": float(w.sum() / tt.sum()),
        "step_ms_median": float(1000 * np.median(tt)),
        "wait_ms_median": float(1000 * np.median(w)),
        "first_batch_s": float(t_first or 0.0),
        "warmup_steps": warmup,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--dataset", help="patch store (default: a synthetic one in a temp folder)")
    ap.add_argument("--patches", type=int, default=24, help="synthetic store: number of patches")
    ap.add_argument("--patch-size", type=int, default=128, help="synthetic store: patch side")
    ap.add_argument("--dates", type=int, default=20, help="synthetic store: dates per patch")
    ap.add_argument("--model", default="utae-small", choices=["utae-small", "utae"])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per worker count")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    ap.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default="benchmark-train.json", help="result file")
    args = ap.parse_args(argv)
    tune_malloc()  # as crop2seg-train does

    device = resolve_device(args.device)
    tmp = None
    store = args.dataset
    if store is None:
        tmp = tempfile.TemporaryDirectory(prefix="c2s-bench-")
        t0 = time.perf_counter()
        store = str(synthetic_store(Path(tmp.name) / "patches.zarr", args.patches, args.patch_size, args.dates))
        print(f"synthetic store: {args.patches} patches of {args.dates} x {len(BANDS)} x "
              f"{args.patch_size}^2 in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    try:
        rows = []
        for w in (int(v) for v in args.workers.split(",")):
            with intra_op_threads(device, w) as threads:  # the same thread policy as train()
                rows.append({**bench(store, args.model, args.batch_size, w, args.steps, args.warmup, device),
                             "torch_threads": threads})
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(f"\ntraining throughput: {args.model}, batch {args.batch_size}, device {device}, {os.cpu_count()} CPUs")
    print(f"{'workers':>7} {'threads':>7} {'patches/s':>10} {'data wait':>10} {'step ms':>8} {'wait ms':>8} "
          f"{'1st batch s':>11}")
    for r in rows:
        flag = "" if r["data_wait_share"] < 0.10 else "  <- above the 10 % goal"
        print(f"{r['workers']:>7} {r['torch_threads']:>7} {r['patches_per_s']:>10.2f} {100 * r['data_wait_share']:>9.1f}% "
              f"{r['step_ms_median']:>8.0f} {r['wait_ms_median']:>8.1f} {r['first_batch_s']:>11.2f}{flag}")
    doc = {
        "benchmark": "train",
        "store": args.dataset or f"synthetic ({args.patches} x {args.dates} x {args.patch_size}^2)",
        "model": args.model,
        "device": str(device),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "results": rows,
    }
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
