"""Score the shipped demo weights on a demo scene by predicting it whole (not run in CI).

Generates the demo scene (default: the 1024 px, 24-date, seed-0 scene that ``crop2seg-predict``
uses with no arguments; the weights were trained on the 2048 px scene, a different landscape),
runs :func:`crop2seg_pipeline.predict.predict` with its parcels, and scores ``classes.tif``
against the rasterized parcels (class 14 ignored): parcel agreement, overall accuracy, macro
mIoU and per-class IoU. Prints a table and writes JSON.

    python benchmarks/demo_predict.py --out demo-predict.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import rasterio

from crop2seg_pipeline.demo import make_demo_scene
from crop2seg_pipeline.grid import Grid
from crop2seg_pipeline.kernels.metrics import confusion_matrix, metrics_from_confusion
from crop2seg_pipeline.graph.labels import rasterize_labels
from crop2seg_pipeline.mapping import CropMapping
from crop2seg_pipeline.parcels import read_parcels
from crop2seg_pipeline.nomenclature import CLASS_NAMES, NOT_CLASSIFIED
from crop2seg_pipeline.predict import default_demo_weights, predict


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024, help="demo scene side in px")
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=None, help="weights folder (default: the shipped demo weights)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--out", default="demo-predict.json")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="crop2seg-demo-predict-"))
    scene = make_demo_scene(work / "scene", size=args.size, n_dates=args.dates, seed=args.seed)
    weights = Path(args.weights) if args.weights else default_demo_weights()
    s = predict(scene.items, weights, work / "prediction", parcels=scene.parcels, mapping=scene.mapping,
                progress=lambda m: None)
    with rasterio.open(work / "prediction" / "classes.tif") as ds:
        pred = ds.read(1)
        t = ds.transform
        grid = Grid(ds.crs.to_epsg(), t.c, t.f, t.a, ds.height, ds.width)
    gdf, _ = read_parcels(scene.parcels, mapping=CropMapping.read(scene.mapping), target_crs=grid.epsg,
                          bbox=grid.bounds)
    label = rasterize_labels(gdf, grid)["label"].values
    m = metrics_from_confusion(confusion_matrix(label, pred, len(CLASS_NAMES), ignore_index=NOT_CLASSIFIED),
                               list(CLASS_NAMES), ignore_index=NOT_CLASSIFIED)
    p = s.parcels
    print(f"scene {args.size} px, {s.n_dates} dates, seed {args.seed}; weights {weights}; {s.seconds:.1f} s")
    print(f"parcel agreement {100 * p['agreement_share']:.1f} % of {p['n_compared']} compared "
          f"({p['n_parcels']} parcels)")
    print(f"pixels: overall accuracy {100 * m['overall_accuracy']:.1f} %, macro mIoU {100 * m['miou']:.1f} %, "
          f"macro F1 {100 * m['macro_f1']:.1f} %")
    print(f"{'class':28s} {'support':>9s} {'IoU %':>6s}")
    for name, c in m["per_class"].items():
        iou = "   n/a" if c["iou"] is None else f"{100 * c['iou']:6.1f}"
        print(f"{name:28s} {c['support']:>9,d} {iou}")
    result = {"scene": {"size": args.size, "dates": s.n_dates, "seed": args.seed}, "weights": str(weights),
              "parcels": p, "seconds": s.seconds, "metrics": m}
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
