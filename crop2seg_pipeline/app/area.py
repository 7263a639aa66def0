"""The area of an items file: its tiles, dates and the grid of cells a user picks from.

Crop2Seg cut each Sentinel-2 tile (10980 x 10980 px at 10 m) into 10 x 10 cells of 1098 px and
predicted one cell at a time. Here cells are laid from each tile's upper-left corner in the
tile's own pixel grid, with a configurable size; on a small area (the demo scene) the default
size gives a few cells instead of a single one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EmptySelectionError
from ..grid import Grid, grid_of_items
from ..items import normalize_items, read_items, require_single_crs, select_items

__all__ = ["Tile", "Cell", "Area", "open_area", "default_cell_size", "cell_grid", "CROP2SEG_CELL_PX",
           "items_digest", "parse_bbox"]

#: Crop2Seg's cell: a tenth of a Sentinel-2 tile's side (10980 px at 10 m).
CROP2SEG_CELL_PX = 1098
#: Bands the app needs from every item (true-colour background, NDVI); the model's bands are
#: checked when a prediction is asked.
AREA_BANDS = ("B02", "B03", "B04")


@dataclass(frozen=True)
class Tile:
    """A Sentinel-2 tile of the items: its name and its 10 m bounds in the map CRS."""

    name: str
    bounds: tuple[float, float, float, float]  # minx, miny, maxx, maxy


@dataclass(frozen=True)
class Cell:
    """One cell of a tile: ``row``/``col`` count from the tile's upper-left corner."""

    tile: str
    row: int
    col: int
    bounds: tuple[float, float, float, float]

    @property
    def name(self) -> str:
        return f"{self.tile} r{self.row} c{self.col}"


@dataclass(frozen=True)
class Area:
    """What the app shows of an items file (all coordinates in ``epsg``, the map CRS).

    Attributes
    ----------
    source : the items path or URL as given
    digest : sha256 of the raw items (cache key part: other items, other key)
    epsg : the CRS of the items (one CRS; :func:`open_area` refuses mixed ones)
    grid : the 10 m grid of the union of the items' footprints
    tiles : the tiles, sorted by name
    dates : the acquisition days (ISO), sorted
    cloud_cover : per day, the items' mean ``eo:cloud_cover`` (None when unknown)
    """

    source: str
    digest: str
    epsg: int
    grid: Grid
    tiles: tuple[Tile, ...]
    dates: tuple[str, ...]
    cloud_cover: tuple[float | None, ...]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return self.grid.bounds

    def dates_between(self, start: str | None, end: str | None) -> list[str]:
        s = start or "0000-01-01"
        e = end or "9999-12-31"
        return [d for d in self.dates if s <= d <= e]


def items_digest(raw_items: Sequence[dict]) -> str:
    """A stable digest of raw item dicts (their JSON with sorted keys)."""
    text = json.dumps(list(raw_items), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def open_area(source: str) -> Area:
    """Read an items file and describe its area.

    Raises
    ------
    Crop2SegError
        Unreadable or empty items, items lacking the true-colour bands, items in several CRSs.
    """
    if not str(source).strip():
        raise EmptySelectionError("no items file given: enter the path or URL of a STAC ItemCollection JSON")
    raw = read_items(str(source))
    if not raw:
        raise EmptySelectionError(f"{source} holds no STAC items (the collection is empty)")
    norm = normalize_items(raw, bands=AREA_BANDS)
    epsg = require_single_crs(norm, None)
    grid = grid_of_items(norm, epsg)
    by_tile: dict[str, list[tuple[float, float, float, float]]] = {}
    for it in norm:
        a = it["assets"]["B04"]
        t, (h, w) = a["proj:transform"], a["proj:shape"]
        b = (t[2], t[5] + t[4] * h, t[2] + t[0] * w, t[5])
        by_tile.setdefault(it["properties"]["crop2seg:tile"], []).append(b)
    tiles = tuple(
        Tile(name, (min(b[0] for b in bs), min(b[1] for b in bs), max(b[2] for b in bs), max(b[3] for b in bs)))
        for name, bs in sorted(by_tile.items())
    )
    days: dict[str, list[float]] = {}
    for it in norm:
        cc = it["properties"].get("eo:cloud_cover")
        days.setdefault(it["properties"]["datetime"][:10], []).extend([] if cc is None else [float(cc)])
    dates = tuple(sorted(days))
    cloud = tuple((sum(days[d]) / len(days[d])) if days[d] else None for d in dates)
    return Area(str(source), items_digest(raw), epsg, grid, tiles, dates, cloud)


def default_cell_size(area: Area, patch_size: int = 128) -> int:
    """Crop2Seg's 1098 px cells on areas of at least 2 x 2 of them; else about a quarter of the
    area's longer side (a multiple of 64 px, at least ``patch_size``), so there are several cells."""
    side = max(area.grid.height, area.grid.width)
    if min(area.grid.height, area.grid.width) >= 2 * CROP2SEG_CELL_PX:
        return CROP2SEG_CELL_PX
    return max(int(patch_size), 64 * math.ceil(side / 4 / 64))


def cell_grid(area: Area, cell_px: int) -> list[Cell]:
    """The cells of every tile of ``area``, ``cell_px`` pixels of 10 m on a side (edge cells clipped)."""
    if cell_px < 16:
        raise ValueError(f"cell size must be >= 16 px, got {cell_px}")
    step = cell_px * area.grid.resolution
    out: list[Cell] = []
    for tile in area.tiles:
        x0, y0, x1, y1 = tile.bounds
        nrow = max(1, math.ceil((y1 - y0) / step - 1e-9))
        ncol = max(1, math.ceil((x1 - x0) / step - 1e-9))
        for r in range(nrow):
            for c in range(ncol):
                b = (x0 + c * step, max(y1 - (r + 1) * step, y0), min(x0 + (c + 1) * step, x1), y1 - r * step)
                out.append(Cell(tile.name, r, c, b))
    return out


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``'minx,miny,maxx,maxy'`` -> floats; ValueError saying what is wrong."""
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p]
    if len(parts) != 4:
        raise ValueError(f"a bbox is 4 numbers 'minx,miny,maxx,maxy', got {text!r}")
    try:
        v = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"a bbox is 4 numbers 'minx,miny,maxx,maxy', got {text!r}") from None
    if not (v[0] < v[2] and v[1] < v[3]):
        raise ValueError(f"bbox {text!r}: need minx < maxx and miny < maxy")
    return v  # type: ignore[return-value]


def check_area(area: Area, bbox: Sequence[float], start: str | None, end: str | None) -> Grid:
    """The 10 m grid a prediction of ``bbox`` (in the map CRS) would cover; raises when the box
    lies outside the items or no date falls in ``[start, end]``."""
    norm = normalize_items(read_items(area.source), bands=AREA_BANDS)
    sel = select_items(norm, bbox=bbox, bbox_crs=area.epsg, start=start, end=end)
    return grid_of_items(sel, area.epsg, bbox=bbox, bbox_crs=area.epsg)


def iso_date(v: Any) -> str | None:
    """A date-like value (date, datetime, ISO text, epoch ms from a widget) as ``YYYY-MM-DD``."""
    if v is None or v == "":
        return None
    if isinstance(v, (int, float)):
        return dt.datetime.fromtimestamp(v / 1000, dt.timezone.utc).date().isoformat()
    if isinstance(v, dt.datetime):
        return v.date().isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    return dt.date.fromisoformat(str(v)[:10]).isoformat()
