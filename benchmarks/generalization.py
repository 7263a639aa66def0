"""How the shipped demo weights (or any weights) hold on scenes they never saw (not run in CI).

    python benchmarks/generalization.py [--weights DIR] [--out benchmarks/results/generalization.json]

Fresh demo scenes with seeds and tiles that training never used (training uses seeds 101-117:
``workflows/train-demo-weights.sh``), so other landscapes and other acquisition days. The first
six have 36, 24, 18, 12, 8 and 6 dates (24, 18 and 12 are also the date counts of training
scenes, with other days); the last three have 19, 25 and 33 dates, counts no training or
validation scene has. Each scene is predicted whole with its
parcels by :func:`crop2seg_pipeline.predict.predict` and scored against the rasterized parcels
(class 14 ignored): parcel agreement (the area majority equals the declared class), overall
accuracy and macro mIoU of the class map. Prints a table and writes JSON.

Goal (issue 10): macro mIoU >= 0.75 and parcel agreement >= 90 % on every scene with 12 or more
dates; the 6 and 8 date rows are reported as they come.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from crop2seg_pipeline.demo import make_demo_scene  # noqa: E402
from crop2seg_pipeline.graph.labels import rasterize_labels  # noqa: E402
from crop2seg_pipeline.grid import Grid  # noqa: E402
from crop2seg_pipeline.kernels.metrics import confusion_matrix, metrics_from_confusion  # noqa: E402
from crop2seg_pipeline.mapping import CropMapping  # noqa: E402
from crop2seg_pipeline.nomenclature import CLASS_NAMES, NOT_CLASSIFIED  # noqa: E402
from crop2seg_pipeline.parcels import read_parcels  # noqa: E402
from crop2seg_pipeline.predict import default_demo_weights, predict  # noqa: E402

#: (tile, year, seed, size px, dates): seeds, tiles/years and date counts unseen in training.
SCENES = [
    ("33UXR", 2020, 201, 1024, 36),
    ("33UVQ", 2023, 202, 1024, 24),
    ("33UWS", 2019, 203, 768, 18),
    ("33UYQ", 2022, 204, 768, 12),
    ("33UUR", 2021, 205, 512, 8),
    ("33UXQ", 2024, 206, 512, 6),
    # date counts that no training or validation scene has (those have 12-16, 17, 18, 20, 22, 24,
    # 26, 28 and 30): 19, 25 and 33; tiles no training scene is on
    ("33UUT", 2019, 207, 768, 19),
    ("33UXT", 2022, 208, 1024, 25),
    ("33UYT", 2024, 209, 768, 33),
]


def score(scene, weights: Path, out: Path, client=None) -> dict:
    """Predict one scene with its parcels and score the class map against the parcels."""
    s = predict(scene.items, weights, out, parcels=scene.parcels, mapping=scene.mapping, client=client,
                progress=lambda m: None)
    with rasterio.open(out / "classes.tif") as ds:
        pred = ds.read(1)
        t = ds.transform
        grid = Grid(ds.crs.to_epsg(), t.c, t.f, t.a, ds.height, ds.width)
    gdf, _ = read_parcels(scene.parcels, mapping=CropMapping.read(scene.mapping), target_crs=grid.epsg,
                          bbox=grid.bounds)
    label = rasterize_labels(gdf, grid)["label"].values
    m = metrics_from_confusion(confusion_matrix(label, pred, len(CLASS_NAMES), ignore_index=NOT_CLASSIFIED),
                               list(CLASS_NAMES), ignore_index=NOT_CLASSIFIED)
    return {"n_dates": s.n_dates, "dates_dropped": len(s.dates_dropped), "parcels": s.parcels, "seconds": s.seconds,
            "agreement": s.parcels["agreement_share"], "overall_accuracy": m["overall_accuracy"], "miou": m["miou"],
            "macro_f1": m["macro_f1"], "per_class": m["per_class"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="weights folder (default: the shipped demo weights)")
    ap.add_argument("--work", default=None, help="scratch folder for scenes and predictions (kept)")
    ap.add_argument("--out", default="benchmarks/results/generalization.json")
    a = ap.parse_args(argv)
    work = Path(a.work or Path(tempfile.gettempdir()) / "crop2seg-generalization")
    weights = Path(a.weights) if a.weights else default_demo_weights()
    rows = []
    for tile, year, seed, size, dates in SCENES:
        name = f"{tile}-{year}-s{seed}-{size}px-{dates}d"
        scene = make_demo_scene(work / name, size=size, n_dates=dates, seed=seed, tile=tile, year=year)
        r = score(scene, weights, work / f"{name}-prediction")
        rows.append({"scene": name, "tile": tile, "year": year, "seed": seed, "size": size, "dates": dates, **r,
                     "goal": "" if dates < 12 else ("met" if r["miou"] >= 0.75 and r["agreement"] >= 0.90 else "NOT met")})
        print(f"{name}: agreement {100 * r['agreement']:.1f} %, OA {100 * r['overall_accuracy']:.1f} %, "
              f"mIoU {100 * r['miou']:.1f} %", flush=True)
    for r in rows:
        r["agreement_pct"] = 100 * r["agreement"]
        r["oa_pct"] = 100 * r["overall_accuracy"]
        r["miou_pct"] = 100 * r["miou"]
        r["n_parcels"] = r["parcels"]["n_compared"]
    print(f"\nweights: {weights}")
    print_table(rows, [("tile", "tile", ""), ("year", "season", ""), ("seed", "seed", ""), ("size", "px", ""),
                       ("dates", "dates", ""), ("n_parcels", "parcels", ""), ("agreement_pct", "parcel agreement %", ".1f"),
                       ("oa_pct", "OA %", ".1f"), ("miou_pct", "macro mIoU %", ".1f"), ("goal", "goal", "")])
    write_json(a.out, {"weights": str(weights), "scenes": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
