"""``crop2seg-demo-scene``: write the synthetic Sentinel-2 demo scene (see :mod:`crop2seg_pipeline.demo`)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import Crop2SegError
from ..workflow import workflow_option
from . import command, fail, quiet_opt, setup_logging, verbose_opt

#: The parameters of make_demo_scene as the options of this command, for its messages.
_OPTIONS = {"size": "--size", "n_dates": "--dates", "seed": "--seed", "parcels_crs": "--parcels-crs",
            "year": "--year", "format": "--format", "tile": "--tile"}


@command(interrupted="the scene is incomplete; run the same command again to make it.")
@workflow_option("demo-scene")
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", default=1024, type=int, help="Scene side in 10 m pixels (even).")
@click.option("--dates", "n_dates", default=24, type=int, help="Number of acquisition dates.")
@click.option("--seed", default=0, type=int, help="Random seed (same seed, same scene; another seed, another landscape and date set).")
@click.option("--tile", default="33UWQ", help="Sentinel-2 (MGRS) tile the scene stands for, e.g. 33UVR: its real UTM grid, ids and footprint.")
@click.option("--year", default=2022, type=int, help="Harvest year of the season (15 Sep of YEAR-1 .. 15 Oct of YEAR); baselines follow the dates.")
@click.option("--format", "fmt", default="cog", type=click.Choice(["cog", "safe", "safe-zip"]),
              help="cog: one COG per band and date; safe: L2A .SAFE products (JPEG2000); safe-zip: the same, zipped.")
@click.option("--parcels-crs", default=5514, type=int, help="EPSG code of the parcel file (5514: Czech S-JTSK).")
@click.option("--overwrite", is_flag=True, help="Replace OUTDIR if it holds another scene.")
@verbose_opt
@quiet_opt
def demo_scene_cmd(outdir, size, n_dates, seed, tile, year, fmt, parcels_crs, overwrite, verbose, quiet):
    """Write a synthetic Sentinel-2 L2A scene (COGs or SAFE products, SCL, STAC items) and LPIS-like parcels to OUTDIR.

    The scene sits on the real Sentinel-2 grid of --tile (default 33UWQ, EPSG:32633), at native
    10/20 m resolution, with clouds, shadows, a swath edge, the processing baselines of its dates
    (04.00 and its +1000 DN offset from 2022-01-25), and crops with their own phenology.
    """
    setup_logging(verbose, quiet)
    from ..demo import make_demo_scene

    t0 = time.perf_counter()
    try:
        scene = make_demo_scene(outdir, size=size, n_dates=n_dates, seed=seed, parcels_crs=parcels_crs,
                                overwrite=overwrite, tile=tile, year=year, format=fmt)
    except ValueError as e:  # a parameter: named as the option
        msg = str(e)
        first = msg.split(" ", 1)[0]
        raise click.ClickException(_OPTIONS[first] + msg[len(first):] if first in _OPTIONS else msg) from None
    except Crop2SegError as e:
        raise fail(e) from e
    click.echo(f"demo scene: {scene.root} ({size} x {size} px, tile {scene.tile}, {len(scene.dates)} dates "
               f"{scene.dates[0]}..{scene.dates[-1]}, {fmt}) in {time.perf_counter() - t0:.1f} s")
    click.echo(f"  items   : {scene.items}")
    click.echo(f"  parcels : {scene.parcels}")
    click.echo(f"  mapping : {scene.mapping}")
