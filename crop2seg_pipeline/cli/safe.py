"""``crop2seg-index-safe``: Sentinel-2 L2A SAFE products -> a STAC items JSON (see :mod:`crop2seg_pipeline.safe`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import Crop2SegError
from ..workflow import workflow_option
from . import command, fail, quiet_opt, setup_logging, verbose_opt


@command()
@workflow_option("index-safe")
@click.argument("products", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Items JSON to write.")
@click.option("--absolute", is_flag=True, help="Absolute hrefs (default: relative to the folder of --out).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@verbose_opt
@quiet_opt
def index_safe_cmd(products, out, absolute, overwrite, verbose, quiet):
    """Index L2A .SAFE folders or .zip products (or folders holding them) into a STAC items JSON.

    Only the metadata (MTD_MSIL2A.xml, MTD_TL.xml) is read. Every command takes the result as
    --items; they also take a product or a folder of products directly.
    """
    setup_logging(verbose, quiet)
    from ..safe import index_safe
    from ..search import format_summary, write_items

    if out.exists() and not overwrite:
        raise click.UsageError(f"{out} exists; pass --overwrite to replace it")
    try:
        items = index_safe(products, relative_to=None if absolute else out.resolve().parent)
        write_items(items, out)
    except Crop2SegError as e:
        raise fail(e) from e
    click.echo(format_summary(items))
    click.echo(f"wrote {len(items)} item(s) to {out}")
