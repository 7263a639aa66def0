"""``crop2seg-demo-scene``: write the synthetic Sentinel-2 demo scene (see :mod:`crop2seg_pipeline.demo`)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import Crop2SegError
from ..workflow import workflow_option
from . import CONTEXT, fail, quiet_opt, setup_logging, verbose_opt


@click.command(context_settings=CONTEXT)
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
    setup_logging(verbose, quiet)
    from ..demo import make_demo_scene

    t0 = time.perf_counter()
    try:
        scene = make_demo_scene(outdir, size=size, n_dates=n_dates, seed=seed, parcels_crs=parcels_crs,
                                overwrite=overwrite)
    except (Crop2SegError, ValueError) as e:
        raise fail(e) from e
    click.echo(f"demo scene: {scene.root} ({size} x {size} px, {len(scene.dates)} dates) in {time.perf_counter() - t0:.1f} s")
    click.echo(f"  items   : {scene.items}")
    click.echo(f"  parcels : {scene.parcels}")
    click.echo(f"  mapping : {scene.mapping}")
