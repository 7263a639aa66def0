"""``crop2seg-train``: a thin click wrapper over :func:`crop2seg_pipeline.train.train`."""

from __future__ import annotations

import logging

import click

from ..errors import Crop2SegError
from ..models.presets import MODEL_NAMES
from ..workflow import workflow_option
from . import command, pct, quiet_opt, setup_logging, verbose_opt

log = logging.getLogger("crop2seg_pipeline")

@command(interrupted="finished epochs are kept in OUT/last.pt; run the same command again to resume.")
@workflow_option("train")
@click.option("--dataset", "store", required=True, type=click.Path(exists=True, file_okay=False),
              help="Zarr patch store written by crop2seg-build-dataset (its 'train' split is used for "
                   "training, 'val' to pick the best epoch).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: weights.pt + model.json (best epoch) and last.pt (resume state).")
@click.option("--model", default="utae-small", type=click.Choice(MODEL_NAMES),
              help="Architecture: utae (U-TAE, PASTIS), timeunet (Crop2Seg's Time-Unet), wtae "
                   "(Crop2Seg's W-TAE), unet3d (PASTIS baseline UNet3D), ~1.05-1.55M parameters "
                   "in the published configurations; each -small variant (~90-100k) trains on a "
                   "CPU. Recorded in OUT/model.json, so every command loads it.")
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
    setup_logging(verbose, quiet)
    from ..locks import writer_lock
    from ..train import train

    try:
        with writer_lock(out, "crop2seg-train", "run folder"):
            summary = train(store, out, model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                            lr_schedule=lr_schedule, device=device, finetune=finetune, seed=seed, num_workers=workers,
                            temporal_dropout=temporal_dropout, augment=not no_augment, progress=log.info)
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
            f"{h['epoch']:>5} {loss:>8} {vloss:>8} {pct(h.get('val_overall_accuracy')):>8} "
            f"{pct(h.get('val_miou')):>7} {h['seconds']:>7.1f} {h['patches_per_s']:>8.1f} "
            f"{100 * h['data_wait_share']:>6.0f}{mark}")
    lines.append(
        f"model {summary['model']} ({summary['parameters']:,} parameters) on {summary['device']}: "
        f"{summary['epochs']} epochs ({summary['epochs_run']} run now"
        + (f", resumed after epoch {summary['resumed_from']}" if summary["resumed_from"] else "")
        + f"), best epoch {summary['best_epoch']} (* above), val mIoU {pct(summary['best_val_miou'])} %")
    lines.append(f"weights: {summary['weights_dir']}  (weights.pt + model.json; last.pt to resume)")
    return "\n".join(lines)
