"""STAC API search: monthly (or any) windows of scenes per tile, as a workflow asks for them.

Only the standard ``POST /search`` endpoint is used (bbox, datetime, collections, limit and the
``query`` extension for ``eo:cloud_cover``), with paging through ``next`` links, so it works with
Earth Search, Planetary Computer and the Copernicus Data Space STAC API alike. Tiles are filtered
on the client from whatever tile field the provider writes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import EmptySelectionError, ReadError
from .items import _tile  # one parser of tile ids for every provider

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """A date window with its own tile cloud-cover limit (percent)."""

    start: dt.date
    end: dt.date
    max_cloud: float = 100.0

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "Window":
        try:
            return cls(dt.date.fromisoformat(str(d["start"])), dt.date.fromisoformat(str(d["end"])),
                       float(d.get("max_cloud", 100.0)))
        except (KeyError, ValueError) as e:
            raise ValueError(f"a window needs start and end ISO dates and an optional max_cloud: {d!r} ({e})") from None


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (user-given STAC API)
            return json.loads(r.read().decode())
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
        raise ReadError(f"STAC search at {url} failed: {e}. Check the URL and the network.") from e


def search(
    api: str,
    collection: str,
    *,
    bbox: Sequence[float],
    start: dt.date,
    end: dt.date,
    max_cloud: float | None = None,
    limit: int = 100,
    max_pages: int = 100,
    timeout: float = 60.0,
) -> list[dict]:
    """All items of ``collection`` intersecting ``bbox`` (lon/lat) between ``start`` and ``end``."""
    url = api.rstrip("/") + "/search"
    body: dict[str, Any] = {
        "collections": [collection],
        "bbox": list(bbox),
        "datetime": f"{start.isoformat()}T00:00:00Z/{end.isoformat()}T23:59:59Z",
        "limit": limit,
    }
    if max_cloud is not None:
        body["query"] = {"eo:cloud_cover": {"lte": max_cloud}}
    out: list[dict] = []
    for _ in range(max_pages):
        page = _post(url, body, timeout)
        out.extend(page.get("features", []))
        nxt = next((link for link in page.get("links", []) if link.get("rel") == "next"), None)
        if nxt is None:
            break
        url = nxt.get("href", url)
        if nxt.get("body"):
            body = {**body, **nxt["body"]} if nxt.get("merge") else nxt["body"]
    return out


def search_windows(
    api: str,
    collection: str,
    *,
    bbox: Sequence[float],
    windows: Sequence[Window],
    tiles: Sequence[str] | None = None,
    max_per_window: int | None = None,
    **kw: Any,
) -> list[dict]:
    """Items per tile and window: at most ``max_per_window`` least-cloudy scenes under each limit.

    This is Crop2Seg's S2TSCzCrop recipe (monthly windows, per-month cloud limits, at most 5
    scenes a month per tile) expressed as STAC queries.
    """
    wanted = {t.upper().lstrip("T") for t in tiles} if tiles else None
    chosen: list[dict] = []
    for w in windows:
        found = search(api, collection, bbox=bbox, start=w.start, end=w.end, max_cloud=w.max_cloud, **kw)
        by_tile: dict[str, list[dict]] = {}
        for it in found:
            tile = _tile(str(it.get("id", "")), it.get("properties", {}))
            if wanted is not None and tile not in wanted:
                continue
            cc = it.get("properties", {}).get("eo:cloud_cover")
            if cc is not None and float(cc) > w.max_cloud:
                continue
            by_tile.setdefault(tile, []).append(it)
        for tile, its in sorted(by_tile.items()):
            its.sort(key=lambda i: (float(i["properties"].get("eo:cloud_cover") or 0.0), i["properties"].get("datetime", "")))
            chosen.extend(its[:max_per_window] if max_per_window else its)
        log.info("STAC %s..%s (<= %.0f%% cloud): %d items kept from %d found", w.start, w.end, w.max_cloud,
                 sum(min(len(v), max_per_window or len(v)) for v in by_tile.values()), len(found))
    if not chosen:
        raise EmptySelectionError(f"the STAC search at {api} ({collection}) found no item for these windows and tiles")
    return sorted(chosen, key=lambda i: (i["properties"].get("datetime", ""), i.get("id", "")))
