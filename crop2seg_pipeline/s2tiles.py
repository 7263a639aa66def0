"""Sentinel-2 tiles: an MGRS tile id -> its UTM CRS and the tile's pixel grid, by arithmetic.

A Sentinel-2 L1C/L2A tile is the MGRS 100 km square of the same name, extended to 109 800 m
(10 980 px at 10 m) to the east and south, with its upper-left corner snapped to the 60 m lattice
of the UTM zone (so the 10, 20 and 60 m grids share one origin): west edge rounded *down*, north
edge rounded *up* to a multiple of 60 m. For 33UWQ the square's corner is (500000, 5500000) in
EPSG:32633 and the tile's is (499980, 5500020); for 06VVN (399960, 6800040); for 28QCH
(300000, 2300040).

MGRS letters (the WGS84 "AA" lettering): column letters repeat every three zones (A-H, J-R,
S-Z: 100 km easting steps from 100 km), row letters cycle every 2 000 km of northing over 20
letters (A-V without I and O), starting at A in odd zones and at F in even zones; the latitude
band (C..X, 8 degrees each, X 12) picks which 2 000 km cycle.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from .errors import Crop2SegError
from .grid import Grid

__all__ = ["S2Tile", "parse_tile", "CROP2SEG_TILES", "TILE_EXTENT"]

#: Side of a Sentinel-2 tile (m): 10 980 px at 10 m.
TILE_EXTENT = 109800.0
#: The 12 tiles of Crop2Seg's S2TSCzCrop dataset (its config/config.ini).
CROP2SEG_TILES = ("33UVS", "33UWS", "33UUR", "33UVR", "33UWR", "33UXR", "33UYR",
                  "33UUQ", "33UVQ", "33UWQ", "33UXQ", "33UYQ")

_BANDS = "CDEFGHJKLMNPQRSTUVWX"
_COLUMNS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_ROWS = "ABCDEFGHJKLMNPQRSTUV"
_TILE_RE = re.compile(r"^T?(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z])([A-HJ-NP-V])$")


class TileError(Crop2SegError, ValueError):
    """A string that is not a valid MGRS / Sentinel-2 tile id."""


@dataclass(frozen=True)
class S2Tile:
    """A Sentinel-2 tile.

    Attributes
    ----------
    name : str
        Canonical id, e.g. ``"33UWQ"``.
    zone : int
        UTM zone (1..60).
    band : str
        MGRS latitude band letter.
    epsg : int
        EPSG code of the tile's UTM CRS (326zz north, 327zz south).
    x0, y0 : float
        Upper-left corner of the tile (m, in ``epsg``).
    """

    name: str
    zone: int
    band: str
    epsg: int
    x0: float
    y0: float

    @property
    def north(self) -> bool:
        return self.band >= "N"

    def grid(self, resolution: float = 10.0) -> Grid:
        """The tile's whole pixel grid at ``resolution`` (10, 20 or 60 m)."""
        n = int(round(TILE_EXTENT / resolution))
        return Grid(self.epsg, self.x0, self.y0, float(resolution), n, n)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the tile in its CRS."""
        return (self.x0, self.y0 - TILE_EXTENT, self.x0 + TILE_EXTENT, self.y0)

    def bounds_wgs84(self) -> tuple[float, float, float, float]:
        """Lon/lat bounds of the tile (densified edges)."""
        import pyproj

        t = pyproj.Transformer.from_crs(self.epsg, 4326, always_xy=True)
        return tuple(t.transform_bounds(*self.bounds, densify_pts=21))  # type: ignore[return-value]


def _band_south_latitude(band: str) -> float:
    return -80.0 + 8.0 * _BANDS.index(band)


@lru_cache(maxsize=256)
def parse_tile(name: str) -> S2Tile:
    """Parse an MGRS tile id (``33UWQ``, ``T33UWQ``, ``6VVN``) into a :class:`S2Tile`.

    Raises
    ------
    TileError
        The id is malformed, or names a 100 km square that does not exist in that zone.
    """
    import pyproj

    text = str(name).strip().upper()
    m = _TILE_RE.match(text)
    if not m:
        raise TileError(
            f"{name!r} is not a Sentinel-2 tile id: expected zone (1-60), latitude band (C-X, no I/O) and "
            "two 100 km square letters, e.g. 33UWQ"
        )
    zone, band, col, row = int(m.group(1)), m.group(2), m.group(3), m.group(4)
    if not 1 <= zone <= 60:
        raise TileError(f"{name!r}: UTM zone {zone} is not in 1..60")
    columns = _COLUMNS[(zone - 1) % 3]
    if col not in columns:
        raise TileError(f"{name!r}: column letter {col} does not exist in zone {zone} (it uses {columns[0]}-{columns[-1]})")
    easting = 100000.0 * (columns.index(col) + 1)
    row_offset = 100000.0 * ((_ROWS.index(row) - (0 if zone % 2 else 5)) % 20)
    north = band >= "N"
    epsg = (32600 if north else 32700) + zone
    # the 2 000 km cycle: the first square whose north edge lies above the band's south edge
    cm = -183.0 + 6.0 * zone
    lat_s = _band_south_latitude(band)
    t = pyproj.Transformer.from_crs(4326, epsg, always_xy=True)
    south_n = min(t.transform(cm + d, lat_s)[1] for d in (-3.0, 0.0, 3.0))
    k = math.floor((south_n - 100000.0 - row_offset) / 2_000_000.0) + 1
    northing = row_offset + 2_000_000.0 * k  # the square's south edge
    lat_n = min(lat_s + (12.0 if band == "X" else 8.0), 84.0)
    north_n = max(t.transform(cm + d, lat_n)[1] for d in (-3.0, 0.0, 3.0))
    if northing >= north_n:
        raise TileError(f"{name!r}: the 100 km square {col}{row} does not lie in latitude band {band} of zone {zone}")
    x0 = math.floor(easting / 60.0) * 60.0
    y0 = math.ceil((northing + 100000.0) / 60.0) * 60.0
    return S2Tile(name=f"{zone:02d}{band}{col}{row}", zone=zone, band=band, epsg=epsg, x0=x0, y0=y0)
