"""``crop2seg-export-pastis``: a patch store in the PASTIS layout (see :mod:`crop2seg_pipeline.pastis_export`)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from ..errors import Crop2SegError
from ..workflow import workflow_option
from . import CONTEXT, fail, quiet_opt, setup_logging, verbose_opt

log = logging.getLogger("crop2seg_pipeline")


@click.command(context_settings=CONTEXT)
@workflow_option("export-pastis")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@verbose_opt
@quiet_opt
def export_pastis_cmd(store, out, verbose, quiet):
    """Write the patch STORE into OUT in the PASTIS layout (readable by PASTIS's own loader).

    \b
    OUT/DATA_S2/S2_{ID}.npy          (T, 10, H, W) uint16, the patch's own dates (padding dropped)
    OUT/ANNOTATIONS/TARGET_{ID}.npy  (1, H, W) uint8, channel 0 the semantic class
    OUT/metadata.geojson             footprint, ID_PATCH, Fold, dates-S2 {"0": YYYYMMDD, ...}
    OUT/NORM_S2_patch.json           Fold_1..Fold_5: the store's train normalization
    OUT/crop2seg_export.json         source, folds, classes, reference date, status

    Splits become folds: train -> 1, 2, 3 (by spatial block), val -> 4, test -> 5. Classes stay
    this pipeline's 15 (14 = Not classified: ignore it). ID is the patch's index in STORE. With
    the reference loader, pass reference_date= the manifest's reference_date (PASTIS counts
    days from 2018-09-01 and keeps -200..599 of them).

    The store is read one patch at a time. An interrupted export is finished by running the
    same command again; a complete one is left as is. OUT must be new, empty, or an export of
    STORE: anything else is never written into.

    \b
    Example:
      crop2seg-export-pastis crop2seg-demo/patches.zarr demo-pastis/
      crop2seg-train --dataset demo-pastis/ --out runs/from-pastis     # train from it
    """
    setup_logging(verbose, quiet)
    from ..pastis_export import export_pastis

    try:
        m = export_pastis(store, out, progress=log.info)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: run the same command again to finish the export into {out}", err=True)
        sys.exit(130)
    except Crop2SegError as e:
        raise fail(e) from e
    per_fold = ", ".join(f"fold {k}: {v}" for k, v in m["patches_per_fold"].items())
    click.echo(f"{out}: {m['n_patches']} patches in the PASTIS layout ({m['written']} written now; {per_fold}); "
               f"reference date {m['reference_date']}")
