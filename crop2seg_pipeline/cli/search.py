"""``crop2seg-search``: Sentinel-2 L2A items from a STAC API (see :mod:`crop2seg_pipeline.search`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from ..errors import Crop2SegError
from ..workflow import workflow_option
from . import command, fail, parse_floats, quiet_opt, setup_logging, verbose_opt


def _date(text: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise click.BadParameter(f"expected a date YYYY-MM-DD, got {text!r}", param_hint=name) from None


@command()
@workflow_option("search")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="ItemCollection JSON to write.")
@click.option("--provider", type=click.Choice(["earth-search", "planetary-computer", "cdse"]), default=None,
              help="STAC API and collection (default earth-search, or none with --url).")
@click.option("--url", default=None, help="Another STAC API root; overrides the provider's endpoint.")
@click.option("--collection", default=None, help="Collection id (default: the provider's Sentinel-2 L2A collection).")
@click.option("--bbox", default=None, help="Area 'minlon,minlat,maxlon,maxlat'.")
@click.option("--area", type=click.Path(dir_okay=False, exists=True), default=None, help="Area as a vector file (GeoJSON, GPKG...; any CRS).")
@click.option("--tiles", default=None, help="MGRS tiles, comma-separated (e.g. 33UWQ,33UVR): only their items are kept.")
@click.option("--start", required=False, help="First date YYYY-MM-DD.")
@click.option("--end", required=False, help="Last date YYYY-MM-DD.")
@click.option("--max-cloud", default="100", help="Tile cloud limit (%%): one value, or one per month (implies monthly windows).")
@click.option("--per-month", default=None, type=int, help="At most N least-cloudy scenes per tile and month (implies monthly windows).")
@click.option("--monthly/--whole-range", default=None, help="Search month by month (default when --per-month or several limits are given).")
@click.option("--limit", default=100, type=int, help="Page size of the STAC API requests.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--list-providers", is_flag=True, help="Print the known providers and their quirks, then exit.")
@verbose_opt
@quiet_opt
def search_cmd(out, provider, url, collection, bbox, area, tiles, start, end, max_cloud, per_month, monthly, limit,
               overwrite, list_providers, verbose, quiet):
    """Search a STAC API for Sentinel-2 L2A items and write them as an ItemCollection JSON.

    Crop2Seg's recipe (monthly windows, per-month cloud limits, at most 5 scenes a month per
    tile) is --max-cloud with one value per month and --per-month 5. The file keeps the
    provider's hrefs unsigned; readers sign Planetary Computer hrefs when they open them.
    """
    setup_logging(verbose, quiet)
    from ..search import PROVIDERS, Window, format_summary, monthly_windows, provider_for, read_area, search_windows, write_items
    from ..checks import check_bbox
    from ..s2tiles import parse_tile

    if list_providers:
        for p in PROVIDERS.values():
            click.echo(f"{p.name}: {p.url} (collection {p.collection})\n  {p.notes}")
        return
    if out is None:
        raise click.UsageError("--out is required")
    if start is None or end is None:
        raise click.UsageError("--start and --end are required")
    if out.exists() and not overwrite:
        raise click.UsageError(f"{out} exists; pass --overwrite to replace it")
    d0, d1 = _date(start, "--start"), _date(end, "--end")
    if d1 < d0:
        raise click.BadParameter(f"--end {d1} is before --start {d0}", param_hint="--end")
    if sum(x is not None for x in (bbox, area)) > 1:
        raise click.UsageError("give at most one of --bbox and --area (--tiles may be combined with either)")
    tile_list = [t.strip() for t in tiles.split(",") if t.strip()] if tiles else None
    if not (bbox or area or tile_list):
        raise click.UsageError("give an area: --bbox, --area or --tiles")
    try:
        if tile_list:
            tile_list = [parse_tile(t).name for t in tile_list]
        limits = [float(v) for v in str(max_cloud).split(",") if v.strip()]
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if not limits or any(not 0 <= v <= 100 for v in limits):
        raise click.BadParameter(f"cloud limits are percentages 0..100, got {max_cloud!r}", param_hint="--max-cloud")
    if per_month is not None and per_month < 1:
        raise click.BadParameter("must be >= 1", param_hint="--per-month")
    if monthly is None:
        monthly = per_month is not None or len(limits) > 1
    try:
        if monthly:
            windows = monthly_windows(d0, d1, limits[0] if len(limits) == 1 else limits)
        elif len(limits) > 1:
            raise click.BadParameter("several cloud limits need monthly windows", param_hint="--max-cloud")
        else:
            windows = [Window(d0, d1, limits[0])]
        prov, api = provider_for(provider, url)
        coll = collection or (prov.collection if prov else None)
        if coll is None:
            raise click.UsageError("--collection is required with --url and no --provider")
        box = check_bbox(parse_floats(bbox, 4, "--bbox"), "EPSG:4326")
        geom = read_area(area) if area else None
        items = search_windows(api, coll, windows=windows, bbox=box, intersects=geom, tiles=tile_list,
                               max_per_window=per_month, provider=prov, limit=limit,
                               progress=None if quiet else click.echo)
        write_items(items, out)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    except Crop2SegError as e:
        raise fail(e) from e
    click.echo(format_summary(items))
    click.echo(f"wrote {len(items)} item(s) to {out}")
