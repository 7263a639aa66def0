"""``crop2seg-evaluate``: a thin click wrapper over :func:`crop2seg_pipeline.evaluate.evaluate`."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ..errors import Crop2SegError
from ..workflow import workflow_option
from . import Location, command, pct, quiet_opt, setup_logging, verbose_opt

log = logging.getLogger("crop2seg_pipeline")


@command()
@workflow_option("evaluate")
@click.option("--dataset", "store", required=True, type=Location(exists=True, file_okay=False),
              help="Zarr patch store to evaluate on (a path or an object-store URL, s3://bucket/patches.zarr).")
@click.option("--weights", required=True, type=Location(exists=True, file_okay=False),
              help="Weights folder (weights.pt + model.json), e.g. the --out of crop2seg-train; a URL "
                   "(s3://bucket/weights) is downloaded once into ~/.cache/crop2seg.")
@click.option("--split", default="test", type=click.Choice(["train", "val", "test"]),
              help="Patches to evaluate.")
@click.option("--region", default="all", type=click.Choice(["all", "boundary", "interior"]),
              help="Pixels scored: all, parcel boundaries only (3x3 cross holds another class), "
                   "or parcel interiors only.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder receiving metrics.json and confusion_matrix.png.")
@click.option("--batch-size", default=4, type=click.IntRange(min=1), help="Patches per batch.")
@click.option("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N.")
@click.option("--workers", default=0, type=click.IntRange(min=0), help="DataLoader worker processes.")
@verbose_opt
@quiet_opt
def evaluate_cmd(store, weights, split, region, out, batch_size, device, workers, verbose, quiet):
    """Score a trained model on a split of a patch store.

    The model is fed with the normalization and reference date saved in its model.json (not
    the store's). 'Not classified' pixels are ignored; mIoU and macro F1 average the classes
    present in the ground truth or predicted. Writes OUT/metrics.json (overall_accuracy, miou,
    macro_f1, per_class, confusion_matrix) and OUT/confusion_matrix.png.
    """
    setup_logging(verbose, quiet)
    from ..evaluate import evaluate
    from ..locks import writer_lock

    try:
        with writer_lock(out, "crop2seg-evaluate", "evaluation folder"):
            m = evaluate(store, weights, split=split, region=region, out_dir=out, batch_size=batch_size,
                         device=device, num_workers=workers, progress=log.info)
    except Crop2SegError as e:
        raise click.ClickException(str(e)) from e
    click.echo(format_metrics(m))
    click.echo(f"wrote {Path(out) / 'metrics.json'} and {Path(out) / 'confusion_matrix.png'}")


def format_metrics(m: dict) -> str:
    width = max(len(n) for n in m["per_class"]) if m["per_class"] else 5
    lines = [f"{'class':<{width}} {'support':>10} {'IoU %':>6} {'F1 %':>6}"]
    for name, v in m["per_class"].items():
        if v["support"] == 0 and v["predicted"] == 0:
            continue
        lines.append(f"{name:<{width}} {v['support']:>10,} {pct(v['iou']):>6} {pct(v['f1']):>6}")
    lines.append(f"{m['split']} split, {m['region']} pixels: {m['n_patches']} patches, {m['n_pixels']:,} px "
                 f"scored ({m['ignored_pixels']:,} not classified ignored)")
    lines.append(f"overall accuracy {pct(m['overall_accuracy'])} %   mIoU {pct(m['miou'])} %   "
                 f"macro F1 {pct(m['macro_f1'])} %")
    return "\n".join(lines)
