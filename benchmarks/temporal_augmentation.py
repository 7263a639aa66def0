"""Does temporal augmentation make a model hold on a scene with other dates? (not run in CI)

Builds three patch stores from demo scenes that share nothing but the generator:

* **train**: ``--size`` px, seed 0, 24 dates, every patch in the train split;
* **held-out**: seed 7, 14 dates (other landscape, other acquisition days, fewer dates): the
  validation set that picks the best epoch (``crop2seg-train --val-dataset``);
* **test**: seed 11, 10 dates: never looked at during training; scored once at the end with
  ``crop2seg-evaluate`` (the honest figure: the held-out mIoU of the best epoch is optimistic,
  since that epoch was chosen on it).

Then trains ``utae-small`` with the same budget and seed with and without temporal
augmentation (and with day-of-year dates), and prints a table of held-out val mIoU (best epoch,
last epoch) and test OA / mIoU; writes JSON.

    python benchmarks/temporal_augmentation.py --epochs 10 --json temporal-augmentation.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from crop2seg_pipeline.augment import NO_TEMPORAL, TemporalAugment
from crop2seg_pipeline.build import build_dataset
from crop2seg_pipeline.demo import make_demo_scene
from crop2seg_pipeline.evaluate import evaluate
from crop2seg_pipeline.train import train

SCENES = {  # name: (seed, dates); every patch of each store in its "train" split (a build needs one):
    # the held-out and test stores are never trained on, --val-dataset and the final evaluation
    # take all their patches
    "train": (0, 24),
    "held-out": (7, 14),
    "test": (11, 10),
}
RUNS = {  # name: (temporal augmentation, date encoding)
    "no temporal augmentation": (NO_TEMPORAL, "days"),
    "temporal augmentation (defaults)": (TemporalAugment(), "days"),
    "temporal augmentation + day of year": (TemporalAugment(), "doy"),
}


def build_store(work: Path, name: str, size: int, patch: int) -> Path:
    seed, n_dates = SCENES[name]
    scene = make_demo_scene(work / f"scene-{name}", size=size, n_dates=n_dates, seed=seed)
    out = work / f"{name}-{patch}px.zarr"
    if not out.exists():
        build_dataset(scene.items, scene.parcels, str(out), mapping=str(scene.mapping), split=(1.0, 0.0, 0.0),
                      patch_size=patch, chunksize=max(1, 256 // patch) * patch, min_crop_cover=0.0,
                      progress=lambda m: None)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512, help="side of every demo scene in px")
    ap.add_argument("--patch-size", type=int, default=64,
                    help="store patch side: 64 px gives 4x the optimizer steps of 128 px for the same pixels")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default=";".join(RUNS), help="semicolon-separated run names to do")
    ap.add_argument("--work", default=None, help="scratch folder (kept; stores are reused)")
    ap.add_argument("--json", default="temporal-augmentation.json")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="crop2seg-temporal-aug-"))
    work.mkdir(parents=True, exist_ok=True)
    stores = {name: build_store(work, name, args.size, args.patch_size) for name in SCENES}
    results = []
    for name in [r for r in args.runs.split(";") if r]:
        temporal, encoding = RUNS[name]
        t0 = time.perf_counter()
        out = work / "runs" / f"e{args.epochs}-lr{args.lr:g}-{name.replace(' ', '-')}"
        s = train(stores["train"], out, model="utae-small", epochs=args.epochs, batch_size=args.batch_size,
                  lr=args.lr, lr_schedule="cosine", device="cpu", seed=args.seed, num_workers=0,
                  temporal_augment=temporal, date_encoding=encoding, val_datasets=[stores["held-out"]],
                  progress=lambda m: print("   ", m, flush=True))
        test = evaluate(stores["test"], out, split="train", device="cpu", progress=lambda m: None)
        results.append({
            "run": name, "temporal_augment": temporal.to_json() if temporal.active else None,
            "date_encoding": encoding, "epochs": s["epochs"], "best_epoch": s["best_epoch"],
            "held_out_val_miou_best": s["best_val_miou"], "held_out_val_miou_last": s["history"][-1]["val_miou"],
            "held_out_val_oa_best": s["best_val_overall_accuracy"],
            "test_overall_accuracy": test["overall_accuracy"], "test_miou": test["miou"],
            "n_train": s["n_train"], "n_held_out": s["n_val"], "n_test": test["n_patches"],
            "seconds": round(time.perf_counter() - t0, 1),
        })
        print(f"  {name}: held-out mIoU {s['best_val_miou']:.3f} (epoch {s['best_epoch']}), test mIoU "
              f"{test['miou']:.3f}", flush=True)

    print(f"\n{args.size} px scenes, {args.patch_size} px patches; train seed 0 / 24 dates ({results[0]['n_train']} patches), held-out "
          f"seed 7 / 14 dates ({results[0]['n_held_out']}), test seed 11 / 10 dates ({results[0]['n_test']}); "
          f"utae-small, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr} cosine, seed {args.seed}")
    print("| run | held-out val mIoU (best epoch) | held-out val mIoU (last) | test OA | test mIoU | s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {100 * r['held_out_val_miou_best']:.1f} % (epoch {r['best_epoch']}) | "
              f"{100 * r['held_out_val_miou_last']:.1f} % | {100 * r['test_overall_accuracy']:.1f} % | "
              f"{100 * r['test_miou']:.1f} % | {r['seconds']:.0f} |")
    Path(args.json).write_text(json.dumps({
        "size": args.size, "patch_size": args.patch_size, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "scenes": {k: {"seed": v[0], "dates": v[1]} for k, v in SCENES.items()}, "results": results,
        "machine": platform.platform(), "work": str(work)}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
