"""Every architecture's CPU preset, same data, same budget, scored on a scene none of them saw (not run in CI).

    python benchmarks/models.py [--epochs 2] [--work DIR] [--out benchmarks/results/models.json]

Data (synthetic demo scenes, ``crop2seg_pipeline.demo``):

* **train**: the multi-scene store of the demo-weights recipe (``workflows/train-demo-weights.sh``):
  5 scenes of 512 px, seeds 101-105, each its own tile and season, 12-30 dates, merged into one
  store, every patch trained on;
* **test**: a scene no model trains or validates on: seed 107, tile 33UXS, season 2020/21, 16
  dates, 768 px; its store's patches (all splits) are scored with ``evaluate`` (all pixels, and
  parcel-boundary pixels: ``region='boundary'``), and the whole scene is predicted with
  :func:`crop2seg_pipeline.predict.predict` on one LocalCluster (2 workers x 1 thread) for the
  predict throughput.

Every model gets the same budget: ``--epochs`` epochs on 64 px patches, batch 2, lr 3e-3 cosine, seed 0, default
temporal augmentation, day-of-year dates, no validation (the last epoch is scored: nothing is picked on the test
scene). Prints a table (parameters, test OA / macro mIoU / boundary mIoU, training patches/s,
predict Mpx/s) and writes JSON. The budget is tiny (minutes of CPU per model): the figures rank
small presets after a few epochs on synthetic data, they are not Crop2Seg's results.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from crop2seg_pipeline.build import build_dataset  # noqa: E402
from crop2seg_pipeline.demo import make_demo_scene  # noqa: E402
from crop2seg_pipeline.evaluate import evaluate  # noqa: E402
from crop2seg_pipeline.kernels.metrics import metrics_from_confusion  # noqa: E402
from crop2seg_pipeline.nomenclature import CLASS_NAMES, NOT_CLASSIFIED  # noqa: E402
from crop2seg_pipeline.scenes import merge_scenes  # noqa: E402
from crop2seg_pipeline.store import open_store  # noqa: E402
from crop2seg_pipeline.train import train  # noqa: E402

#: (seed, tile, year, dates) of the training scenes: those of workflows/train-demo-weights.sh.
TRAIN_SCENES = [(101, "33UVS", 2019, 30), (102, "33UVR", 2020, 14), (103, "33UWR", 2021, 24),
                (104, "33UYR", 2023, 12), (105, "33UUQ", 2024, 18)]
TRAIN_SIZE = 512
#: The test scene: seed, tile, season and date count no training scene has.
TEST_SCENE = (107, "33UXS", 2021, 16)
TEST_SIZE = 768
MODELS = ["utae-small", "timeunet-small", "wtae-small", "unet3d-small"]


def scene(work: Path, seed: int, tile: str, year: int, dates: int, size: int):
    return make_demo_scene(work / "scenes" / f"s{seed}-{tile}-{year}-{dates}d-{size}px", size=size, n_dates=dates,
                           seed=seed, tile=tile, year=year)


def train_store(work: Path, patch: int) -> Path:
    out = work / f"train-{patch}px.zarr"
    if not out.exists():
        merged = work / "train-input"
        if not (merged / "items.json").exists():
            merge_scenes([scene(work, *s, TRAIN_SIZE).root for s in TRAIN_SCENES], merged)
        build_dataset(str(merged / "items.json"), str(merged / "parcels.gpkg"), str(out),
                      mapping=str(merged / "crop_mapping.csv"), split=(1.0, 0.0, 0.0), patch_size=patch,
                      progress=lambda m: None)
    return out


def test_store(sc, work: Path, patch: int) -> Path:
    out = work / f"test-{patch}px.zarr"
    if not out.exists():
        build_dataset(str(sc.items), str(sc.parcels), str(out), mapping=str(sc.mapping), patch_size=patch,
                      progress=lambda m: None)
    return out


def score(store: Path, weights: Path, region: str) -> dict:
    """OA / macro mIoU over every patch of ``store`` (its splits' confusion matrices summed)."""
    splits = [str(s) for s in np.unique(open_store(store)["split"].values)]
    cm = sum(np.asarray(evaluate(store, weights, split=s, region=region, device="cpu",
                                 progress=lambda m: None)["confusion_matrix"]) for s in splits)
    m = metrics_from_confusion(cm, list(CLASS_NAMES), ignore_index=NOT_CLASSIFIED)
    return {"overall_accuracy": m["overall_accuracy"], "miou": m["miou"], "pixels": int(cm.sum()), "splits": splits}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--patch-size", type=int, default=64,
                    help="store patch side (as the demo weights): 64 px gives 4x the optimizer steps of 128 px")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--date-encoding", default="doy", choices=["days", "doy"],
                    help="as the demo weights: the training scenes' seasons are 2019-2024")
    ap.add_argument("--workers", type=int, default=2, help="predict: LocalCluster workers (1 thread each)")
    ap.add_argument("--work", default=None, help="scratch folder (kept; scenes, stores and runs are reused)")
    ap.add_argument("--out", default="benchmarks/results/models.json")
    a = ap.parse_args(argv)
    from distributed import Client, LocalCluster

    from crop2seg_pipeline.cluster import worker_environment
    from crop2seg_pipeline.predict import predict

    work = Path(a.work or Path(tempfile.gettempdir()) / "crop2seg-bench-models")
    work.mkdir(parents=True, exist_ok=True)
    store = train_store(work, a.patch_size)
    test_sc = scene(work, *TEST_SCENE, TEST_SIZE)
    held = test_store(test_sc, work, a.patch_size)
    rows = []
    for name in a.models.split(","):
        run = work / "runs" / f"{name}-{a.date_encoding}-p{a.patch_size}-e{a.epochs}-b{a.batch_size}-lr{a.lr:g}-s{a.seed}"
        t0 = time.perf_counter()
        s = train(store, run, model=name, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, lr_schedule="cosine",
                  device="cpu", seed=a.seed, num_workers=0, date_encoding=a.date_encoding, progress=lambda m: print("   ", m, flush=True))
        train_s = time.perf_counter() - t0
        every, boundary = score(held, run, "all"), score(held, run, "boundary")
        with worker_environment(), LocalCluster(n_workers=a.workers, threads_per_worker=1,
                                                dashboard_address=":0") as lc, Client(lc) as client:
            client.wait_for_workers(a.workers)
            p = predict(test_sc.items, run, work / "predictions" / run.name, client=client, progress=lambda m: None)
        hist = [h for h in s["history"] if h.get("patches_per_s")]
        rows.append({
            "model": name, "parameters": s["parameters"], "epochs": s["epochs"], "n_train": s["n_train"],
            "test_overall_accuracy": every["overall_accuracy"], "test_miou": every["miou"],
            "test_boundary_miou": boundary["miou"], "test_pixels": every["pixels"],
            "train_patches_per_s": float(np.mean([h["patches_per_s"] for h in hist])) if hist else None,
            "train_seconds": round(train_s, 1), "predict_seconds": p.seconds, "predict_mpx_s": p.throughput_mpx_s,
            "predict_megapixels": p.megapixels,
        })
        print(f"  {name}: test OA {100 * every['overall_accuracy']:.1f} %, mIoU {100 * every['miou']:.1f} %, "
              f"boundary mIoU {100 * boundary['miou']:.1f} %", flush=True)
    for r in rows:
        r["oa_pct"], r["miou_pct"] = 100 * r["test_overall_accuracy"], 100 * r["test_miou"]
        r["boundary_pct"] = 100 * r["test_boundary_miou"]
    print(f"\ntrain: {rows[0]['n_train']} patches of {a.patch_size} px from 5 demo scenes (seeds 101-105, {TRAIN_SIZE} px, 12-30 "
          f"dates); test: seed {TEST_SCENE[0]}, tile {TEST_SCENE[1]}, {TEST_SCENE[3]} dates, {TEST_SIZE} px (every "
          f"patch scored; the whole scene predicted); {a.epochs} epochs, batch {a.batch_size}, lr {a.lr} cosine, "
          f"seed {a.seed}, dates as {a.date_encoding}, CPU")
    print_table(rows, [("model", "model", ""), ("parameters", "parameters", ","), ("oa_pct", "test OA %", ".1f"),
                       ("miou_pct", "test macro mIoU %", ".1f"), ("boundary_pct", "boundary mIoU %", ".1f"),
                       ("train_patches_per_s", "train patches/s", ".2f"), ("predict_mpx_s", "predict Mpx/s", ".3f")])
    write_json(a.out, {
        "data": {"train_scenes": [dict(zip(("seed", "tile", "year", "dates"), s)) | {"size": TRAIN_SIZE}
                                  for s in TRAIN_SCENES],
                 "test_scene": dict(zip(("seed", "tile", "year", "dates"), TEST_SCENE)) | {"size": TEST_SIZE},
                 "synthetic": True},
        "budget": {"date_encoding": a.date_encoding, "patch_size": a.patch_size, "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "lr_schedule": "cosine", "seed": a.seed},
        "predict_cluster": {"workers": a.workers, "threads_per_worker": 1},
        "machine": platform.platform(), "work": str(work), "models": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
