"""``crop2seg-train``: a thin click wrapper over :func:`crop2seg_pipeline.train.train`."""

from __future__ import annotations

import logging

import click

from ..augment import TemporalAugment
from ..errors import Crop2SegError
from ..kernels.dates import DATE_ENCODINGS
from ..models.presets import MODEL_NAMES
from ..workflow import workflow_option
from . import Location, command, parse_floats, pct, quiet_opt, setup_logging, verbose_opt

DEFAULT_TEMPORAL = TemporalAugment()  # the option defaults are the Python API's

log = logging.getLogger("crop2seg_pipeline")

@command(interrupted="finished epochs are kept in OUT/last.pt; run the same command again to resume.")
@workflow_option("train")
@click.option("--dataset", "store", required=True, type=Location(exists=True, file_okay=False),
              help="Zarr patch store written by crop2seg-build-dataset (a path or an object-store URL, "
                   "s3://bucket/patches.zarr; its 'train' split is used for "
                   "training, 'val' to pick the best epoch), or a PASTIS folder (DATA_S2/, ANNOTATIONS/, "
                   "metadata.geojson, NORM_S2_patch.json; see --train-folds, --class-map).")
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
@click.option("--no-temporal-augment", is_flag=True,
              help="Train on every patch's dates as they are (turns off --date-keep .. --cloudy-drop).")
@click.option("--date-keep", default="0.4,1.0", metavar="MIN,MAX",
              help="Each sample keeps a random share of its dates, drawn uniformly in [MIN, MAX].")
@click.option("--min-dates", default=DEFAULT_TEMPORAL.min_dates, type=click.IntRange(min=1),
              help="...but at least this many (all of them when a patch has fewer).")
@click.option("--date-shift", default=DEFAULT_TEMPORAL.shift_days, type=click.IntRange(min=0), metavar="DAYS",
              help="Shift all acquisition days of a sample by one random number of days in [-DAYS, DAYS].")
@click.option("--date-jitter", default=DEFAULT_TEMPORAL.jitter_days, type=click.IntRange(min=0), metavar="DAYS",
              help="Then move each date by its own random number of days in [-DAYS, DAYS].")
@click.option("--cloudy-below", default=DEFAULT_TEMPORAL.cloudy_below, type=click.FloatRange(0.0, 1.0),
              metavar="SHARE", help="A date is cloudy when the patch's clear-sky share (the store's 'clear') is below SHARE...")
@click.option("--cloudy-drop", default=DEFAULT_TEMPORAL.cloudy_drop, type=click.FloatRange(0.0, 1.0),
              metavar="P", help="...and each cloudy date of a sample is dropped with probability P.")
@click.option("--date-encoding", default="days", type=click.Choice(list(DATE_ENCODINGS)),
              help="Positions fed to the model: days since the reference date (September 1st before the "
                   "first date), or doy, the day of the year (independent of the year; Crop2Seg's --use_doy). "
                   "Recorded in model.json; evaluate and predict use it.")
@click.option("--val-dataset", "val_datasets", multiple=True, type=Location(exists=True, file_okay=False),
              help="A patch store held out for validation (repeatable): every patch of it, e.g. a store "
                   "built from another tile, seed or year. The best epoch is picked on the held-out scenes "
                   "instead of the training store's 'val' split.")
@click.option("--val-tiles", default=None, metavar="TILE,...",
              help="Tiles of a multi-tile --dataset held out for validation: their patches (all splits) are "
                   "never trained on; the best epoch is picked on them.")
@click.option("--class-map", default=None, metavar="pastis|crop2seg|CSV",
              help="Classes trained: 'pastis' (its 20 classes; the default for a PASTIS folder), 'crop2seg' "
                   "(the built-in, approximate mapping to this pipeline's 15 classes) or a CSV with columns "
                   "pastis_id,class_id. A folder written by crop2seg-export-pastis keeps its 15 classes.")
@click.option("--train-folds", default=None, metavar="K,...", help="Folds trained on (default 1,2,3).")
@click.option("--val-folds", default=None, metavar="K,...", help="Folds validated on (default 4).")
@click.option("--cache", "dataset_cache", default=None, type=click.Path(file_okay=False),
              help="With an object-store --dataset: a local folder keeping the chunks read, so later epochs "
                   "read them from disk.")
@verbose_opt
@quiet_opt
def train_cmd(store, out, model, epochs, batch_size, lr, lr_schedule, device, finetune, seed, workers,
              temporal_dropout, no_augment, no_temporal_augment, date_keep, min_dates, date_shift, date_jitter,
              cloudy_below, cloudy_drop, date_encoding, val_datasets, val_tiles, class_map, train_folds, val_folds,
              dataset_cache, verbose, quiet):
    """Train a U-TAE crop-type segmentation model on a Zarr patch store.

    Bands are standardized with the store's train statistics and dates become days since the
    September 1st before the first acquisition; both are saved in OUT/model.json so that
    crop2seg-evaluate and inference feed the model the same way.

    By default every sample sees a random subset of its dates (40-100 %, at least 4), its days
    shifted (+-15) and jittered (+-3), and cloudy dates dropped half of the time, so the model
    learns crop calendars rather than one scene's acquisition dates. To check that it
    generalizes, validate on a scene it never sees (--val-dataset, --val-tiles).

    Interrupted? Run the same command again: training continues from OUT/last.pt and finished
    epochs are not redone. A larger --epochs extends a finished run.

    \b
    Examples:
      crop2seg-train --dataset crop2seg-demo/patches.zarr --out runs/small --epochs 10
      crop2seg-train --dataset tiles.zarr --val-tiles 33UVR --out runs/held-out --date-encoding doy
      crop2seg-train --dataset PASTIS/ --out runs/pastis --model utae       # pretrain (20 classes)
      crop2seg-train --dataset mine.zarr --finetune runs/pastis --out runs/mine  # new 15-class head
    """
    setup_logging(verbose, quiet)
    from ..locks import writer_lock
    from ..train import train

    keep = parse_floats(date_keep, 2, "--date-keep")
    tiles = [t for t in (val_tiles or "").replace(" ", "").split(",") if t] or None
    try:
        temporal = None if no_temporal_augment else TemporalAugment(
            keep=keep, min_dates=min_dates, shift_days=date_shift, jitter_days=date_jitter,
            cloudy_below=cloudy_below, cloudy_drop=cloudy_drop)
        folds = {name: _parse_folds(v, "--" + name.replace("_", "-"))
                 for name, v in (("train_folds", train_folds), ("val_folds", val_folds))}
    except Crop2SegError as e:
        raise click.UsageError(str(e)) from e
    try:
        with writer_lock(out, "crop2seg-train", "run folder"):
            summary = train(store, out, model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                            lr_schedule=lr_schedule, device=device, finetune=finetune, seed=seed,
                            num_workers=workers, temporal_dropout=temporal_dropout, augment=not no_augment,
                            progress=log.info, temporal_augment=temporal, date_encoding=date_encoding,
                            val_datasets=list(val_datasets), val_tiles=tiles, class_map=class_map,
                            dataset_cache=dataset_cache, **folds)
    except Crop2SegError as e:
        raise click.ClickException(str(e)) from e
    click.echo(format_train_summary(summary))


def _parse_folds(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        folds = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated fold numbers, got {text!r}", param_hint=name) from None
    if not folds:
        raise click.BadParameter("expected at least one fold number", param_hint=name)
    return folds


def _validation_note(v: dict) -> str:
    if v.get("kind") == "held-out":
        parts = ([f"tiles {', '.join(v['tiles'])}"] if v.get("tiles") else []) + list(v.get("stores") or [])
        return f" on held-out {'; '.join(parts)}"
    if v.get("kind") == "folds":
        return f" on fold(s) {', '.join(str(f) for f in v['folds'])}"
    return ""


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
        + f"), best epoch {summary['best_epoch']} (* above), val mIoU {pct(summary['best_val_miou'])} %"
        + _validation_note(summary.get("validation") or {}))
    lines.append(f"weights: {summary['weights_dir']}  (weights.pt + model.json; last.pt to resume)")
    return "\n".join(lines)
