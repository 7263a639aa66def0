"""Command-line entry points of training and evaluation: thin click wrappers over
:func:`crop2seg_pipeline.train.train` and :func:`crop2seg_pipeline.evaluate.evaluate`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .cli import _setup_logging, quiet_opt, verbose_opt
from .workflow import workflow_option
from .errors import Crop2SegError

log = logging.getLogger("crop2seg_pipeline")

_CTX = {"show_default": True, "help_option_names": ["-h", "--help"]}


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"




# ----------------------------------------------------------------------------- crop2seg-train


@click.command(context_settings=_CTX)
@workflow_option("train")
@click.option("--dataset", "store", required=True, type=click.Path(exists=True, file_okay=False),
              help="Zarr patch store written by crop2seg-build-dataset (its 'train' split is used for "
                   "training, 'val' to pick the best epoch).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: weights.pt + model.json (best epoch) and last.pt (resume state).")
@click.option("--model", default="utae-small", type=click.Choice(["utae-small", "utae"]),
              help="utae-small: ~90k parameters, trains on a CPU; utae: the published 1.1M configuration.")
@click.option("--epochs", default=25, type=click.IntRange(min=1), help="Total number of epochs.")
@click.option("--batch-size", default=4, type=click.IntRange(min=1), help="Patches per step.")
@click.option("--lr", default=1e-3, type=float, help="Adam learning rate.")
@click.option("--lr-schedule", default="constant", type=click.Choice(["constant", "cosine"]),
              help="cosine: decay from --lr to --lr/100 over --epochs.")
@click.option("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N.")
@click.option("--finetune", type=click.Path(exists=True),
              help="Start from these weights: a weights folder or a reference (PASTIS) U-TAE "
                   "checkpoint; the class head is re-initialised if its class count differs.")
@click.option("--seed", default=0, type=int, help="Seed of all random draws (same seed, same weights on CPU).")
@click.option("--workers", default=None, type=click.IntRange(min=0), show_default="auto: 0 on CPU, up to 4 with CUDA",
              help="DataLoader worker processes (0: load in the main process). The per-epoch log "
                   "shows the share of step time spent waiting for data: raise it when above ~10%.")
@click.option("--temporal-dropout", default=0.0, type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Probability of dropping each date of a training sample.")
@click.option("--no-augment", is_flag=True, help="Disable random flips and 90-degree rotations.")
@verbose_opt
@quiet_opt
def train_cmd(store, out, model, epochs, batch_size, lr, lr_schedule, device, finetune, seed, workers,
              temporal_dropout, no_augment, verbose, quiet):
    """Train a U-TAE crop-type segmentation model on a Zarr patch store.

    Bands are standardized with the store's train statistics and dates become days since the
    September 1st before the first acquisition; both are saved in OUT/model.json so that
    crop2seg-evaluate and inference feed the model the same way.

    Interrupted? Run the same command again: training continues from OUT/last.pt and finished
    epochs are not redone. A larger --epochs extends a finished run.

    \b
    Example:
      crop2seg-train --dataset crop2seg-demo/patches.zarr --out runs/small --epochs 10
    """
    _setup_logging(verbose, quiet)
    from .train import train

    try:
        summary = train(store, out, model=model, epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule,
                        device=device, finetune=finetune, seed=seed, num_workers=workers,
                        temporal_dropout=temporal_dropout, augment=not no_augment, progress=log.info)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: finished epochs are kept in {Path(out) / 'last.pt'}; run the same "
                   "command again to resume.", err=True)
        sys.exit(130)
    except Crop2SegError as e:
        raise click.ClickException(str(e)) from e
    click.echo(format_train_summary(summary))


def format_train_summary(summary: dict) -> str:
    lines = [
        f"{'epoch':>5} {'loss':>8} {'val loss':>8} {'val OA %':>8} {'mIoU %':>7} {'s':>7} "
        f"{'patch/s':>8} {'wait %':>6}",
    ]
    for h in summary["history"]:
        mark = " *" if h["epoch"] == summary["best_epoch"] else ""
        loss = "n/a" if h["loss"] is None else f"{h['loss']:.4f}"
        vloss = "n/a" if h.get("val_loss") is None else f"{h['val_loss']:.4f}"
        lines.append(
            f"{h['epoch']:>5} {loss:>8} {vloss:>8} {_pct(h.get('val_overall_accuracy')):>8} "
            f"{_pct(h.get('val_miou')):>7} {h['seconds']:>7.1f} {h['patches_per_s']:>8.1f} "
            f"{100 * h['data_wait_share']:>6.0f}{mark}")
    lines.append(
        f"model {summary['model']} ({summary['parameters']:,} parameters) on {summary['device']}: "
        f"{summary['epochs']} epochs ({summary['epochs_run']} run now"
        + (f", resumed after epoch {summary['resumed_from']}" if summary["resumed_from"] else "")
        + f"), best epoch {summary['best_epoch']} (* above), val mIoU {_pct(summary['best_val_miou'])} %")
    lines.append(f"weights: {summary['weights_dir']}  (weights.pt + model.json; last.pt to resume)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- crop2seg-evaluate


@click.command(context_settings=_CTX)
@workflow_option("evaluate")
@click.option("--dataset", "store", required=True, type=click.Path(exists=True, file_okay=False),
              help="Zarr patch store to evaluate on.")
@click.option("--weights", required=True, type=click.Path(exists=True, file_okay=False),
              help="Weights folder (weights.pt + model.json), e.g. the --out of crop2seg-train.")
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
    _setup_logging(verbose, quiet)
    from .evaluate import evaluate

    try:
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
        lines.append(f"{name:<{width}} {v['support']:>10,} {_pct(v['iou']):>6} {_pct(v['f1']):>6}")
    lines.append(f"{m['split']} split, {m['region']} pixels: {m['n_patches']} patches, {m['n_pixels']:,} px "
                 f"scored ({m['ignored_pixels']:,} not classified ignored)")
    lines.append(f"overall accuracy {_pct(m['overall_accuracy'])} %   mIoU {_pct(m['miou'])} %   "
                 f"macro F1 {_pct(m['macro_f1'])} %")
    return "\n".join(lines)
