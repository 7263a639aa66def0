"""Sentinel-2 tile grids from MGRS ids, checked against real STAC items' transforms."""

from __future__ import annotations

import json
from pathlib import Path

import pyproj
import pytest

from crop2seg_pipeline.s2tiles import CROP2SEG_TILES, TILE_EXTENT, TileError, parse_tile

FIXTURES = Path(__file__).resolve().parent / "data" / "stac"


def _real_corner(name: str) -> tuple[int, float, float]:
    """(epsg, x0, y0) of the B02 asset of a real provider item."""
    item = json.loads((FIXTURES / name).read_text())
    t = item["assets"]["B02"]["proj:transform"]
    return int(item["properties"]["proj:epsg"]), t[2], t[5]


@pytest.mark.parametrize("tile, fixture", [
    ("28QCH", "earth-search-v0_S2A_28QCH_20200714_0_L2A.json"),
    ("06VVN", "planetary-computer_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"),
])
def test_tile_corner_equals_real_items(tile, fixture):
    t = parse_tile(tile)
    assert (t.epsg, t.x0, t.y0) == _real_corner(fixture)


def test_33uwq_is_the_known_corner_and_grids_share_the_60m_lattice():
    t = parse_tile("T33UWQ")
    assert (t.name, t.epsg, t.x0, t.y0) == ("33UWQ", 32633, 499980.0, 5500020.0)
    for res in (10, 20, 60):
        g = t.grid(res)
        assert (g.x0, g.y0, g.height * res) == (499980.0, 5500020.0, TILE_EXTENT)
    assert parse_tile("6VVN") == parse_tile("06VVN")


def test_the_crop2seg_tiles_cover_czechia():
    tiles = [parse_tile(n) for n in CROP2SEG_TILES]
    assert len({t.name for t in tiles}) == 12 and {t.epsg for t in tiles} == {32633}
    # neighbours are 100 km apart (give or take the 60 m snapping), rows R/S/Q stacked north-south
    by = {t.name: t for t in tiles}
    assert abs(by["33UWR"].y0 - by["33UWQ"].y0 - 100000) <= 40
    assert abs(by["33UXQ"].x0 - by["33UWQ"].x0 - 100000) <= 40
    czechia = (12.09, 48.55, 18.86, 51.06)
    for t in tiles:
        lon0, lat0, lon1, lat1 = t.bounds_wgs84()
        assert lon0 < czechia[2] and lon1 > czechia[0] and lat0 < czechia[3] and lat1 > czechia[1], t.name


@pytest.mark.parametrize("name", ["33UWQ", "28QCH", "06VVN", "55HBU", "19GBN", "60WVT", "01CDP"])
def test_square_centre_lies_in_its_latitude_band(name):
    """The 2 000 km row cycle is resolved by the latitude band: the square's centre is in it."""
    t = parse_tile(name)
    x, y = t.x0 + 50000, t.y0 - 50000
    lon, lat = pyproj.Transformer.from_crs(t.epsg, 4326, always_xy=True).transform(x, y)
    south = -80 + 8 * "CDEFGHJKLMNPQRSTUVWX".index(t.band)
    assert south - 1 <= lat <= south + (12 if t.band == "X" else 8) + 1
    assert (t.epsg < 32700) == (t.band >= "N")
    assert t.x0 % 60 == 0 and t.y0 % 60 == 0


@pytest.mark.parametrize("bad, match", [
    ("33UWI", "not a Sentinel-2 tile id"), ("61UWQ", "zone 61"), ("33UAQ", "column letter A"),
    ("hello", "not a Sentinel-2 tile id"), ("", "not a Sentinel-2 tile id"), ("01CDH", "does not lie in latitude band C"),
])
def test_bad_tile_ids_are_named(bad, match):
    with pytest.raises(TileError, match=match):
        parse_tile(bad)
