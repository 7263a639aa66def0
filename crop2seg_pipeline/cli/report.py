"""``crop2seg-report``: a thin click wrapper over :func:`crop2seg_pipeline.report.make_report`."""

from __future__ import annotations

import contextlib
import logging

import click

from ..errors import Crop2SegError
from ..interrupts import pause_point
from ..workflow import workflow_option
from . import check_cluster, cluster_options, command, fail, open_cluster, quiet_opt, setup_logging, verbose_opt

log = logging.getLogger("crop2seg_pipeline")


@command(interrupted="no report was written (an earlier one in OUT is left as it was).")
@workflow_option("report")
@click.argument("source", required=False, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False),
              help="Report folder (new, empty, or an earlier report's; any other content is refused).")
@click.option("--min-clear", default=0.9, type=float,
              help="Store reports: a (patch, date) enters the temporal profiles when its clear-sky fraction "
                   "(the store's 'clear') is at least this; the store has no per-pixel cloud mask.")
@click.option("--bands", default="B04,B08,B11",
              help="Store reports: comma-separated bands profiled besides NDVI.")
@click.option("--top", default=12, type=int,
              help="Prediction reports: disagreeing parcels shown with thumbnails, most confident first.")
@cluster_options(spec_help="Store reports: a spec name, spec YAML path or scheduler address tcp://HOST:PORT (see crop2seg-build-dataset).")
@verbose_opt
@quiet_opt
def report_cmd(source, out, min_clear, bands, top, cluster, workers, threads_per_worker, memory_limit, verbose,
               quiet):
    """Write a self-contained HTML report (+ PNG figures, CSV tables) of a patch store or a prediction.

    SOURCE is a patch store (crop2seg-build-dataset --out: class distribution, per-class NDVI and
    band temporal profiles, clear sky per date, patch map by split, normalization statistics,
    computed on the Dask cluster one patch per task) or a prediction folder (crop2seg-predict
    --out: area per class, agreement per declared class, declared-vs-predicted confusion, the
    most confident disagreeing parcels with thumbnails, the quicklook). OUT/index.html opens
    offline: its figures are embedded.
    """
    setup_logging(verbose, quiet)
    from ..locks import writer_lock
    from ..report import check_report, make_report

    if source is None:
        raise click.UsageError("give SOURCE: a patch store or a crop2seg-predict output folder")
    if out is None:
        raise click.UsageError("--out is required")
    band_list = tuple(b.strip() for b in bands.split(",") if b.strip())
    opts = dict(min_clear=min_clear, bands=band_list, top=top)
    try:
        kind, _ = check_report(source, out, **opts)
        if kind == "store":
            check_cluster(cluster, n_workers=workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit)
        pause_point("args")
        with contextlib.ExitStack() as stack:
            stack.enter_context(writer_lock(out, "crop2seg-report", "report folder"))
            if kind == "prediction":
                summary = make_report(source, out, progress=log.info, **opts)
            else:
                client = open_cluster(stack, cluster, n_workers=workers, threads_per_worker=threads_per_worker,
                                      memory_limit=memory_limit)
                summary = make_report(source, out, client=client, progress=log.info, **opts)
    except Crop2SegError as e:
        raise fail(e) from e
    click.echo(summary.format())
