"""STAC items: load them from files or URLs and normalize every provider to one shape.

Providers name and describe Sentinel-2 L2A assets differently. :func:`normalize_item` turns an
item from any of them (Earth Search v0/v1, Planetary Computer, Copernicus Data Space, the demo
scene) into one plain ``dict`` that stackstac reads correctly:

- exactly one asset per band, keyed by the Sentinel-2 band name (``B02`` ... ``B12``, ``B8A``,
  ``SCL``), at the band's native resolution when a provider ships resampled copies;
- ``proj:epsg`` on every asset (stackstac 0.5 ignores ``proj:code``), 6-element
  ``proj:transform``, ``proj:shape``;
- absolute hrefs (relative ones are resolved against the file the items came from; also
  relative ``/vsizip/`` paths into zipped SAFE products);
- ``crop2seg:dn_offset``, the DN offset to *add* to harmonize processing baseline >= 04.00 data
  (``-1000``) with older data (``0``), plus ``crop2seg:tile`` and ``crop2seg:baseline``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import posixpath
import re
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import shapely.geometry

from . import storage
from .checks import check_dates
from .errors import CRSError, EmptySelectionError, ItemError, MissingBandError, ReadError
from .nomenclature import BANDS, NATIVE_RESOLUTION, SCL

log = logging.getLogger(__name__)

#: First processing baseline whose L2A DNs carry the +1000 BOA offset (from 2022-01-25).
OFFSET_BASELINE = (4, 0)
OFFSET_START_DATE = dt.date(2022, 1, 25)
BOA_ADD_OFFSET = -1000

#: Asset-key aliases per band (lower-case). Resolution suffixes (``_10m``) are stripped first.
BAND_ALIASES: dict[str, tuple[str, ...]] = {
    "B02": ("b02", "b2", "blue"),
    "B03": ("b03", "b3", "green"),
    "B04": ("b04", "b4", "red"),
    "B05": ("b05", "b5", "rededge1", "rededge"),
    "B06": ("b06", "b6", "rededge2"),
    "B07": ("b07", "b7", "rededge3"),
    "B08": ("b08", "b8", "nir"),
    "B8A": ("b8a", "nir08", "rededge4", "nir narrow"),
    "B11": ("b11", "swir16"),
    "B12": ("b12", "swir22"),
    "SCL": ("scl",),
}
#: Item properties by which a provider says its DNs already have the BOA offset removed.
BOA_OFFSET_APPLIED_KEYS = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
_RES_SUFFIX = re.compile(r"[_-](\d{2})m$", re.IGNORECASE)
_BASELINE_IN_ID = re.compile(r"_N(\d{2})(\d{2})_")
_TILE_IN_ID = re.compile(r"_T(\d{2}[A-Z]{3})_")

ItemsLike = Any  # path, URL, list of paths, pystac objects or dicts


# ----------------------------------------------------------------------------- loading


def read_items(source: ItemsLike) -> list[dict]:
    """Read STAC items from a file, URL, list of them, pystac objects or plain dicts.

    Parameters
    ----------
    source
        A path or ``http(s)://`` URL to an ItemCollection / FeatureCollection / single Item JSON,
        a Sentinel-2 L2A ``.SAFE`` folder or ``.zip`` product (or a folder of them, indexed by
        :func:`crop2seg_pipeline.safe.index_safe`), a sequence of those, a
        ``pystac.ItemCollection`` / ``pystac.Item`` or a sequence of item dicts.

    Returns
    -------
    list of dict
        Raw item dicts (deep copies), each with ``crop2seg:base_href`` set to the location the
        item was read from, so relative asset hrefs can be resolved.
    """
    if isinstance(source, (str, os.PathLike)):
        return _read_location(str(source))
    if hasattr(source, "to_dict") and not isinstance(source, Mapping):
        d = source.to_dict()
        base = None
        self_href = getattr(source, "get_self_href", lambda: None)()
        if self_href:
            base = self_href
        return _features(d, base)
    if isinstance(source, Mapping):
        return _features(dict(source), None)
    if isinstance(source, Iterable):
        out: list[dict] = []
        for s in source:
            out.extend(read_items(s))
        return out
    raise TypeError(f"cannot read STAC items from {type(source).__name__}")


def _read_location(location: str) -> list[dict]:
    parsed = urllib.parse.urlparse(location)
    try:
        if parsed.scheme in ("http", "https"):
            with urllib.request.urlopen(location, timeout=60) as r:  # noqa: S310 (user-given URL)
                text = r.read().decode("utf-8")
            base = location
        elif storage.is_url(location):  # s3://, gs://... through fsspec (credentials from the environment)
            data = storage.read_bytes(location)
            if data is None:
                raise ReadError(f"cannot read STAC items from {storage.redact(location)!r}: no such object")
            text = data.decode("utf-8")
            base = location
        else:
            path = Path(location).expanduser()
            from .safe import index_safe, is_safe_source

            if is_safe_source(path):
                return index_safe(path)
            text = path.read_text(encoding="utf-8")
            base = str(path.resolve())
    except (OSError, ValueError) as e:
        raise ReadError(f"cannot read STAC items from {location!r}: {e}") from e
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReadError(f"{location!r} is not valid JSON ({e}); expected a STAC ItemCollection") from e
    return _features(d, base)


def _features(d: dict, base: str | None) -> list[dict]:
    if d.get("type") == "FeatureCollection":
        feats = d.get("features", [])
    elif d.get("type") == "Feature":
        feats = [d]
    else:
        raise ItemError(
            "expected a STAC Item or ItemCollection (GeoJSON 'Feature' or 'FeatureCollection'), "
            f"got type={d.get('type')!r}"
        )
    out = []
    for f in feats:
        f = copy.deepcopy(f)
        if base is not None:
            f.setdefault("crop2seg:base_href", base)
        out.append(f)
    return out


# ----------------------------------------------------------------------------- normalization


def normalize_items(items: ItemsLike, bands: Sequence[str] = BANDS, check_files: bool = True) -> list[dict]:
    """Read (if needed) and normalize items; see :func:`normalize_item`. Sorted by datetime."""
    raw = items if _is_item_dict_list(items) else read_items(items)
    if not raw:
        raise EmptySelectionError("no STAC items were given (the collection is empty)")
    out = [normalize_item(it, bands=bands, check_files=check_files) for it in raw]
    out.sort(key=lambda it: (it["properties"]["datetime"], it["id"]))
    return out


def _is_item_dict_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(i, Mapping) and i.get("type") == "Feature" for i in x)


def normalize_item(item: Mapping, bands: Sequence[str] = BANDS, check_files: bool = True) -> dict:
    """Normalize one STAC item dict (any provider) for the cube builder.

    Parameters
    ----------
    item
        A STAC item as a dict.
    bands
        Reflectance bands needed; ``SCL`` is always needed too.
    check_files
        For local hrefs, check that the files exist now (cheap), so a missing file fails before
        any computation starts.

    Raises
    ------
    MissingBandError
        A needed band has no asset in the item.
    ItemError
        The item lacks a datetime or projection information.
    ReadError
        A local file named by an asset does not exist.
    """
    item_id = str(item.get("id", "<no id>"))
    props = dict(item.get("properties", {}))
    if "crop2seg:dn_offset" in props:  # already normalized: idempotent
        missing = [b for b in [*bands, SCL] if b not in item.get("assets", {})]
        if missing:
            raise MissingBandError(f"item {item_id!r} has no asset for band(s) {', '.join(missing)}")
        return copy.deepcopy(dict(item))
    when = _item_datetime(item_id, props)
    base = item.get("crop2seg:base_href")
    item_epsg = _epsg_of(props)

    wanted = list(dict.fromkeys([*bands, SCL]))
    chosen = _choose_assets(item_id, item.get("assets", {}), wanted)
    assets: dict[str, dict] = {}
    for band, (key, asset) in chosen.items():
        epsg = _epsg_of(asset) or item_epsg
        if epsg is None:
            raise ItemError(
                f"item {item_id!r}, asset {key!r}: no projection (proj:epsg or proj:code) on the asset "
                "or the item; the pipeline needs the STAC projection extension"
            )
        shape = asset.get("proj:shape", props.get("proj:shape"))
        transform = asset.get("proj:transform", props.get("proj:transform"))
        if shape is None or transform is None:
            raise ItemError(
                f"item {item_id!r}, asset {key!r}: proj:shape and proj:transform are required "
                "(projection extension) to place the asset on the grid"
            )
        transform = [float(v) for v in list(transform)[:6]]
        href = _absolute_href(asset.get("href"), base, item_id, key)
        if check_files:
            _check_local(href, item_id, key)
        assets[band] = {
            "href": href,
            "type": asset.get("type", "image/tiff; application=geotiff"),
            "roles": ["data"],
            "proj:epsg": int(epsg),
            "proj:shape": [int(v) for v in shape],
            "proj:transform": transform,
            "crop2seg:source_key": key,
            "crop2seg:dn_offset": _dn_offset(asset, band),
        }

    baseline = _baseline(item_id, props)
    offsets = {b: a.pop("crop2seg:dn_offset") for b, a in assets.items()}
    explicit = {b: o for b, o in offsets.items() if o is not None and b != SCL}
    applied = next((k for k in BOA_OFFSET_APPLIED_KEYS if props.get(k) is True), None)
    if applied is not None:
        # Earth Search: the COGs already had the BOA offset removed, whatever raster:offset says
        # (Element84/earth-search#71): subtracting it again would darken every pixel by 0.1.
        dn_offset = 0
        how = f"{applied} (offset already applied by the provider)"
    elif explicit:
        dn_offset = int(round(np.median(list(explicit.values()))))
        how = "raster:offset"
    elif baseline is not None:
        dn_offset = BOA_ADD_OFFSET if baseline >= OFFSET_BASELINE else 0
        how = f"processing baseline {baseline[0]:02d}.{baseline[1]:02d}"
    else:
        dn_offset = BOA_ADD_OFFSET if when.date() >= OFFSET_START_DATE else 0
        how = "acquisition date (no baseline or raster:offset metadata)"
        log.warning("item %s: no processing baseline metadata, DN offset %d inferred from its date", item_id, dn_offset)

    geometry = item.get("geometry")
    bbox = item.get("bbox")
    if bbox is None and geometry is not None:
        bbox = list(shapely.geometry.shape(geometry).bounds)
    epsg0 = assets[wanted[0]]["proj:epsg"]
    new_props = {
        "datetime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "proj:epsg": epsg0,
        "eo:cloud_cover": _float_or_none(props.get("eo:cloud_cover")),
        "crop2seg:tile": _tile(item_id, props),
        "crop2seg:baseline": None if baseline is None else f"{baseline[0]:02d}.{baseline[1]:02d}",
        "crop2seg:dn_offset": dn_offset,
        "crop2seg:dn_offset_from": how,
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "geometry": geometry,
        "bbox": bbox,
        "properties": new_props,
        "assets": assets,
        "links": [],
    }


def _item_datetime(item_id: str, props: Mapping) -> dt.datetime:
    value = props.get("datetime") or props.get("start_datetime")
    if not value:
        raise ItemError(f"item {item_id!r} has no datetime")
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as e:
        raise ItemError(f"item {item_id!r}: cannot parse datetime {value!r}") from e
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return t


def _epsg_of(d: Mapping) -> int | None:
    if d.get("proj:epsg") is not None:
        return int(d["proj:epsg"])
    code = d.get("proj:code")
    if code:
        m = re.fullmatch(r"\s*EPSG:(\d+)\s*", str(code), re.IGNORECASE)
        if m:
            return int(m.group(1))
        try:
            return pyproj.CRS.from_user_input(code).to_epsg()
        except pyproj.exceptions.CRSError:
            return None
    return None


def _asset_band_names(asset: Mapping) -> list[str]:
    names = []
    for key in ("bands", "eo:bands"):
        for b in asset.get(key) or []:
            if isinstance(b, Mapping) and b.get("name"):
                names.append(str(b["name"]))
    return names


def _asset_resolution(asset: Mapping) -> float | None:
    t = asset.get("proj:transform")
    if t:
        return abs(float(t[0]))
    if asset.get("gsd"):
        return float(asset["gsd"])
    return None


def _choose_assets(item_id: str, raw_assets: Mapping, wanted: Sequence[str]) -> dict[str, tuple[str, dict]]:
    candidates: dict[str, list[tuple[str, dict]]] = {b: [] for b in wanted}
    for key, asset in raw_assets.items():
        if not isinstance(asset, Mapping) or "href" not in asset:
            continue
        roles = asset.get("roles") or ["data"]
        if "data" not in roles and "thumbnail" in roles:
            continue
        stem = _RES_SUFFIX.sub("", key).lower()
        names = _asset_band_names(asset)
        for band in wanted:
            aliases = BAND_ALIASES[band]
            if stem in aliases or stem == band.lower():
                candidates[band].append((key, dict(asset)))
            elif len(names) == 1 and names[0].upper() == band and stem not in ("visual", "tci"):
                candidates[band].append((key, dict(asset)))
    chosen: dict[str, tuple[str, dict]] = {}
    missing = []
    for band in wanted:
        cands = candidates[band]
        if not cands:
            missing.append(band)
            continue
        native = NATIVE_RESOLUTION[band]

        def rank(kv: tuple[str, dict]) -> tuple[int, float, str]:
            res = _asset_resolution(kv[1])
            exact = 0 if res is not None and abs(res - native) < 1e-6 else 1
            return (exact, res if res is not None else 1e9, kv[0])

        chosen[band] = min(cands, key=rank)
    if missing:
        raise MissingBandError(
            f"item {item_id!r} has no asset for band(s) {', '.join(missing)}; "
            f"its assets are: {', '.join(sorted(raw_assets))}. An L2A item with all of "
            f"{', '.join(wanted)} is needed (pass bands= to use fewer reflectance bands)."
        )
    return chosen


def _absolute_href(href: Any, base: str | None, item_id: str, key: str) -> str:
    if not href:
        raise ItemError(f"item {item_id!r}, asset {key!r} has no href")
    href = str(href)
    if href.startswith("/vsizip/") and not href.startswith(("/vsizip//", "/vsizip/{", "/vsizip//vsi")) \
            and base is not None and urllib.parse.urlparse(base).scheme not in ("http", "https"):
        # a relative path to a zip (GDAL reads it against the working directory): the items' folder
        return "/vsizip/" + os.path.normpath(os.path.join(os.path.dirname(base), href[len("/vsizip/"):]))
    if urllib.parse.urlparse(href).scheme in ("http", "https", "s3", "gs", "az", "file") or href.startswith("/vsi"):
        return href
    if os.path.isabs(href) or base is None:
        return href
    if urllib.parse.urlparse(base).scheme in ("http", "https"):
        return urllib.parse.urljoin(base, href)
    if storage.is_url(base):  # s3://bucket/items.json: relative hrefs are keys beside it
        return storage.join(storage.parent(base), posixpath.normpath(href))
    return os.path.normpath(os.path.join(os.path.dirname(base), href))


def _check_local(href: str, item_id: str, key: str) -> None:
    if href.startswith("/vsizip//"):
        m = re.match(r"/vsizip/(/.+?\.zip)(/|$)", href, re.IGNORECASE)
        if m and not os.path.isfile(m.group(1)):
            raise ReadError(f"item {item_id!r}, asset {key!r}: zip file {m.group(1)!r} does not exist")
        return
    if urllib.parse.urlparse(href).scheme in ("", "file") and not href.startswith("/vsi"):
        path = href[7:] if href.startswith("file://") else href
        if not os.path.exists(path):
            raise ReadError(f"item {item_id!r}, asset {key!r}: file {path!r} does not exist")


def _dn_offset(asset: Mapping, band: str) -> int | None:
    """DN offset to add, from ``raster:offset``/``raster:scale`` (STAC 1.1) or ``raster:bands``."""
    offset = asset.get("raster:offset")
    scale = asset.get("raster:scale")
    rb = asset.get("raster:bands")
    if offset is None and rb and isinstance(rb[0], Mapping):
        offset = rb[0].get("offset")
        scale = rb[0].get("scale", scale)
    for b in asset.get("bands") or []:
        if offset is None and isinstance(b, Mapping):
            offset = b.get("raster:offset", offset)
            scale = b.get("raster:scale", scale)
    if offset is None:
        return None
    scale = float(scale) if scale else 1e-4
    return int(round(float(offset) / scale))


def _baseline(item_id: str, props: Mapping) -> tuple[int, int] | None:
    value = props.get("s2:processing_baseline") or props.get("processing:version")
    if value:
        m = re.match(r"\s*(\d+)\.(\d+)", str(value))
        if m:
            return int(m.group(1)), int(m.group(2))
    for text in (props.get("s2:product_uri"), props.get("sentinel:product_id"), item_id):
        if text:
            m = _BASELINE_IN_ID.search(str(text))
            if m:
                return int(m.group(1)), int(m.group(2))
    return None


def _tile(item_id: str, props: Mapping) -> str:
    if props.get("s2:mgrs_tile"):
        return str(props["s2:mgrs_tile"]).upper()
    if props.get("grid:code"):
        return str(props["grid:code"]).upper().replace("MGRS-", "")
    if props.get("mgrs:utm_zone") and props.get("mgrs:latitude_band") and props.get("mgrs:grid_square"):
        return f"{int(props['mgrs:utm_zone']):02d}{props['mgrs:latitude_band']}{props['mgrs:grid_square']}".upper()
    if props.get("sentinel:utm_zone") and props.get("sentinel:latitude_band"):
        return (
            f"{int(props['sentinel:utm_zone']):02d}{props['sentinel:latitude_band']}{props.get('sentinel:grid_square', '')}"
        ).upper()
    for text in (props.get("s2:product_uri"), props.get("sentinel:product_id"), item_id):
        if text:
            m = _TILE_IN_ID.search(str(text))
            if m:
                return m.group(1)
    m = re.search(r"_(\d{2}[A-Z]{3})_", item_id)
    return m.group(1) if m else "unknown"


def _float_or_none(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- selection


def item_epsgs(items: Sequence[Mapping]) -> set[int]:
    """The set of CRSs (EPSG codes) of normalized items."""
    return {int(it["properties"]["proj:epsg"]) for it in items}


def to_wgs84_bbox(bbox: Sequence[float], crs: Any = 4326) -> tuple[float, float, float, float]:
    """Transform a (minx, miny, maxx, maxy) box to WGS84 lon/lat bounds."""
    src = pyproj.CRS.from_user_input(crs)
    if src.to_epsg() == 4326:
        return tuple(float(v) for v in bbox)  # type: ignore[return-value]
    t = pyproj.Transformer.from_crs(src, 4326, always_xy=True)
    return tuple(t.transform_bounds(*bbox, densify_pts=21))  # type: ignore[return-value]


def select_items(
    items: Sequence[dict],
    *,
    bbox: Sequence[float] | None = None,
    bbox_crs: Any = 4326,
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
    max_cloud: float | None = None,
    antimeridian: bool = False,
) -> list[dict]:
    """Keep the normalized items that intersect ``bbox`` and fall in ``[start, end]``.

    ``max_cloud`` (percent) drops items whose ``eo:cloud_cover`` is above it (items without
    the property are kept). With ``antimeridian``, ``bbox`` (lon/lat) crosses the 180th
    meridian (minx east of it, maxx west of it). Raises :class:`EmptySelectionError` saying what
    was asked and what the items cover when nothing is left.
    """
    out = list(items)
    if start is not None or end is not None:
        s, e = check_dates(start, end)
        s, e = s or dt.date.min, e or dt.date.max
        out = [it for it in out if s <= _as_date(it["properties"]["datetime"][:10]) <= e]
        if not out:
            dates = sorted(it["properties"]["datetime"][:10] for it in items)
            raise EmptySelectionError(
                f"no item between {start} and {end}; the items cover {dates[0]} .. {dates[-1]}"
            )
    if max_cloud is not None:
        kept = [it for it in out if (it["properties"].get("eo:cloud_cover") is None
                                     or it["properties"]["eo:cloud_cover"] <= max_cloud)]
        if not kept:
            raise EmptySelectionError(
                f"all {len(out)} items have eo:cloud_cover above {max_cloud}%; raise --max-cloud"
            )
        out = kept
    if bbox is not None:
        if antimeridian:  # two boxes, one on each side of the 180th meridian
            minx, miny, maxx, maxy = (float(v) for v in bbox)
            ll = shapely.geometry.MultiPolygon([shapely.geometry.box(minx, miny, 180.0, maxy),
                                                shapely.geometry.box(-180.0, miny, maxx, maxy)])
        else:
            ll = shapely.geometry.box(*to_wgs84_bbox(bbox, bbox_crs))
        kept = []
        for it in out:
            geom = it.get("geometry")
            fp = shapely.geometry.shape(geom) if geom else (shapely.geometry.box(*it["bbox"]) if it.get("bbox") else None)
            if fp is None or fp.intersects(ll):
                kept.append(it)
        if not kept:
            union = shapely.union_all(
                [shapely.geometry.shape(it["geometry"]) for it in out if it.get("geometry")]
            )
            raise EmptySelectionError(
                f"no item intersects the bbox {tuple(round(v, 5) for v in ll.bounds)} (lon/lat); "
                f"the items cover {tuple(round(v, 5) for v in union.bounds) if not union.is_empty else 'nothing known'}"
            )
        out = kept
    return out


def _as_date(v: str | dt.date | dt.datetime) -> dt.date:
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    return dt.date.fromisoformat(str(v)[:10])


def require_single_crs(items: Sequence[Mapping], epsg: int | None, where: str | None = None) -> int:
    """The CRS to build the cube in: ``epsg`` if given, else the items' one CRS."""
    if epsg is not None:
        return int(epsg)
    epsgs = item_epsgs(items)
    if len(epsgs) > 1:
        raise CRSError(
            f"{where + ': ' if where else ''}the items are in {len(epsgs)} different CRSs "
            f"({', '.join(f'EPSG:{e}' for e in sorted(epsgs))}); choose the CRS of the output grid with "
            f"--epsg (e.g. --epsg {min(epsgs)}; epsg= in the Python API), or restrict --bbox to one UTM zone"
        )
    return epsgs.pop()
