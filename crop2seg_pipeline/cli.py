"""Command-line entry points: thin click wrappers over the Python API."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import click

from .workflow import workflow_option
from .errors import Crop2SegError

log = logging.getLogger("crop2seg_pipeline")


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("crop2seg_pipeline")
    root.handlers[:] = [handler]
    root.setLevel(level)
    if verbose < 2:
        logging.getLogger("distributed").setLevel(logging.WARNING)
        # distributed 2026.8's client.sync can log a spurious NameError traceback through tornado
        # when Ctrl-C lands mid-wait; the interrupt itself is handled (message, exit 130). -vv shows it.
        logging.getLogger("tornado.application").setLevel(logging.CRITICAL)


@contextlib.contextmanager
def _workers_ignore_sigint(cluster: str | None) -> Iterator[None]:
    """Start a local cluster's worker processes with SIGINT ignored (inherited through exec).

    A terminal's Ctrl-C goes to the whole process group: without this, every worker dies on its
    own KeyboardInterrupt (tracebacks on stderr, the nanny killing them after a timeout) while the
    client is still cancelling the build. With it, only this process gets the interrupt, and it
    cancels the pass and closes the cluster itself. Other cluster types start no local workers
    (and may wait for jobs a long time): left alone.
    """
    from .cluster import resolve_spec

    try:
        local = resolve_spec(cluster).get("type") == "local"
    except Exception:  # noqa: BLE001 (connect() reports a bad spec)
        local = False
    if not local or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _fail(e: Exception) -> click.ClickException:
    return click.ClickException(str(e))


verbose_opt = click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
quiet_opt = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")


def _floats(text: str | None, n: int, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise click.BadParameter(f"expected {n} comma-separated numbers, got {text!r}", param_hint=name) from None
    if len(vals) != n:
        raise click.BadParameter(f"expected {n} comma-separated numbers, got {len(vals)}", param_hint=name)
    return vals


# ----------------------------------------------------------------------------- crop2seg-demo-scene


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@workflow_option("demo-scene")
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", default=1024, type=int, help="Scene side in 10 m pixels (even).")
@click.option("--dates", "n_dates", default=24, type=int, help="Number of acquisition dates.")
@click.option("--seed", default=0, type=int, help="Random seed (same seed, same scene).")
@click.option("--parcels-crs", default=5514, type=int, help="EPSG code of the parcel file (5514: Czech S-JTSK).")
@click.option("--overwrite", is_flag=True, help="Replace OUTDIR if it holds another scene.")
@verbose_opt
@quiet_opt
def demo_scene_cmd(outdir, size, n_dates, seed, parcels_crs, overwrite, verbose, quiet):
    """Write a synthetic Sentinel-2 L2A scene (COGs, SCL, STAC items) and LPIS-like parcels to OUTDIR.

    The scene sits on the real Sentinel-2 grid (tile 33UWQ, EPSG:32633), one Cloud-Optimized
    GeoTIFF per band and date at native 10/20 m resolution, with clouds, shadows, a swath edge,
    processing baselines before and after 04.00, and crops with their own phenology.
    """
    _setup_logging(verbose, quiet)
    from .demo import make_demo_scene

    t0 = time.perf_counter()
    try:
        scene = make_demo_scene(outdir, size=size, n_dates=n_dates, seed=seed, parcels_crs=parcels_crs,
                                overwrite=overwrite)
    except (Crop2SegError, ValueError) as e:
        raise _fail(e) from e
    click.echo(f"demo scene: {scene.root} ({size} x {size} px, {len(scene.dates)} dates) in {time.perf_counter() - t0:.1f} s")
    click.echo(f"  items   : {scene.items}")
    click.echo(f"  parcels : {scene.parcels}")
    click.echo(f"  mapping : {scene.mapping}")


# ----------------------------------------------------------------------------- crop2seg-build-dataset


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@workflow_option("build-dataset")
@click.option("--items", help="STAC ItemCollection JSON (path or URL). Default: the embedded demo scene.")
@click.option("--parcels", type=click.Path(dir_okay=False), help="LPIS parcels (GPKG, SHP, GeoJSON, FlatGeobuf, GeoParquet; any CRS).")
@click.option("--out", type=click.Path(), help="Zarr patch store to write. Default: crop2seg-demo/patches.zarr.")
@click.option("--mapping", type=click.Path(dir_okay=False, exists=True), help="Crop code -> class id CSV. Default: the shipped Czech table.")
@click.option("--id-column", default="ID_DPB", help="Parcel id attribute.")
@click.option("--crop-column", default="KOD_PLODINY", help="Crop code attribute.")
@click.option("--layer", default=None, help="Layer of a multi-layer parcel file.")
@click.option("--patch-size", default=128, type=int, help="Patch side in pixels.")
@click.option("--bbox", default=None, help="Area of interest 'minx,miny,maxx,maxy' (in --bbox-crs).")
@click.option("--bbox-crs", default="EPSG:4326", help="CRS of --bbox.")
@click.option("--start", default=None, help="First date (YYYY-MM-DD).")
@click.option("--end", default=None, help="Last date (YYYY-MM-DD).")
@click.option("--max-cloud", default=None, type=float, help="Drop items whose eo:cloud_cover (%) is above this.")
@click.option("--min-crop-cover", default=0.3, type=float, help="Keep patches with at least this share of crop pixels.")
@click.option("--min-date-clear", default=0.0, type=float, help="Drop a tile's dates whose clear-sky share is at most this.")
@click.option("--split", default="0.7,0.15,0.15", help="train,val,test shares (assigned by spatial blocks).")
@click.option("--split-block", default=2, type=int, help="Side of a split block, in patches.")
@click.option("--seed", default=0, type=int, help="Seed of the split assignment.")
@click.option("--chunk-patches", default=4, type=int, help="Work chunk side in patches (memory per task grows with its square).")
@click.option("--resampling-20m", default="nearest", type=click.Choice(["nearest", "bilinear", "cubic", "average"]), help="How 20 m bands reach 10 m.")
@click.option("--cluster", default="local", help="A spec name (local, slurm, slurm-gpu, pbs, existing: see crop2seg-cluster --dry-run), a spec YAML path, or a scheduler address tcp://HOST:PORT.")
@click.option("--workers", default=None, type=int, help="Local clusters only: number of workers (default: one per core).")
@click.option("--threads-per-worker", default=None, type=int, help="Local cluster: threads per worker (default 1).")
@click.option("--memory-limit", default=None, help="Local cluster: memory limit per worker, e.g. 4GB.")
@click.option("--overwrite", is_flag=True, help="Rebuild an existing patch store from scratch.")
@click.option("--demo-size", default=1024, type=int, help="Size of the embedded demo scene when --items is not given.")
@verbose_opt
@quiet_opt
def build_dataset_cmd(items, parcels, out, mapping, id_column, crop_column, layer, patch_size, bbox, bbox_crs,
                      start, end, max_cloud, min_crop_cover, min_date_clear, split, split_block, seed, chunk_patches,
                      resampling_20m, cluster, workers, threads_per_worker, memory_limit, overwrite, demo_size,
                      verbose, quiet):
    """Build a Zarr patch dataset from Sentinel-2 STAC items and LPIS parcels, on a Dask cluster.

    With no arguments, generates the embedded demo scene under ./crop2seg-demo/ and builds
    ./crop2seg-demo/patches.zarr. Re-running the same command after an interruption finishes
    only the missing patches.
    """
    _setup_logging(verbose, quiet)
    from .build import BuildConfig, build_dataset, default_demo_paths
    from .cluster import connect

    if (items is None) != (parcels is None):
        raise click.UsageError("give both --items and --parcels, or neither (to build the demo)")
    if items is None:
        from .demo import make_demo_scene

        scene_dir, default_out = default_demo_paths()
        click.echo(f"no --items/--parcels given: using the embedded demo scene in {scene_dir}/")
        try:
            scene = make_demo_scene(scene_dir, size=demo_size)
        except Crop2SegError as e:
            raise _fail(e) from e
        items, parcels = str(scene.items), str(scene.parcels)
        mapping = mapping or str(scene.mapping)
        out = out or str(default_out)
    if out is None:
        raise click.UsageError("--out is required with --items")
    try:
        cfg = BuildConfig(
            items=items, parcels=parcels, out=out, mapping=mapping, id_column=id_column, crop_column=crop_column,
            layer=layer, patch_size=patch_size, bbox=_floats(bbox, 4, "--bbox"), bbox_crs=bbox_crs, start=start,
            end=end, max_cloud=max_cloud, min_crop_cover=min_crop_cover, min_date_clear=min_date_clear,
            split=_floats(split, 3, "--split"), split_block=split_block, seed=seed, chunk_patches=chunk_patches,
            resampling_20m=resampling_20m,
        )
        cfg.validate()
        with contextlib.ExitStack() as stack:
            with _workers_ignore_sigint(cluster):
                client = stack.enter_context(
                    connect(cluster, n_workers=workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit)
                )
            click.echo(f"Dask dashboard: {client.dashboard_link}")
            try:
                summary = build_dataset(config=cfg, client=client, overwrite=overwrite)
            except KeyboardInterrupt:
                click.echo(
                    "\ninterrupted: patches written so far are kept; run the same command again to resume.",
                    err=True,
                )
                sys.exit(130)
    except Crop2SegError as e:
        raise _fail(e) from e
    click.echo(summary.format())


def main() -> None:  # pragma: no cover
    build_dataset_cmd()


if __name__ == "__main__":  # pragma: no cover
    main()
