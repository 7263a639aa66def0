"""``crop2seg-app``: the local web app (a thin click wrapper over :mod:`crop2seg_pipeline.app`)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path

import click

from ..errors import Crop2SegError
from ..workflow import workflow_option
from . import CONTEXT, cluster_options, quiet_opt, setup_logging, starting_cluster, verbose_opt

log = logging.getLogger("crop2seg_pipeline")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/crop2seg-pipeline/app`` (``~/.cache/crop2seg-pipeline/app``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "crop2seg-pipeline" / "app"


@click.command(context_settings=CONTEXT)
@workflow_option("app")
@click.option("--items", help="STAC ItemCollection JSON (path or URL). Default: the embedded demo scene.")
@click.option("--weights", type=click.Path(), help="Default weights folder in the page. Default: the shipped demo weights.")
@click.option("--parcels", type=click.Path(dir_okay=False), help="LPIS parcels scored with each prediction (any OGR format/CRS). Default with the demo: its parcels.")
@click.option("--mapping", type=click.Path(dir_okay=False, exists=True), help="Crop code -> class id CSV for --parcels. Default: the shipped Czech table.")
@click.option("--id-column", default="ID_DPB", help="Parcel id attribute.")
@click.option("--crop-column", default="KOD_PLODINY", help="Crop code attribute.")
@click.option("--layer", default=None, help="Layer of a multi-layer parcel file.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where predictions, backgrounds and NDVI series are kept (one folder per request). Default: ~/.cache/crop2seg-pipeline/app.")
@click.option("--host", default="127.0.0.1", help="Address to listen on (loopback by default: only this machine can open the app).")
@click.option("--port", default=5006, type=click.IntRange(0, 65535), help="Port (0: a free one).")
@click.option("--allow-origin", multiple=True, help="Extra host:port the page may be opened from (e.g. behind a proxy); repeatable.")
@click.option("--cell-size", default=None, type=click.IntRange(min=16), help="Cell size (px of 10 m). Default: Crop2Seg's 1098 on whole tiles, a quarter of the area on small ones.")
@click.option("--overlap", default=32, type=click.IntRange(min=0), help="Default window overlap (px).")
@click.option("--batch-size", default=8, type=click.IntRange(min=1), help="Default windows per forward pass.")
@click.option("--chunksize", default=512, type=click.IntRange(min=16), help="Spatial chunk (px) of predictions.")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.option("--parallel", default=1, type=click.IntRange(min=1), help="Predictions that run at once (others queue).")
@click.option("--max-side", default=1024, type=click.IntRange(min=64), help="Longest side (px) of the images the map shows.")
@cluster_options()
@click.option("--demo-size", default=1024, type=int, help="Size of the embedded demo scene when --items is not given.")
@verbose_opt
@quiet_opt
def app_cmd(items, weights, parcels, mapping, id_column, crop_column, layer, cache_dir, host, port, allow_origin,
            cell_size, overlap, batch_size, chunksize, device, parallel, max_side, cluster, workers,
            threads_per_worker, memory_limit, demo_size, verbose, quiet):
    """Start the web app: pick a cell of the items' tiles, predict it on the Dask cluster, check parcels.

    The page shows the area's own true-colour composite (no internet needed), the cell grid, the
    class map with a legend and opacity, confidence, parcels coloured by agreement with their
    declaration (click one for its classes and NDVI series), a table of disagreeing parcels,
    downloads and the cache. With no arguments it opens the embedded demo scene with the shipped
    demo weights. Every asset is served by the app itself (BokehJS from the installed bokeh).
    """
    setup_logging(verbose, quiet)
    from ..app.area import open_area
    from ..app.cache import AppCache
    from ..app.page import make_document
    from ..app.server import AppConfig, AppServer, AppState, bind_port
    from ..build import default_demo_paths
    from ..cluster import connect
    from ..predict import default_demo_weights, read_model_spec

    # 1. every argument checked before anything starts
    weights = weights or str(default_demo_weights())
    try:
        read_model_spec(weights)
    except Crop2SegError as e:
        raise click.BadParameter(str(e), param_hint="--weights") from None
    try:
        cache = AppCache(cache_dir or default_cache_dir())
    except Crop2SegError as e:
        raise click.BadParameter(str(e), param_hint="--cache-dir") from None
    if parcels is not None and not Path(parcels).exists():
        raise click.BadParameter(f"{parcels} does not exist", param_hint="--parcels")
    if items is None:
        from ..demo import make_demo_scene

        scene_dir, _ = default_demo_paths()
        click.echo(f"no --items given: using the embedded demo scene in {scene_dir}/")
        try:
            scene = make_demo_scene(scene_dir, size=demo_size, progress=log.info)
        except (Crop2SegError, ValueError) as e:
            raise click.ClickException(str(e)) from e
        items = str(scene.items)
        if parcels is None:
            parcels, mapping = str(scene.parcels), mapping or str(scene.mapping)
    try:
        area = open_area(items)
    except Crop2SegError as e:
        raise click.BadParameter(str(e), param_hint="--items") from None
    try:
        sockets = bind_port(host, port)
    except Crop2SegError as e:
        raise click.ClickException(str(e)) from None

    # 2. the cache, the cluster, the server
    try:
        cache.ensure()
    except Crop2SegError as e:
        for s in sockets:
            s.close()
        raise click.ClickException(str(e)) from None
    config = AppConfig(items=items, weights=weights, cache_dir=str(cache.root), parcels=parcels, mapping=mapping,
                       id_column=id_column, crop_column=crop_column, layer=layer, cell_size=cell_size,
                       overlap=overlap, batch_size=batch_size, chunksize=chunksize, device=device,
                       max_side=max_side, parallel=parallel)
    state = AppState(config, cache)
    server = AppServer(state, make_document, sockets, allow_origins=list(allow_origin))
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with contextlib.ExitStack() as stack:
            with starting_cluster(cluster):  # only this process gets Ctrl-C; it closes the cluster
                client = stack.enter_context(connect(cluster, n_workers=workers, threads_per_worker=threads_per_worker,
                                                     memory_limit=memory_limit))
            state.client = client
            click.echo(f"Dask dashboard: {client.dashboard_link}")
            server.start()
            click.echo(f"items: {area.source} ({len(area.dates)} dates, {area.grid.height} x {area.grid.width} px, "
                       f"EPSG:{area.epsg}); cache: {cache.root}")
            click.echo(f"crop2seg app: {server.url}  (Ctrl-C stops it)")
            try:
                stop.wait()
            except KeyboardInterrupt:
                click.echo("\nstopping the app", err=True)
            finally:
                server.stop()
    except Crop2SegError as e:
        server.stop()
        raise click.ClickException(str(e)) from e
    finally:
        signal.signal(signal.SIGTERM, previous)
        for s in sockets:
            s.close()
