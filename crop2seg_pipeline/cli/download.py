"""``crop2seg-download``: a local mirror of the assets a build needs (see :mod:`crop2seg_pipeline.download`)."""

from __future__ import annotations

import contextlib

import click

from ..errors import Crop2SegError
from ..interrupts import pause_point
from ..workflow import workflow_option
from . import check_cluster, cluster_options, command, fail, open_cluster, parse_floats, quiet_opt, setup_logging, verbose_opt


@command(interrupted="complete files are kept; run the same command again to resume.")
@workflow_option("download")
@click.argument("items", required=False)
@click.option("--items", "items_opt", default=None, hidden=True, help="ITEMS, as an option (workflows).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Mirror folder (new, empty, or an earlier mirror to resume).")
@click.option("--bbox", default=None, help="Cut every file to this area 'minx,miny,maxx,maxy' (in --bbox-crs), as local COGs.")
@click.option("--bbox-crs", default="EPSG:4326", help="CRS of --bbox.")
@click.option("--bands", default=None, help="Reflectance bands to mirror, comma-separated (default all 10; SCL always).")
@click.option("--retries", default=5, type=int, help="Attempts per file for transient failures (HTTP 429/5xx, resets, timeouts).")
@cluster_options(memory=False)
@verbose_opt
@quiet_opt
def download_cmd(items, items_opt, out, bbox, bbox_crs, bands, retries, cluster, workers, threads_per_worker,
                 verbose, quiet):
    """Mirror the 10 bands and SCL of ITEMS (a STAC items JSON, URL, or SAFE products) into --out.

    Files are fetched in parallel on the Dask cluster, verified (file:checksum where the items
    have one, size otherwise), retried on transient errors and resumed by running the same
    command again. Writes OUT/items.json with relative hrefs: give it as --items to every
    other command (e.g. on compute nodes without internet).
    """
    setup_logging(verbose, quiet)
    from ..checks import check_bbox
    from ..download import LOCK_HOLDER, RetryPolicy, mirror, plan_mirror
    from ..locks import writer_lock
    from ..nomenclature import BANDS

    items = items or items_opt
    if not items:
        raise click.UsageError("give ITEMS (a STAC items JSON, URL, .SAFE folder or .zip)")
    band_list = BANDS
    if bands:
        band_list = tuple(b.strip().upper() for b in bands.split(",") if b.strip())
        unknown = [b for b in band_list if b not in BANDS]
        if unknown:
            raise click.BadParameter(f"unknown band(s) {', '.join(unknown)}; choose from {', '.join(BANDS)}", param_hint="--bands")
    if retries < 1:
        raise click.BadParameter("must be >= 1", param_hint="--retries")
    box = parse_floats(bbox, 4, "--bbox")
    try:
        check_bbox(box, bbox_crs)
        check_cluster(cluster, n_workers=workers, threads_per_worker=threads_per_worker)
        plan_mirror(items, bands=band_list, bbox=box, bbox_crs=bbox_crs)  # every check before a cluster starts
        pause_point("args")
        with contextlib.ExitStack() as stack:
            stack.enter_context(writer_lock(out, LOCK_HOLDER, "mirror folder"))
            client = open_cluster(stack, cluster, quiet=quiet, n_workers=workers, threads_per_worker=threads_per_worker)
            summary = mirror(items, out, bands=band_list, bbox=box, bbox_crs=bbox_crs, client=client,
                             policy=RetryPolicy(attempts=retries), progress=None if quiet else click.echo)
    except Crop2SegError as e:
        raise fail(e) from e
    click.echo(summary.format())
