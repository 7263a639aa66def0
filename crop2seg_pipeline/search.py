"""STAC API search for Sentinel-2 L2A items, through pystac-client, for the providers we know.

:func:`search_windows` is Crop2Seg's download recipe expressed as STAC queries: date windows
(typically calendar months) each with its own tile cloud-cover limit, at most N least-cloudy
scenes per window and tile. The area is a bbox, a GeoJSON geometry, or MGRS tiles (their
footprints, and only their items are kept). Providers, their collection names and quirks are
data (:data:`PROVIDERS`); ``url=`` points at any other STAC API.

Nothing here signs hrefs: items are written as the provider publishes them, and readers sign at
read time (:mod:`crop2seg_pipeline.access`), so no secret ever lands in an items file.
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Crop2SegError, EmptySelectionError, ReadError
from .storage import write_local_atomic

__all__ = ["Provider", "PROVIDERS", "Window", "monthly_windows", "search", "search_windows", "summarize",
           "write_items", "SearchError"]

log = logging.getLogger(__name__)


class SearchError(Crop2SegError):
    """A STAC API search cannot be made as asked (unreachable API, unknown collection...)."""


@dataclass(frozen=True)
class Provider:
    """A STAC API that serves Sentinel-2 L2A, and what to know about it.

    Attributes
    ----------
    name : str
        Short name used on the command line (``--provider``).
    url : str
        STAC API root (landing page).
    collection : str
        The Sentinel-2 L2A collection id there.
    tile_property : str or None
        Item property holding the MGRS tile, used for a server-side tile filter.
    tile_prefix : str
        Prefix of that property's values (Earth Search: ``MGRS-``).
    signing : str or None
        How hrefs must be signed at read time (``planetary-computer``), or None.
    notes : str
        Quirks, shown by ``crop2seg-search --list-providers``.
    """

    name: str
    url: str
    collection: str
    tile_property: str | None = None
    tile_prefix: str = ""
    signing: str | None = None
    notes: str = ""


PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Provider(
        "earth-search", "https://earth-search.aws.element84.com/v1", "sentinel-2-l2a",
        tile_property="grid:code", tile_prefix="MGRS-",
        notes="public COGs on AWS (us-west-2), asset keys by common name (red, nir08, scl...); "
              "`earthsearch:boa_offset_applied: true` items already had the 04.00 offset removed although "
              "raster:bands declare offset -0.1 (Element84/earth-search#71): the offset is not applied again.",
    ),
    Provider(
        "planetary-computer", "https://planetarycomputer.microsoft.com/api/stac/v1", "sentinel-2-l2a",
        tile_property="s2:mgrs_tile", signing="planetary-computer",
        notes="COGs in Azure Blob Storage: hrefs need a SAS token, added at read time (tokens renewed; "
              "PC_SDK_SUBSCRIPTION_KEY optional); no raster:offset: the baseline decides the offset.",
    ),
    Provider(
        "cdse", "https://stac.dataspace.copernicus.eu/v1", "sentinel-2-l2a",
        tile_property="grid:code", tile_prefix="MGRS-",
        notes="Copernicus Data Space: JPEG2000 inside the SAFE products, hrefs s3://eodata/... (set "
              "AWS_S3_ENDPOINT=eodata.dataspace.copernicus.eu, AWS_VIRTUAL_HOSTING=FALSE and your CDSE S3 keys "
              "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY); asset keys with resolution (B02_10m), proj:code, "
              "raster:offset -0.1 from baseline 04.00, file:checksum on assets.",
    ),
)}


@dataclass(frozen=True)
class Window:
    """A date window (inclusive) with its own tile cloud-cover limit (percent)."""

    start: dt.date
    end: dt.date
    max_cloud: float = 100.0

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "Window":
        try:
            w = cls(dt.date.fromisoformat(str(d["start"])), dt.date.fromisoformat(str(d["end"])),
                    float(d.get("max_cloud", 100.0)))
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"a window needs start and end ISO dates and an optional max_cloud: {d!r} ({e})") from None
        if w.end < w.start:
            raise ValueError(f"window {d!r} ends before it starts")
        return w

    @property
    def label(self) -> str:
        """``YYYY-MM`` for a calendar month, else ``start..end``."""
        last = calendar.monthrange(self.start.year, self.start.month)[1]
        if self.start.day == 1 and self.end == self.start.replace(day=last):
            return f"{self.start:%Y-%m}"
        return f"{self.start}..{self.end}"


def monthly_windows(start: dt.date, end: dt.date, max_cloud: float | Sequence[float] = 100.0) -> list[Window]:
    """Calendar months from ``start`` to ``end`` (cut to them), each with its cloud limit.

    ``max_cloud`` is one limit for all months or one per month (Crop2Seg: 14 limits, 2018-09..2019-10).
    """
    if end < start:
        raise ValueError(f"the end date {end} is before the start date {start}")
    months = []
    y, m = start.year, start.month
    while (y, m) <= (end.year, end.month):
        first = dt.date(y, m, 1)
        last = dt.date(y, m, calendar.monthrange(y, m)[1])
        months.append((max(first, start), min(last, end)))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    limits = [float(max_cloud)] * len(months) if isinstance(max_cloud, (int, float)) else [float(v) for v in max_cloud]
    if len(limits) != len(months):
        raise ValueError(f"{len(limits)} cloud limits for {len(months)} months ({start:%Y-%m}..{end:%Y-%m}); "
                         "give one limit, or one per month")
    return [Window(a, b, c) for (a, b), c in zip(months, limits)]


# ----------------------------------------------------------------------------- the search


def _client(url: str, timeout: float):
    import pystac_client
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    retry = Retry(total=4, connect=1, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=None)  # POST /search is safe to repeat
    try:
        return pystac_client.Client.open(url, stac_io=StacApiIO(timeout=timeout, max_retries=retry))
    except APIError as e:
        if getattr(e, "status_code", None) is None:  # no HTTP answer at all
            raise SearchError(f"cannot open the STAC API at {url}: {_short(e)}. Check the URL and the network.") from None
        raise SearchError(f"the STAC API at {url} answered HTTP {e.status_code} ({_short(e)}); check --url/--provider") from None
    except Exception as e:  # noqa: BLE001 (JSON errors: not a STAC API)
        raise SearchError(f"cannot open the STAC API at {url}: {_short(e)}. Check the URL and the network.") from None


def _short(e: Exception, n: int = 300) -> str:
    text = str(e).strip().replace("\n", " ")
    return text[:n] + ("..." if len(text) > n else "")


def _check_collection(client: Any, url: str, collection: str) -> None:
    from pystac_client.exceptions import APIError

    try:
        found = client.get_collection(collection)
    except (APIError, NotImplementedError, KeyError):
        return  # the API does not list collections: the search itself will tell
    except Exception:  # noqa: BLE001
        return
    if found is None:
        try:
            known = sorted(c.id for c in client.get_collections())
        except Exception:  # noqa: BLE001
            known = []
        hint = f"; it serves: {', '.join(known[:20])}" if known else ""
        raise SearchError(f"the STAC API at {url} has no collection {collection!r}{hint}. Pass --collection with "
                          "one of them (Sentinel-2 L2A is 'sentinel-2-l2a' on Earth Search, Planetary Computer and CDSE)")


def _tile_of(item: Mapping) -> str:
    from .items import _tile  # one parser of tile ids for every provider

    return _tile(str(item.get("id", "")), item.get("properties", {}))


def search(
    url: str,
    collection: str,
    *,
    start: dt.date,
    end: dt.date,
    bbox: Sequence[float] | None = None,
    intersects: Mapping | None = None,
    max_cloud: float | None = None,
    tiles: Sequence[str] | None = None,
    provider: Provider | None = None,
    limit: int = 100,
    max_items: int | None = 10000,
    timeout: float = 60.0,
    client: Any = None,
) -> list[dict]:
    """Items of ``collection`` in the area between ``start`` and ``end`` (inclusive), as dicts.

    The cloud limit goes to the server (``query`` extension) and is applied again on the client,
    as the tile filter is (servers differ in what they honour).
    """
    from pystac_client.exceptions import APIError

    client = client or _client(url, timeout)
    query: dict[str, Any] = {}
    if max_cloud is not None and max_cloud < 100:
        query["eo:cloud_cover"] = {"lte": max_cloud}
    if tiles and provider is not None and provider.tile_property:
        query[provider.tile_property] = {"in": [provider.tile_prefix + t for t in tiles]}
    kw: dict[str, Any] = {"collections": [collection], "limit": limit, "max_items": max_items,
                          "datetime": f"{start.isoformat()}T00:00:00Z/{end.isoformat()}T23:59:59.999Z"}
    if bbox is not None:
        kw["bbox"] = [float(v) for v in bbox]
    if intersects is not None:
        kw["intersects"] = dict(intersects)
    if query:
        kw["query"] = query
    try:
        found = list(client.search(**kw).items_as_dicts())
    except APIError as e:
        raise SearchError(f"the STAC search at {url} ({collection}) failed: {_short(e)}") from None
    except Exception as e:  # noqa: BLE001 (connection errors during paging)
        raise SearchError(f"the STAC search at {url} ({collection}) failed: {_short(e)}. Check the network.") from None
    wanted = {t.upper().lstrip("T") for t in tiles} if tiles else None
    out = []
    for it in found:
        if wanted is not None and _tile_of(it) not in wanted:
            continue
        cc = it.get("properties", {}).get("eo:cloud_cover")
        if max_cloud is not None and cc is not None and float(cc) > max_cloud:
            continue
        out.append(it)
    return out


def search_windows(
    url: str,
    collection: str,
    *,
    windows: Sequence[Window],
    bbox: Sequence[float] | None = None,
    intersects: Mapping | None = None,
    tiles: Sequence[str] | None = None,
    max_per_window: int | None = None,
    provider: Provider | None = None,
    progress: Callable[[str], None] | None = None,
    **kw: Any,
) -> list[dict]:
    """Items per tile and window: at most ``max_per_window`` least-cloudy scenes under each limit.

    Parameters
    ----------
    url, collection
        The STAC API root and collection id.
    windows
        Date windows with their cloud limits (:func:`monthly_windows` for Crop2Seg's recipe).
    bbox, intersects
        The area: lon/lat bbox or a GeoJSON geometry. With ``tiles`` only, the tiles' footprints.
    tiles
        MGRS tile ids: only items of these tiles are kept.
    max_per_window
        At most this many items per tile and window, least cloudy first (ties: earlier first).

    Raises
    ------
    EmptySelectionError
        No item at all for these windows, area and tiles.
    SearchError
        The API is unreachable, or has no such collection.
    """
    from .s2tiles import parse_tile

    if bbox is None and intersects is None:
        if not tiles:
            raise ValueError("give an area: bbox, intersects (a GeoJSON geometry) or tiles")
        boxes = [parse_tile(t).bounds_wgs84() for t in tiles]
        bbox = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    tiles = [parse_tile(t).name for t in tiles] if tiles else None
    say = progress or log.info
    client = kw.pop("client", None) or _client(url, kw.get("timeout", 60.0))
    _check_collection(client, url, collection)
    chosen: list[dict] = []
    for w in windows:
        found = search(url, collection, start=w.start, end=w.end, bbox=bbox, intersects=intersects,
                       max_cloud=w.max_cloud, tiles=tiles, provider=provider, client=client, **kw)
        by_tile: dict[str, list[dict]] = {}
        for it in found:
            by_tile.setdefault(_tile_of(it), []).append(it)
        kept = 0
        for tile, its in sorted(by_tile.items()):
            its.sort(key=lambda i: (float(i["properties"].get("eo:cloud_cover") or 0.0),
                                    i["properties"].get("datetime", ""), i.get("id", "")))
            take = its[:max_per_window] if max_per_window else its
            chosen.extend(take)
            kept += len(take)
        say(f"{w.label} (<= {w.max_cloud:g} % cloud): {kept} item(s) kept of {len(found)} found")
    if not chosen:
        area = f"tiles {', '.join(tiles)}" if tiles else f"bbox {tuple(round(v, 4) for v in bbox)}" if bbox else "the area"
        raise EmptySelectionError(
            f"the STAC search at {url} ({collection}) found no item in {area} for "
            f"{windows[0].start}..{windows[-1].end} under the cloud limits; widen the dates or the area, "
            "raise the cloud limits, or check the tile ids"
        )
    return sorted(chosen, key=lambda i: (i["properties"].get("datetime", ""), i.get("id", "")))


# ----------------------------------------------------------------------------- output


def summarize(items: Sequence[Mapping]) -> list[dict]:
    """Items per tile and month with their cloud cover: rows of a table."""
    rows: dict[tuple[str, str], list[float | None]] = {}
    for it in items:
        month = str(it["properties"].get("datetime", ""))[:7]
        cc = it["properties"].get("eo:cloud_cover")
        rows.setdefault((_tile_of(it), month), []).append(None if cc is None else float(cc))
    out = []
    for (tile, month), ccs in sorted(rows.items()):
        known = [c for c in ccs if c is not None]
        out.append({"tile": tile, "month": month, "items": len(ccs),
                    "cloud_mean": sum(known) / len(known) if known else None,
                    "cloud_max": max(known) if known else None})
    return out


def format_summary(items: Sequence[Mapping]) -> str:
    rows = summarize(items)
    lines = [f"{'tile':<6} {'month':<8} {'items':>5} {'cloud mean %':>12} {'cloud max %':>11}"]
    for r in rows:
        mean = "n/a" if r["cloud_mean"] is None else f"{r['cloud_mean']:.1f}"
        mx = "n/a" if r["cloud_max"] is None else f"{r['cloud_max']:.1f}"
        lines.append(f"{r['tile']:<6} {r['month']:<8} {r['items']:>5} {mean:>12} {mx:>11}")
    tiles = sorted({r["tile"] for r in rows})
    lines.append(f"{len(items)} item(s), {len(tiles)} tile(s): " + ", ".join(
        f"{t} {sum(r['items'] for r in rows if r['tile'] == t)}" for t in tiles))
    return "\n".join(lines)


def write_items(items: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Write items as a STAC ItemCollection JSON (atomically: a temporary file, then renamed)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {"type": "FeatureCollection", "features": [dict(it) for it in items]}
    try:
        write_local_atomic(p, lambda fh: fh.write(json.dumps(doc, indent=1).encode("utf-8")))
    except OSError as e:
        raise ReadError(f"cannot write {p}: {e}") from e
    return p


def read_area(path: str | os.PathLike) -> dict:
    """The union geometry (GeoJSON, lon/lat) of a vector file (GeoJSON, GPKG... any CRS)."""
    import geopandas as gpd
    import shapely

    try:
        gdf = gpd.read_file(path)
    except Exception as e:  # noqa: BLE001 (pyogrio errors)
        raise ReadError(f"cannot read the area file {str(path)!r}: {e}") from None
    if gdf.empty:
        raise EmptySelectionError(f"the area file {str(path)!r} holds no geometry")
    if gdf.crs is not None and gdf.crs.to_epsg() != 4326:
        gdf = gdf.to_crs(4326)
    geom = shapely.union_all(gdf.geometry.make_valid().values)
    return shapely.geometry.mapping(geom)


def provider_for(name: str | None, url: str | None) -> tuple[Provider | None, str]:
    """The provider of a name (``None`` with a URL: a generic STAC API) and the URL to use."""
    if name is None:
        if url is None:
            name = "earth-search"
        else:
            return None, url
    if name not in PROVIDERS:
        raise SearchError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDERS)} or give --url")
    p = PROVIDERS[name]
    return p, url or p.url
