"""A deterministic, realistic synthetic Sentinel-2 L2A scene with LPIS-like parcels.

:func:`make_demo_scene` writes, into one folder, what the pipeline reads from the real world:

* ``S2/<YYYYMMDD>/<BAND>.tif``: one single-band Cloud-Optimized GeoTIFF per band and date at
  the band's native resolution (B02 B03 B04 B08 at 10 m; B05 B06 B07 B8A B11 B12 and SCL at
  20 m, the 20 m grid sharing the 10 m grid's origin), uint16 DN (SCL uint8), nodata 0;
  (or, with ``format="safe"``/``"safe-zip"``, one L2A ``.SAFE`` product per date under ``S2/``,
  JPEG2000 bands in the real SAFE layout with ``MTD_MSIL2A.xml``/``MTD_TL.xml``, zipped or not);
* ``items.json``: a STAC 1.1 ItemCollection, one item per date, relative asset hrefs (with
  ``file:size`` and a sha2-256 ``file:checksum`` per COG asset);
* ``parcels.gpkg`` (layer ``parcels``): the declared crops, like a Czech LPIS (DPB) export;
* ``crop_mapping.csv``: a copy of the shipped crop-code mapping table;
* ``scene.json``: the generation parameters, written last (the completion marker).

The landscape is a tessellation of fields (13 crop classes, a few fallow ``UHOR`` parcels and
one parcel with a self-intersecting ring) between forest, villages, roads, a pond and a stream
on the real Sentinel-2 grid of a tile (33UWQ unless ``tile=`` names another; see
:mod:`crop2seg_pipeline.s2tiles`), over the season of ``year`` (default 2021/22). Every pixel mixes soil, green vegetation, flowers and
senescent vegetation following its class's temporal profile (with per-field timing, vigour and
soil variations), then gets a mild sensor PSF, noise, moving clouds with their shadows, cirrus,
swath-edge nodata strips and the processing-baseline 04.00 DN offset. The Scene
Classification Layer (SCL) is derived from the same fields, at 20 m.

Same parameters, same bytes: every random draw comes from ``numpy.random.default_rng`` seeded
by ``(seed, purpose, index)``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import Crop2SegError
from .locks import LOCK_DIR, writer_lock
from .grid import Grid
from .nomenclature import BANDS, CLASS_NAMES, NATIVE_RESOLUTION, SCL
from .s2tiles import parse_tile

__all__ = ["DemoScene", "make_demo_scene", "read_scene_marker", "scene_is_complete"]

log = logging.getLogger(__name__)

#: Version of the generator: part of the parameters, so a changed generator never reuses a scene.
GENERATOR_VERSION = 2  # 2: tiles, years, SAFE output, file:size/file:checksum on assets

# --- where and when ----------------------------------------------------------------------------
#: The default tile; any MGRS tile id works (``tile=``), see :mod:`crop2seg_pipeline.s2tiles`.
TILE = "33UWQ"
EPSG = 32633
#: Upper-left corner of the Sentinel-2 tile 33UWQ (109 800 m square).
TILE_X0, TILE_Y0, TILE_EXTENT = 499980.0, 5500020.0, 109800.0
#: Offset of the scene's upper-left corner from its tile's (m): on the 60 m lattice of the tile.
SCENE_DX, SCENE_DY = 60 * 200, 60 * 300
SCENE_X0 = TILE_X0 + SCENE_DX
SCENE_Y0 = TILE_Y0 - SCENE_DY
RES = 10.0
MAX_SIZE = int((TILE_EXTENT - SCENE_DY) // RES)  # the scene must stay inside the tile

#: The default season (``year=2022``): 15 September of the year before .. 15 October.
YEAR = 2022
SEASON_START = dt.date(2021, 9, 15)
SEASON_END = dt.date(2022, 10, 15)
#: From this date Sentinel-2 L2A products are processing baseline 04.00: DN = 10000 * R + 1000.
BASELINE_04_START = dt.date(2022, 1, 25)
BOA_ADD_OFFSET = 1000
#: Processing baselines by first date of use (L2A); earlier dates are 02.14. From 04.00 on, DNs
#: carry the BOA_ADD_OFFSET.
BASELINES = ((dt.date(2021, 3, 30), "03.00"), (dt.date(2021, 6, 30), "03.01"), (BASELINE_04_START, "04.00"),
             (dt.date(2022, 12, 6), "05.09"), (dt.date(2023, 12, 13), "05.10"), (dt.date(2024, 7, 23), "05.11"))
#: Sentinel-2 relative orbits over 33UWQ used here: (orbit, acquisition time UTC). Other UTM
#: zones shift the time by 24 minutes a zone (the same local solar time).
ORBITS = {122: "100029", 79: "101031"}
FORMATS = ("cog", "safe", "safe-zip")

_OUR_NAMES = {"S2", "items.json", "parcels.gpkg", "crop_mapping.csv", "scene.json",
              "parcels.gpkg-journal", "parcels.gpkg-wal", "parcels.gpkg-shm", "scene.json.tmp"}


@dataclass(frozen=True)
class DemoScene:
    """Paths and facts of a generated demo scene.

    Attributes
    ----------
    root : Path
        The scene folder.
    items : Path
        ``root/items.json``, a STAC ItemCollection (relative asset hrefs).
    parcels : Path
        ``root/parcels.gpkg``, layer ``parcels``.
    mapping : Path
        ``root/crop_mapping.csv``, the crop-code mapping table the scene was made with (a copy of
        the shipped ``crop2seg_pipeline/data/crop_mapping_cz.csv``).
    grid : Grid
        The 10 m grid of the scene (in its tile's UTM CRS, EPSG:32633 for the default 33UWQ).
    dates : tuple of datetime.date
        Acquisition dates, sorted.
    tile : str
        The Sentinel-2 tile the scene stands for.
    """

    root: Path
    items: Path
    parcels: Path
    mapping: Path
    grid: Grid
    dates: tuple[dt.date, ...]
    tile: str = TILE


# --- spectra (reflectance, bands in nomenclature.BANDS order) -----------------------------------
#                      B02    B03    B04    B05    B06    B07    B08    B8A    B11    B12
_GREEN = np.array([0.028, 0.060, 0.028, 0.090, 0.270, 0.350, 0.400, 0.410, 0.200, 0.095])
_SENESCENT = np.array([0.070, 0.095, 0.125, 0.160, 0.200, 0.230, 0.260, 0.275, 0.330, 0.250])
_FLOWERS = np.array([
    [0.045, 0.140, 0.150, 0.190, 0.280, 0.320, 0.340, 0.350, 0.220, 0.120],  # yellow (rapeseed)
    [0.200, 0.220, 0.220, 0.240, 0.300, 0.330, 0.350, 0.360, 0.250, 0.150],  # white (blossom)
])
_BASES = np.array([
    [0.095, 0.125, 0.150, 0.175, 0.195, 0.210, 0.220, 0.230, 0.300, 0.250],  # 0 soil
    [0.020, 0.040, 0.022, 0.065, 0.160, 0.200, 0.220, 0.230, 0.110, 0.050],  # 1 conifer canopy
    [0.040, 0.055, 0.065, 0.090, 0.130, 0.150, 0.170, 0.180, 0.200, 0.130],  # 2 forest floor/bark
    [0.050, 0.060, 0.040, 0.035, 0.025, 0.020, 0.015, 0.014, 0.008, 0.005],  # 3 water
    [0.110, 0.120, 0.130, 0.145, 0.160, 0.170, 0.180, 0.185, 0.220, 0.200],  # 4 urban
    [0.085, 0.095, 0.105, 0.115, 0.125, 0.130, 0.135, 0.140, 0.160, 0.150],  # 5 asphalt
])
_SOIL, _CONIFER, _FLOOR, _WATER, _URBAN, _ASPHALT = range(6)
_CLOUD = np.array([0.55, 0.54, 0.53, 0.53, 0.53, 0.53, 0.52, 0.52, 0.38, 0.25])
_CIRRUS = np.array([1.00, 0.92, 0.86, 0.83, 0.80, 0.80, 0.76, 0.76, 0.55, 0.35])
_HAZE = np.array([1.00, 0.65, 0.40, 0.30, 0.22, 0.18, 0.15, 0.14, 0.05, 0.02])

_BAND_INFO = {  # name: (common name, center wavelength um, FWHM um, title)
    "B02": ("blue", 0.49, 0.098, "Blue"),
    "B03": ("green", 0.56, 0.045, "Green"),
    "B04": ("red", 0.665, 0.038, "Red"),
    "B05": ("rededge071", 0.704, 0.019, "Red edge 1"),
    "B06": ("rededge075", 0.74, 0.018, "Red edge 2"),
    "B07": ("rededge078", 0.783, 0.028, "Red edge 3"),
    "B08": ("nir", 0.842, 0.145, "NIR 1"),
    "B8A": ("nir08", 0.865, 0.033, "NIR 2"),
    "B11": ("swir16", 1.61, 0.143, "SWIR 1.6"),
    "B12": ("swir22", 2.19, 0.242, "SWIR 2.2"),
}


# --- temporal profiles --------------------------------------------------------------------------
def _day(iso: str) -> int:
    """Day of the season (0 = 15 September) of a date written in the reference season 2021/22."""
    return (dt.date.fromisoformat(iso) - SEASON_START).days


def _season(year: int) -> tuple[dt.date, dt.date]:
    """First and last day of the season that ends in ``year``."""
    return dt.date(year - 1, 9, 15), dt.date(year, 10, 15)


def _baseline_of(date: dt.date) -> str:
    out = "02.14"
    for start, name in BASELINES:
        if date >= start:
            out = name
    return out


def _profile(*points: tuple) -> tuple[np.ndarray, ...]:
    """Key points ``(date, green, senescent[, flowers])`` -> arrays (t, g, s, y)."""
    t = np.array([_day(p[0]) for p in points], dtype=float)
    g = np.array([p[1] for p in points], dtype=float)
    s = np.array([p[2] for p in points], dtype=float)
    y = np.array([p[3] if len(p) > 3 else 0.0 for p in points], dtype=float)
    assert np.all(np.diff(t) > 0), points[0]
    return t, g, s, y


# Fractions of green vegetation (g), senescent/dry vegetation (s) and flowers (y) of a pixel;
# the rest is the unit's base surface (soil for fields). Harvests, cuts and catch crops are
# per-field events applied on top (see _unit_state).
_PROFILES: dict[str, tuple[np.ndarray, ...]] = {
    "winter_cereal": _profile(
        ("2021-09-15", 0.00, 0.08), ("2021-10-01", 0.00, 0.02), ("2021-10-22", 0.06, 0.0),
        ("2021-11-12", 0.20, 0.0), ("2021-12-15", 0.25, 0.05), ("2022-02-15", 0.22, 0.08),
        ("2022-03-15", 0.30, 0.05), ("2022-04-10", 0.60, 0.0), ("2022-05-05", 0.88, 0.0),
        ("2022-05-25", 0.90, 0.0), ("2022-06-10", 0.70, 0.20), ("2022-06-25", 0.35, 0.55),
        ("2022-07-08", 0.10, 0.80), ("2022-07-18", 0.05, 0.80), ("2022-07-20", 0.02, 0.35),
        ("2022-08-20", 0.06, 0.25), ("2022-09-05", 0.00, 0.05), ("2022-09-28", 0.00, 0.0),
        ("2022-10-20", 0.12, 0.0)),
    "rapeseed": _profile(
        ("2021-09-15", 0.30, 0.0), ("2021-10-15", 0.60, 0.0), ("2021-11-15", 0.70, 0.0),
        ("2022-01-15", 0.50, 0.10), ("2022-02-20", 0.45, 0.12), ("2022-03-20", 0.70, 0.02),
        ("2022-04-10", 0.90, 0.0, 0.0), ("2022-04-22", 0.55, 0.0, 0.40),
        ("2022-05-05", 0.35, 0.0, 0.60), ("2022-05-18", 0.55, 0.0, 0.25),
        ("2022-05-30", 0.80, 0.0, 0.0), ("2022-06-15", 0.60, 0.30), ("2022-06-30", 0.20, 0.70),
        ("2022-07-10", 0.10, 0.80), ("2022-07-12", 0.02, 0.40), ("2022-08-05", 0.25, 0.15),
        ("2022-08-25", 0.05, 0.05), ("2022-09-20", 0.25, 0.0), ("2022-10-15", 0.55, 0.0)),
    "maize": _profile(
        ("2021-09-15", 0.00, 0.15), ("2021-10-15", 0.04, 0.10), ("2022-04-15", 0.00, 0.04),
        ("2022-05-20", 0.03, 0.0), ("2022-06-05", 0.12, 0.0), ("2022-06-25", 0.35, 0.0),
        ("2022-07-15", 0.70, 0.0), ("2022-08-05", 0.90, 0.0), ("2022-08-25", 0.88, 0.05),
        ("2022-09-10", 0.65, 0.25), ("2022-10-05", 0.40, 0.50), ("2022-10-20", 0.30, 0.60)),
    "sugar_beet": _profile(
        ("2021-09-15", 0.00, 0.10), ("2021-10-15", 0.03, 0.06), ("2022-04-20", 0.00, 0.02),
        ("2022-05-15", 0.03, 0.0), ("2022-06-01", 0.15, 0.0), ("2022-06-20", 0.45, 0.0),
        ("2022-07-10", 0.85, 0.0), ("2022-08-15", 0.92, 0.0), ("2022-09-15", 0.86, 0.02),
        ("2022-10-20", 0.80, 0.05)),
    "summer_cereal": _profile(
        ("2021-09-15", 0.00, 0.12), ("2021-10-20", 0.02, 0.05), ("2022-03-25", 0.00, 0.02),
        ("2022-04-15", 0.08, 0.0), ("2022-05-01", 0.30, 0.0), ("2022-05-20", 0.70, 0.0),
        ("2022-06-10", 0.88, 0.0), ("2022-06-25", 0.65, 0.25), ("2022-07-10", 0.25, 0.65),
        ("2022-07-25", 0.08, 0.80), ("2022-07-30", 0.02, 0.35), ("2022-08-25", 0.08, 0.20),
        ("2022-09-15", 0.00, 0.05), ("2022-10-05", 0.00, 0.0), ("2022-10-25", 0.10, 0.0)),
    "grassland": _profile(
        ("2021-09-15", 0.65, 0.15), ("2021-11-15", 0.45, 0.25), ("2022-01-15", 0.30, 0.40),
        ("2022-03-01", 0.30, 0.35), ("2022-04-01", 0.50, 0.15), ("2022-05-01", 0.85, 0.05),
        ("2022-06-15", 0.85, 0.05), ("2022-07-31", 0.70, 0.20), ("2022-09-01", 0.70, 0.15),
        ("2022-10-15", 0.60, 0.15)),
    "forage": _profile(
        ("2021-09-15", 0.55, 0.10), ("2021-11-15", 0.50, 0.10), ("2022-01-15", 0.30, 0.30),
        ("2022-03-15", 0.35, 0.20), ("2022-04-20", 0.80, 0.0), ("2022-05-10", 0.92, 0.0),
        ("2022-08-31", 0.88, 0.02), ("2022-10-15", 0.70, 0.05)),
    "potato": _profile(
        ("2021-09-15", 0.00, 0.12), ("2021-10-20", 0.02, 0.05), ("2022-04-25", 0.00, 0.0),
        ("2022-05-25", 0.10, 0.0), ("2022-06-15", 0.50, 0.0), ("2022-07-05", 0.85, 0.0),
        ("2022-07-30", 0.80, 0.0), ("2022-08-15", 0.50, 0.30), ("2022-08-25", 0.05, 0.45),
        ("2022-09-15", 0.00, 0.10)),
    "vegetables": _profile(
        ("2021-09-15", 0.25, 0.05), ("2021-10-15", 0.10, 0.05), ("2022-04-20", 0.00, 0.0),
        ("2022-05-10", 0.05, 0.0), ("2022-06-01", 0.35, 0.0), ("2022-07-01", 0.45, 0.0),
        ("2022-08-01", 0.45, 0.03), ("2022-09-01", 0.30, 0.05), ("2022-10-15", 0.20, 0.05)),
    "strawberry": _profile(
        ("2021-09-15", 0.40, 0.20), ("2021-12-01", 0.30, 0.30), ("2022-03-15", 0.30, 0.30),
        ("2022-05-01", 0.50, 0.30, 0.02), ("2022-05-15", 0.50, 0.30, 0.12),
        ("2022-06-05", 0.55, 0.30, 0.0), ("2022-08-01", 0.45, 0.25), ("2022-10-15", 0.40, 0.20)),
    "flax": _profile(
        ("2021-09-15", 0.00, 0.12), ("2022-04-01", 0.00, 0.0), ("2022-04-25", 0.05, 0.0),
        ("2022-05-20", 0.55, 0.0), ("2022-06-08", 0.80, 0.0, 0.0),
        ("2022-06-18", 0.70, 0.0, 0.15), ("2022-07-01", 0.60, 0.30, 0.0),
        ("2022-07-15", 0.20, 0.70), ("2022-07-25", 0.05, 0.65), ("2022-08-20", 0.02, 0.40),
        ("2022-09-10", 0.00, 0.05)),
    "hemp": _profile(
        ("2021-09-15", 0.00, 0.12), ("2022-05-05", 0.00, 0.0), ("2022-05-25", 0.05, 0.0),
        ("2022-06-15", 0.40, 0.0), ("2022-07-05", 0.85, 0.0), ("2022-08-05", 0.95, 0.0),
        ("2022-08-25", 0.90, 0.02), ("2022-09-10", 0.60, 0.30), ("2022-10-15", 0.40, 0.50)),
    "orchard": _profile(
        ("2021-09-15", 0.65, 0.10), ("2021-10-20", 0.50, 0.20), ("2021-11-15", 0.30, 0.25),
        ("2022-01-15", 0.20, 0.30), ("2022-04-01", 0.30, 0.20), ("2022-04-20", 0.35, 0.10, 0.25),
        ("2022-05-05", 0.55, 0.05, 0.05), ("2022-05-25", 0.70, 0.0), ("2022-08-31", 0.68, 0.02),
        ("2022-10-15", 0.55, 0.15)),
    "hops": _profile(
        ("2021-09-15", 0.05, 0.15), ("2021-10-15", 0.05, 0.05), ("2022-01-15", 0.02, 0.02),
        ("2022-04-20", 0.05, 0.0), ("2022-05-15", 0.15, 0.0), ("2022-06-05", 0.40, 0.0),
        ("2022-06-25", 0.70, 0.0), ("2022-07-15", 0.88, 0.0), ("2022-08-10", 0.90, 0.0),
        ("2022-08-30", 0.85, 0.03), ("2022-10-15", 0.80, 0.08)),
    "vineyard": _profile(
        ("2021-09-15", 0.45, 0.10), ("2021-10-15", 0.35, 0.25), ("2021-11-10", 0.15, 0.20),
        ("2022-01-15", 0.12, 0.15), ("2022-04-15", 0.15, 0.05), ("2022-05-15", 0.30, 0.0),
        ("2022-06-15", 0.45, 0.0), ("2022-07-15", 0.52, 0.0), ("2022-09-01", 0.52, 0.02),
        ("2022-10-01", 0.42, 0.15), ("2022-10-15", 0.35, 0.25)),
    "sunflower": _profile(
        ("2021-09-15", 0.00, 0.12), ("2022-04-15", 0.00, 0.0), ("2022-05-10", 0.03, 0.0),
        ("2022-06-01", 0.25, 0.0), ("2022-06-25", 0.65, 0.0), ("2022-07-12", 0.85, 0.0, 0.0),
        ("2022-07-25", 0.60, 0.0, 0.35), ("2022-08-10", 0.35, 0.45, 0.10),
        ("2022-08-30", 0.10, 0.80, 0.0), ("2022-10-15", 0.05, 0.80)),
    "peas": _profile(
        ("2021-09-15", 0.00, 0.12), ("2022-03-20", 0.00, 0.0), ("2022-04-15", 0.10, 0.0),
        ("2022-05-10", 0.60, 0.0), ("2022-05-31", 0.85, 0.0, 0.0), ("2022-06-10", 0.78, 0.0, 0.10),
        ("2022-06-20", 0.60, 0.30, 0.0), ("2022-07-01", 0.20, 0.70), ("2022-07-06", 0.10, 0.75),
        ("2022-07-09", 0.02, 0.35), ("2022-08-01", 0.15, 0.15), ("2022-09-15", 0.05, 0.05)),
    "poppy": _profile(
        ("2021-09-15", 0.00, 0.12), ("2022-03-20", 0.00, 0.0), ("2022-04-10", 0.03, 0.0),
        ("2022-05-10", 0.35, 0.0), ("2022-06-01", 0.70, 0.0, 0.0), ("2022-06-15", 0.45, 0.0, 0.35),
        ("2022-06-30", 0.60, 0.20, 0.0), ("2022-07-20", 0.20, 0.70), ("2022-08-03", 0.10, 0.75),
        ("2022-08-06", 0.02, 0.35), ("2022-09-15", 0.05, 0.05)),
    "fallow": _profile(
        ("2021-09-15", 0.35, 0.35), ("2022-01-15", 0.15, 0.40), ("2022-05-15", 0.55, 0.15),
        ("2022-07-15", 0.40, 0.45), ("2022-10-15", 0.30, 0.40)),
    # background (not in the parcel file)
    "balk": _profile(
        ("2021-09-15", 0.45, 0.25), ("2021-12-15", 0.25, 0.35), ("2022-03-15", 0.25, 0.30),
        ("2022-05-15", 0.60, 0.10), ("2022-07-31", 0.45, 0.30), ("2022-10-15", 0.40, 0.30)),
    "forest_deciduous": _profile(
        ("2021-09-15", 0.85, 0.0), ("2021-10-10", 0.78, 0.08), ("2021-10-30", 0.45, 0.35),
        ("2021-11-20", 0.12, 0.45), ("2022-04-10", 0.12, 0.40), ("2022-04-30", 0.45, 0.15),
        ("2022-05-20", 0.88, 0.02), ("2022-09-15", 0.85, 0.0), ("2022-10-10", 0.78, 0.08)),
    "forest_evergreen": _profile(
        ("2021-09-15", 0.10, 0.0), ("2021-12-01", 0.05, 0.0), ("2022-04-01", 0.05, 0.0),
        ("2022-06-01", 0.10, 0.0), ("2022-10-15", 0.10, 0.0)),
    "water": _profile(
        ("2021-09-15", 0.02, 0.0), ("2021-11-01", 0.0, 0.0), ("2022-05-15", 0.0, 0.0),
        ("2022-07-15", 0.03, 0.0), ("2022-10-15", 0.01, 0.0)),
    "urban": _profile(
        ("2021-09-15", 0.25, 0.03), ("2021-12-01", 0.12, 0.05), ("2022-04-01", 0.12, 0.05),
        ("2022-06-01", 0.28, 0.02), ("2022-10-15", 0.22, 0.05)),
    "road": _profile(("2021-09-15", 0.0, 0.0), ("2022-10-15", 0.0, 0.0)),
}
_PROFILE_NAMES = tuple(_PROFILES)
_PROFILE_BASE = {"forest_deciduous": _FLOOR, "forest_evergreen": _CONIFER, "water": _WATER,
                 "urban": _URBAN, "road": _ASPHALT}
_PROFILE_FLOWER = {"rapeseed": 0, "sunflower": 0}  # others: white
#: Profiles whose pixels show row structure (sub-pixel rows alias into stripes).
_ROW_PROFILES = {"vineyard": 0.30, "hops": 0.25, "orchard": 0.20, "vegetables": 0.15, "potato": 0.08}

#: Crop code -> (profile, timing shift in days).
_CODE_PROFILE: dict[str, tuple[str, float]] = {
    "TTP": ("grassland", 0), "ZELEN": ("vegetables", 0), "BRAMB": ("potato", 0),
    "JAH": ("strawberry", 0), "JEC_J": ("summer_cereal", -3), "PSE_J": ("summer_cereal", 3),
    "OVES": ("summer_cereal", 6), "PSE_O": ("winter_cereal", 2), "JEC_O": ("winter_cereal", -9),
    "ZITO_O": ("winter_cereal", -4), "TRIT_O": ("winter_cereal", 4), "REP_O": ("rapeseed", 0),
    "KUK_S": ("maize", 0), "KUK_Z": ("maize", 4), "JETEL": ("forage", 0), "VOJT": ("forage", -3),
    "TRAV_O": ("forage", 3), "REP_C": ("sugar_beet", 0), "LEN": ("flax", 0), "KONOP": ("hemp", 0),
    "SAD": ("orchard", 0), "CHMEL": ("hops", 0), "VINICE": ("vineyard", 0),
    "SLUN": ("sunflower", 0), "HRACH": ("peas", 0), "MAK": ("poppy", 0),
    "UHOR": ("fallow", 0),
}
#: Fallback profile per class id (for mapping tables with other codes).
_CLASS_PROFILE = {1: "grassland", 2: "vegetables", 3: "summer_cereal", 4: "winter_cereal",
                  5: "rapeseed", 6: "maize", 7: "forage", 8: "sugar_beet", 9: "hemp",
                  10: "orchard", 11: "hops", 12: "vineyard", 13: "sunflower"}
#: Share of fields per class (uneven, roughly Czech) and of codes within a class.
_CLASS_WEIGHT = {1: 0.13, 2: 0.025, 3: 0.08, 4: 0.30, 5: 0.12, 6: 0.10, 7: 0.07, 8: 0.03,
                 9: 0.012, 10: 0.02, 11: 0.01, 12: 0.01, 13: 0.05}
_CODE_WEIGHT = {"ZELEN": 0.3, "BRAMB": 0.6, "JAH": 0.1, "JEC_J": 0.6, "PSE_J": 0.15, "OVES": 0.25,
                "PSE_O": 0.6, "JEC_O": 0.25, "ZITO_O": 0.05, "TRIT_O": 0.1, "KUK_S": 0.6,
                "KUK_Z": 0.4, "JETEL": 0.35, "VOJT": 0.35, "TRAV_O": 0.3, "LEN": 0.4,
                "KONOP": 0.6, "SLUN": 0.35, "HRACH": 0.4, "MAK": 0.25}
FALLOW_CODE, FALLOW_NAME = "UHOR", "úhor"
#: Spring-sown classes that may carry an autumn catch crop (mustard...) before them.
_CATCH_CLASSES = {2, 3, 6, 8, 9, 13}
_CATCH_T = np.array([_day(d) for d in ("2021-09-01", "2021-09-25", "2021-10-20", "2021-11-20",
                                       "2021-12-10", "2022-02-15", "2022-03-20")], dtype=float)
_CATCH_G = np.array([0.0, 0.30, 1.0, 0.80, 0.20, 0.0, 0.0])
_CATCH_S = np.array([0.0, 0.0, 0.0, 0.10, 0.50, 0.30, 0.0])
#: Per-field event schedules: code -> (mean day, sd) of the harvest that ends the crop.
_HARVEST = {"KUK_S": ("2022-09-15", 8), "KUK_Z": ("2022-10-08", 8), "REP_C": ("2022-10-05", 15),
            "KONOP": ("2022-09-20", 8), "CHMEL": ("2022-09-01", 6), "SLUN": ("2022-09-20", 8),
            "ZELEN": ("2022-08-25", 20), "BRAMB": ("2022-09-10", 10)}
_N_CUTS = 4
#: Clouds: shadow offset (rows, cols) at 10 m, from the cloud to its shadow (sun in the SSE).
_SHADOW_OFFSET = (30, 12)


# --- small numeric helpers ----------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float,
                  beta: float = 3.0, stretch: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """Zero-mean, unit-std random field with a power-law spectrum (periodic), float64.

    ``scale`` (px) is the correlation length; ``stretch`` > 1 makes streaks along ``angle``.
    """
    white = rng.standard_normal(shape)
    spec = np.fft.rfft2(white)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    if stretch != 1.0:
        c, s = math.cos(angle), math.sin(angle)
        fu, fv = fx * c + fy * s, -fx * s + fy * c
        f2 = (fu / stretch) ** 2 + (fv * stretch) ** 2
    else:
        f2 = fx ** 2 + fy ** 2
    spec *= (f2 + (1.0 / scale) ** 2) ** (-beta / 4.0)
    out = np.fft.irfft2(spec, s=shape)
    out -= out.mean()
    std = out.std()
    return out / std if std > 0 else out


def _upsample(a: np.ndarray, k: int, out_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling by an integer factor, pixel-area aligned (float32)."""
    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) / k - 0.5, 0, n_in - 1)
        i0 = np.floor(pos).astype(np.intp)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    a = a.astype(np.float32, copy=False)
    r0, r1, wr = axis(out_shape[0], a.shape[0])
    c0, c1, wc = axis(out_shape[1], a.shape[1])
    rows = a[r0] * (1 - wr)[:, None] + a[r1] * wr[:, None]
    return rows[:, c0] * (1 - wc)[None, :] + rows[:, c1] * wc[None, :]


def _block_mean(a: np.ndarray) -> np.ndarray:
    """2 x 2 block average (10 m -> 20 m), float32."""
    out = a[0::2, 0::2] + a[1::2, 0::2]
    out += a[0::2, 1::2]
    out += a[1::2, 1::2]
    out *= 0.25
    return out


def _psf(a: np.ndarray, w: float = 0.1) -> np.ndarray:
    """A mild separable 3-tap point-spread function (edges replicated), in place-ish."""
    out = a * (1 - 2 * w)
    out[1:] += w * a[:-1]
    out[:-1] += w * a[1:]
    out[0] += w * a[0]
    out[-1] += w * a[-1]
    res = out * (1 - 2 * w)
    res[:, 1:] += w * out[:, :-1]
    res[:, :-1] += w * out[:, 1:]
    res[:, 0] += w * out[:, 0]
    res[:, -1] += w * out[:, -1]
    return res


class _Waves:
    """A smooth random field defined everywhere (sum of plane waves), for vector decisions."""

    def __init__(self, rng: np.random.Generator, wavelengths: tuple[float, float], n: int = 10):
        lam = np.exp(rng.uniform(np.log(wavelengths[0]), np.log(wavelengths[1]), n))
        theta = rng.uniform(0, 2 * np.pi, n)
        self.kx = 2 * np.pi / lam * np.cos(theta)
        self.ky = 2 * np.pi / lam * np.sin(theta)
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.norm = math.sqrt(n / 2)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)[..., None]
        y = np.asarray(y, dtype=float)[..., None]
        return np.cos(x * self.kx + y * self.ky + self.phase).sum(-1) / self.norm


# --- the landscape ------------------------------------------------------------------------------
@dataclass
class _Landscape:
    """Everything static about a scene: geometry, per-unit attributes, per-pixel unit map.

    A *unit* is a piece of land that behaves as one: a field, a forest stand, a village block,
    a pond, the stream, the roads, or the unparcelled balks (unit 0).
    """

    grid: Grid
    unit: np.ndarray  # (size, size) int32 unit index of each 10 m pixel
    profile: np.ndarray  # (n_units,) index into _PROFILE_NAMES
    base: np.ndarray  # (n_units,) index into _BASES
    flower: np.ndarray  # (n_units,) index into _FLOWERS
    shift: np.ndarray  # (n_units,) days
    amp: np.ndarray  # (n_units,) vigour multiplier
    bright: np.ndarray  # (n_units,) base brightness multiplier
    soil_like: np.ndarray  # (n_units,) bool: the base is soil (moisture darkens it in winter)
    catch: np.ndarray  # (n_units,) catch-crop amplitude (0 = none)
    cuts: np.ndarray  # (n_units, _N_CUTS) day of each cut, NaN = none
    cut_depth: np.ndarray
    regrow: np.ndarray
    harvest: np.ndarray  # (n_units,) day of harvest, NaN = none
    het: np.ndarray  # (size, size) float32 static multiplier of green cover
    base_mult: np.ndarray  # (size, size) float32 static multiplier of the base surface
    water: np.ndarray  # (size, size) bool
    parcels: "object"  # GeoDataFrame in the tile's CRS, one row per parcel, with column ``unit``
    kinds: dict = field(default_factory=dict)  # background kind name -> list of unit ids


def _read_mapping(path: Path) -> list[tuple[str, str, int]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["crop_code"].strip(), r["crop_name"].strip(), int(r["class_id"]))
                for r in csv.DictReader(f)]


def _shipped_mapping() -> Path:
    return Path(str(resources.files("crop2seg_pipeline").joinpath("data/crop_mapping_cz.csv")))


def _scene_grid(size: int, tile: str = TILE) -> Grid:
    """The 10 m grid of a scene of ``size`` px on ``tile`` (inside the tile, on its 60 m lattice)."""
    t = parse_tile(tile)
    return Grid(t.epsg, t.x0 + SCENE_DX, t.y0 - SCENE_DY, RES, size, size)


def _build_landscape(size: int, seed: int, tile: str = TILE) -> _Landscape:
    """Build the static landscape of a scene (deterministic in ``size``, ``seed`` and ``tile``)."""
    import geopandas as gpd
    import shapely
    from rasterio.features import rasterize
    from shapely import affinity
    from shapely.geometry import LineString, Polygon, box

    rng = np.random.default_rng([seed, 1])
    grid = _scene_grid(size, tile)
    minx, miny, maxx, maxy = grid.bounds
    extent = size * RES
    area_km2 = (extent / 1000.0) ** 2
    margin = 250.0
    ext = box(minx - margin, miny - margin, maxx + margin, maxy + margin)
    scene_box = box(minx, miny, maxx, maxy)
    big = ext.buffer(3000, join_style="mitre")

    # 1. cells: Voronoi of a jittered, rotated rectangular lattice, thinned by a smooth density
    theta = rng.uniform(-35, 35) * np.pi / 180
    sx, sy = 520.0, 300.0
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    half = extent / 2 + margin + 2 * sx
    nu, nv = int(np.ceil(2 * half * 1.5 / sx)), int(np.ceil(2 * half * 1.5 / sy))
    u = (np.arange(nu) - nu / 2)[None, :] * sx + rng.uniform(0, sx)
    v = (np.arange(nv) - nv / 2)[:, None] * sy + rng.uniform(0, sy)
    u, v = np.broadcast_arrays(u, v)
    u = u + rng.uniform(-0.3, 0.3, u.shape) * sx
    v = v + rng.uniform(-0.3, 0.3, v.shape) * sy
    px = cx + u * math.cos(theta) - v * math.sin(theta)
    py = cy + u * math.sin(theta) + v * math.cos(theta)
    inside = (np.abs(px - cx) < half) & (np.abs(py - cy) < half)
    px, py = px[inside], py[inside]
    density = _Waves(rng, (1500, 6000))
    keep = rng.random(px.size) < 0.35 + 0.65 / (1 + np.exp(-2.0 * density(px, py)))
    px, py = px[keep], py[keep]
    cells = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(np.c_[px, py]), extend_to=big))
    cells = shapely.intersection(cells, ext)
    cells = cells[~shapely.is_empty(cells) & (shapely.area(cells) > 1.0)]
    cents = shapely.centroid(cells)
    ccx, ccy = np.round(shapely.get_x(cents), 1), np.round(shapely.get_y(cents), 1)
    order = np.lexsort((ccx, -ccy))
    cells, ccx, ccy = cells[order], ccx[order], ccy[order]
    in_scene = (ccx > minx) & (ccx < maxx) & (ccy > miny) & (ccy < maxy)

    # 2. forest stands (clustered cells), villages, a pond, a stream, roads
    forest_f = _Waves(rng, (1200, 5000))(ccx, ccy)
    ever_f = _Waves(rng, (800, 3000))(ccx, ccy)
    is_forest = forest_f > np.quantile(forest_f, 0.86)
    if not np.any(is_forest & in_scene) and np.any(in_scene):
        is_forest[np.flatnonzero(in_scene)[np.argmax(forest_f[in_scene])]] = True
    evergreen = ever_f > -0.1
    if not np.any(is_forest & evergreen & in_scene) and np.any(is_forest & in_scene):
        evergreen[np.flatnonzero(is_forest & in_scene)[np.argmax(forest_f[is_forest & in_scene])]] = True

    n_villages = max(1, int(round(area_km2 / 12)))
    vx = rng.uniform(minx + 0.1 * extent, maxx - 0.1 * extent, n_villages)
    vy = rng.uniform(miny + 0.1 * extent, maxy - 0.1 * extent, n_villages)
    vr = rng.uniform(250, 450, n_villages).clip(max=0.12 * extent + 60)
    is_urban = np.zeros(cells.size, bool)
    for x, y, r in zip(vx, vy, vr):
        near = np.hypot(ccx - x, ccy - y) < r
        if not near.any():
            near = np.asarray(shapely.contains_xy(cells, x, y))
        is_urban |= near
    is_forest &= ~is_urban

    n_ponds = max(1, int(round(area_km2 / 40)))
    ponds = []
    for _ in range(n_ponds):
        r = min(rng.uniform(120, 300), 0.1 * extent)
        x = rng.uniform(minx + 0.15 * extent, maxx - 0.15 * extent)
        y = rng.uniform(miny + 0.15 * extent, maxy - 0.15 * extent)
        a = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        k = np.arange(1, 5)
        rr = r * (1 + (rng.uniform(0.05, 0.15, 4)[:, None] * np.cos(k[:, None] * a + rng.uniform(0, 6.3, 4)[:, None])).sum(0))
        ponds.append(Polygon(np.c_[x + rr * np.cos(a) * 1.4, y + rr * np.sin(a) / 1.4]))
    ponds_u = shapely.union_all(ponds)

    # the stream: across the scene, meandering
    t = np.linspace(0, 1, 60)
    y_a, y_b = rng.uniform(miny + 0.2 * extent, maxy - 0.2 * extent, 2)
    meander = sum(rng.uniform(40, 150) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) for f in (1.5, 3.5, 7))
    sxs = minx - margin - 50 + t * (extent + 2 * margin + 100)
    sys_ = y_a + (y_b - y_a) * t + meander
    stream = LineString(np.c_[sxs, sys_])
    if rng.random() < 0.5:  # north-south instead
        stream = affinity.rotate(stream, 90, origin=(cx, cy))
    stream_w = rng.uniform(8, 11)
    stream_poly = stream.buffer(stream_w)
    riparian = stream.buffer(stream_w + 18)

    # roads: village to village, and out of the scene at both ends
    def edge_point() -> tuple[float, float]:
        side = rng.integers(4)
        s = rng.uniform(0.1, 0.9)
        m = margin + 50
        return [(minx - m, miny + s * extent), (maxx + m, miny + s * extent),
                (minx + s * extent, miny - m), (minx + s * extent, maxy + m)][side]

    vorder = np.argsort(vx)
    stops = [edge_point()] + [(vx[i], vy[i]) for i in vorder] + [edge_point()]
    roads = []
    for (x1, y1), (x2, y2) in zip(stops[:-1], stops[1:]):
        n = 4
        xs = np.linspace(x1, x2, n + 1)
        ys = np.linspace(y1, y2, n + 1)
        jit = rng.normal(0, 60, (2, n - 1))
        xs[1:-1] += jit[0]
        ys[1:-1] += jit[1]
        roads.append(LineString(np.c_[xs, ys]))
    roads_u = shapely.union_all(roads)
    road_poly = roads_u.buffer(4.5, cap_style="flat")

    # 3. fields: remaining cells shrunk by balks, minus water, roads; a few split small
    obstacles = shapely.union_all([ponds_u.buffer(15), riparian, roads_u.buffer(10)])
    field_cells = cells[~is_forest & ~is_urban]
    half_gap = rng.uniform(5.0, 8.0, field_cells.size)
    shrunk = shapely.buffer(field_cells, -half_gap, join_style="mitre")
    shrunk = shapely.difference(shrunk, obstacles)
    parts = shapely.get_parts(shrunk)
    parts = parts[shapely.area(parts) > 5000]
    final = []
    for geom in parts:
        if geom.area > 80000 and rng.random() < 0.08:
            final.extend(_split(geom, rng))
        else:
            final.append(geom)
    fields = np.array([g for g in final if g.area > 5000], dtype=object)
    fields = shapely.make_valid(shapely.set_precision(fields, 0.01))  # tidy coordinates
    fields = shapely.get_parts(fields)
    fields = fields[(shapely.get_type_id(fields) == 3) & (shapely.area(fields) > 5000)]
    in_area = shapely.area(shapely.intersection(fields, scene_box))
    fields = fields[in_area > 1000]
    in_area = in_area[in_area > 1000]
    inner = np.isclose(in_area, shapely.area(fields))

    # 4. crops: every class once on inner fields (as many as possible), the rest by weight
    mapping = _read_mapping(_shipped_mapping())
    by_class: dict[int, list[tuple[str, str]]] = {}
    for code, name, cid in mapping:
        if 1 <= cid <= 13:
            by_class.setdefault(cid, []).append((code, name))
    classes = sorted(by_class)
    n_f = fields.size
    cls = np.zeros(n_f, int)
    w = np.array([_CLASS_WEIGHT.get(c, 0.02) for c in classes], float)
    cls[:] = rng.choice(classes, size=n_f, p=w / w.sum())
    inner_idx = rng.permutation(np.flatnonzero(inner))
    guaranteed = rng.permutation(classes)
    for c, i in zip(guaranteed, inner_idx):
        cls[i] = c
    taken = set(inner_idx[: len(guaranteed)].tolist())
    free = [i for i in rng.permutation(n_f).tolist() if i not in taken]
    n_fallow = max(1, int(round(0.02 * n_f))) if len(free) >= 2 else 0
    fallow = set(free[:n_fallow])
    free = free[n_fallow:]
    codes, names = [], []
    for i in range(n_f):
        if i in fallow:
            codes.append(FALLOW_CODE)
            names.append(FALLOW_NAME)
            continue
        opts = by_class[cls[i]]
        cw = np.array([_CODE_WEIGHT.get(c, 1.0) for c, _ in opts], float)
        code, name = opts[rng.choice(len(opts), p=cw / cw.sum())]
        codes.append(code)
        names.append(name)

    # 5. exactly one parcel with a self-intersecting ("bow-tie") ring, as in real LPIS exports
    areas = shapely.area(fields)
    geoms = list(fields)
    candidates = [i for i in free if inner[i]] + [i for i in free if not inner[i]] + sorted(taken)
    bowtie = None
    for i in candidates:
        twisted = _twist(geoms[i], grid)
        if twisted is not None:
            geoms[i] = twisted
            bowtie = i
            break
    if bowtie is None:  # only for degenerate tiny scenes
        raise Crop2SegError(f"a {size} px scene with seed {seed} on this tile has no field fit for the demo's "
                            "invalid (self-intersecting) parcel; use a larger size or another seed")

    # 6. units and their attributes
    units: list[dict] = [{"profile": "balk"}]
    kinds: dict[str, list[int]] = {}
    shapes: list[tuple[object, int]] = []

    def add_unit(geom: object, kind: str, **attrs) -> int:
        units.append({"profile": kind, **attrs})
        uid = len(units) - 1
        kinds.setdefault(kind, []).append(uid)
        shapes.append((geom, uid))
        return uid

    for i in np.flatnonzero(is_forest):
        add_unit(cells[i], "forest_evergreen" if evergreen[i] else "forest_deciduous")
    for i in np.flatnonzero(is_urban):
        add_unit(cells[i], "urban")
    add_unit(riparian.intersection(ext), "forest_deciduous")
    add_unit(ponds_u.intersection(ext), "water")
    add_unit(stream_poly.intersection(ext), "water")
    add_unit(road_poly.intersection(ext), "road")
    first_field = len(units)
    for i in range(n_f):
        code = codes[i]
        prof, dshift = _CODE_PROFILE.get(code, (_CLASS_PROFILE.get(int(cls[i]), "grassland"), 0))
        attrs: dict = {"shift": dshift, "code": code, "cls": int(cls[i])}
        units.append({"profile": prof, **attrs})
        shapes.append((geoms[i], len(units) - 1))

    n_u = len(units)
    prof_idx = np.array([_PROFILE_NAMES.index(u_["profile"]) for u_ in units])
    base = np.array([_PROFILE_BASE.get(u_["profile"], _SOIL) for u_ in units])
    flower = np.array([_PROFILE_FLOWER.get(u_["profile"], 1) for u_ in units])
    shift = np.clip(rng.normal(0, 5, n_u), -14, 14) + np.array([u_.get("shift", 0) for u_ in units])
    amp = rng.uniform(0.85, 1.05, n_u)
    soil_like = base == _SOIL
    bright = np.where(soil_like, rng.uniform(0.8, 1.2, n_u), rng.uniform(0.92, 1.08, n_u))
    catch = np.zeros(n_u)
    cuts = np.full((n_u, _N_CUTS), np.nan)
    cut_depth = np.zeros(n_u)
    regrow = np.ones(n_u)
    harvest = np.full(n_u, np.nan)
    draw = rng.random((n_u, 8))  # fixed number of draws per unit keeps units independent
    for k, u_ in enumerate(units):
        code, prof = u_.get("code"), u_["profile"]
        r = draw[k]
        if code is None:
            continue
        if u_["cls"] in _CATCH_CLASSES and code != FALLOW_CODE and r[0] < 0.3:
            catch[k] = 0.3 + 0.3 * r[1]
        if prof == "grassland":
            c1 = _day("2022-05-25") + 16 * (r[2] - 0.5)
            gaps = 45 + 15 * r[3:5]
            n_c = 3 if r[5] < 0.55 else 2
            cs = [c1, c1 + gaps[0], c1 + gaps[0] + gaps[1]][:n_c]
            cuts[k, : len(cs)] = cs
            cut_depth[k], regrow[k] = 0.55 + 0.2 * r[6], 12 + 8 * r[7]
        elif prof == "forage":
            c1 = _day("2022-05-15") + 12 * (r[2] - 0.5)
            gap = 35 + 10 * r[3]
            n_c = 4 if r[5] < 0.5 else 3
            cuts[k, :n_c] = c1 + gap * np.arange(n_c)
            cut_depth[k], regrow[k] = 0.65 + 0.2 * r[6], 8 + 5 * r[7]
        elif prof == "fallow":
            cuts[k, 0] = _day("2022-07-01") + 30 * (r[2] - 0.5)
            cut_depth[k], regrow[k] = 0.5, 25
        if code in _HARVEST:
            mean, sd = _HARVEST[code]
            # inverse-normal-ish from a uniform draw (keeps draw count fixed)
            harvest[k] = _day(mean) + sd * math.sqrt(2) * _erfinv(2 * r[6] - 1)

    # 7. rasterize (later shapes win; fields last so parcel pixels are exactly the parcels')
    unit = rasterize(shapes, out_shape=grid.shape, transform=grid.transform, fill=0,
                     all_touched=False, dtype="int32")

    # 8. static per-pixel texture
    n4 = size // 4 + 2
    het_s = _upsample(_smooth_noise(rng, (n4, n4), scale=8.0, beta=3.0), 4, grid.shape)
    white = rng.standard_normal(grid.shape, dtype=np.float32)
    het = (1.0 + 0.08 * het_s + 0.03 * white).astype(np.float32)
    prof_px = prof_idx[unit]
    row_depth = np.zeros(len(_PROFILE_NAMES), np.float32)
    for name, d in _ROW_PROFILES.items():
        row_depth[_PROFILE_NAMES.index(name)] = d
    rows_mask = row_depth[prof_px] > 0
    if rows_mask.any():
        ang = rng.uniform(0, np.pi, n_u)
        period = rng.uniform(2.2, 3.6, n_u)
        rr, cc = np.nonzero(rows_mask)
        uu = unit[rr, cc]
        phase = 2 * np.pi * (cc * np.cos(ang[uu]) + rr * np.sin(ang[uu])) / period[uu]
        het[rr, cc] *= 1.0 + row_depth[prof_px[rr, cc]] * np.cos(phase).astype(np.float32)
    base_mult = np.ones(grid.shape, np.float32)
    urban_px = base[unit] == _URBAN
    base_mult[urban_px] = np.clip(np.exp(0.25 * white[urban_px] + 0.2 * het_s[urban_px] * 3), 0.6, 1.6)
    water = base[unit] == _WATER

    # 9. the parcel table (UTM); ID_DPB like an LPIS export
    ids = 1_000_000 + rng.choice(9_000_000, size=n_f, replace=False).astype(np.int64)
    valid_area = areas  # declared area: the field's, also for the twisted ring
    parcels = gpd.GeoDataFrame(
        {
            "ID_DPB": ids.astype("int64"),
            "KOD_PLODINY": codes,
            "NAZEV_PLODINY": names,
            "VYMERA": np.round(valid_area / 10000.0, 4),
            "unit": np.arange(first_field, first_field + n_f),
            "class_id": [14 if c == FALLOW_CODE else int(k) for c, k in zip(codes, cls)],
        },
        geometry=geoms,
        crs=f"EPSG:{grid.epsg}",
    )
    return _Landscape(grid=grid, unit=unit, profile=prof_idx, base=base, flower=flower,
                      shift=shift, amp=amp, bright=bright, soil_like=soil_like, catch=catch,
                      cuts=cuts, cut_depth=cut_depth, regrow=regrow, harvest=harvest, het=het,
                      base_mult=base_mult, water=water, parcels=parcels, kinds=kinds)


def _erfinv(x: float) -> float:
    """Inverse error function (Giles' approximation, plenty for date jitter)."""
    x = min(max(x, -0.999999), 0.999999)
    w = -math.log((1.0 - x) * (1.0 + x))
    if w < 5.0:
        w -= 2.5
        p = 2.81022636e-08
        for c in (3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                  -0.00125372503, -0.00417768164, 0.246640727, 1.50140941):
            p = c + p * w
    else:
        w = math.sqrt(w) - 3.0
        p = -0.000200214257
        for c in (0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                  -0.0076224613, 0.00943887047, 1.00167406, 2.83297682):
            p = c + p * w
    return p * x


def _split(geom, rng: np.random.Generator) -> list:
    """Cut a field across its long axis into a small and a large field (12 m balk between)."""
    from shapely import affinity
    from shapely.geometry import box

    rect = geom.minimum_rotated_rectangle
    xy = np.asarray(rect.exterior.coords)[:3]
    e1, e2 = xy[1] - xy[0], xy[2] - xy[1]
    long_axis = e1 if np.hypot(*e1) >= np.hypot(*e2) else e2
    ang = math.degrees(math.atan2(long_axis[1], long_axis[0]))
    c = geom.centroid
    g = affinity.rotate(geom, -ang, origin=c)
    x0, y0, x1, y1 = g.bounds
    cut = x0 + (x1 - x0) * rng.uniform(0.12, 0.3)
    a = g.intersection(box(x0 - 1, y0 - 1, cut - 6, y1 + 1))
    b = g.intersection(box(cut + 6, y0 - 1, x1 + 1, y1 + 1))
    return [affinity.rotate(p, ang, origin=c) for p in (a, b) if not p.is_empty]


def _twist(geom, grid: Grid):
    """A self-intersecting copy of a polygon (two ring vertices swapped), or None if unusable."""
    import shapely
    from rasterio.features import rasterize
    from shapely.geometry import Polygon

    ring = np.asarray(geom.exterior.coords)[:-1]
    if len(ring) < 4 or geom.interiors:
        return None
    ring = ring.copy()
    # swap the vertices around the longest edge so the twist is a visible bow-tie
    edges = np.hypot(*(np.roll(ring, -1, axis=0) - ring).T)
    i = int(np.argmax(edges))
    j = (i + 1) % len(ring)
    ring[[i, j]] = ring[[j, i]]
    twisted = Polygon(ring)
    if shapely.is_valid(twisted):
        return None
    px = rasterize([(twisted, 1)], out_shape=grid.shape, transform=grid.transform, fill=0,
                   all_touched=False, dtype="uint8")
    return twisted if px.sum() >= 20 else None


# --- time ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _DatePlan:
    index: int
    date: dt.date
    orbit: int
    platform: str
    cloud: float  # target fraction of flagged clouds
    cirrus: float  # target fraction of cirrus (0 = none)
    haze: float
    strip: tuple[int, float, float] | None  # (side, width at top, width at bottom) as fractions

    @property
    def baseline(self) -> str:
        return _baseline_of(self.date)

    @property
    def offset(self) -> int:
        return BOA_ADD_OFFSET if self.date >= BASELINE_04_START else 0


def _candidate_days(year: int = YEAR) -> list[int]:
    start, end = _season(year)
    n = (end - start).days
    return [d for d in range(n + 1) if d % 5 in (0, 2)]


def _plan_dates(n_dates: int, seed: int, year: int = YEAR) -> list[_DatePlan]:
    rng = np.random.default_rng([seed, 11])
    season_start = _season(year)[0]
    cand = np.array(_candidate_days(year))
    chunks = np.array_split(np.arange(cand.size), n_dates)
    days = [int(cand[c[rng.integers(c.size)]]) for c in chunks]
    covers = []
    for _ in range(n_dates):
        u = rng.random()
        covers.append(0.0 if u < 0.35 else rng.uniform(0.02, 0.3) if u < 0.65 else rng.uniform(0.3, 0.72))
    cloudy = int(rng.integers(1, n_dates))
    covers[cloudy] = 0.96
    others = [i for i in range(n_dates) if i != cloudy]
    if not any(covers[i] == 0.0 for i in others):
        covers[others[int(rng.integers(len(others)))]] = 0.0
    cirrus = [rng.uniform(0.1, 0.4) if rng.random() < 0.25 else 0.0 for _ in range(n_dates)]
    cirrus[cloudy] = 0.0
    haze = rng.uniform(0.0, 0.012, n_dates)
    n_strip = max(1, int(round(0.12 * n_dates))) if n_dates >= 3 else 0
    pool = [i for i in range(1, n_dates) if i != cloudy]
    pool = [i for i in pool if days[i] % 5 == 2] + [i for i in pool if days[i] % 5 != 2]
    strips: dict[int, tuple[int, float, float]] = {}
    for i in pool[:n_strip]:
        top = rng.uniform(0.05, 0.25)
        strips[i] = (int(rng.integers(2)), top, float(np.clip(top + rng.uniform(-0.1, 0.1), 0.02, 0.35)))
    plans = []
    for i, d in enumerate(days):
        orbit = 122 if d % 5 == 0 else 79
        platform = "sentinel-2a" if (d // 5) % 2 == 0 else "sentinel-2b"
        plans.append(_DatePlan(i, season_start + dt.timedelta(days=d), orbit, platform,
                               float(covers[i]), float(cirrus[i]), float(haze[i]), strips.get(i)))
    return plans


def _unit_state(land: _Landscape, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Green, senescent and flower fractions of every unit at day ``t`` of the season."""
    te = t - land.shift
    g = np.empty(te.size)
    s = np.empty(te.size)
    y = np.empty(te.size)
    for p, name in enumerate(_PROFILE_NAMES):
        idx = land.profile == p
        if idx.any():
            tk, gk, sk, yk = _PROFILES[name]
            g[idx] = np.interp(te[idx], tk, gk)
            s[idx] = np.interp(te[idx], tk, sk)
            y[idx] = np.interp(te[idx], tk, yk)
    g += land.catch * np.interp(te, _CATCH_T, _CATCH_G)
    s += land.catch * np.interp(te, _CATCH_T, _CATCH_S)
    with np.errstate(invalid="ignore"):
        for k in range(land.cuts.shape[1]):
            d = t - land.cuts[:, k]
            m = d >= 0  # NaN -> False
            if m.any():
                f = 1.0 - land.cut_depth[m] * np.exp(-d[m] / land.regrow[m])
                lost = g[m] * (1 - f)
                g[m] *= f
                s[m] += 0.6 * lost * np.exp(-d[m] / 6.0)
        d = t - land.harvest
        m = d >= 0
    if m.any():
        g[m] = 0.02
        s[m] = 0.05 + 0.35 * np.exp(-d[m] / 30.0)
        y[m] = 0.0
    g *= land.amp
    y *= land.amp
    tot = g + s + y
    scale = np.where(tot > 0.98, 0.98 / np.maximum(tot, 1e-9), 1.0)
    return g * scale, s * scale, y * scale


# --- one date -----------------------------------------------------------------------------------
@dataclass
class _Context:
    land: _Landscape
    seed: int
    root: Path
    blocksize: int
    season_start: dt.date = SEASON_START
    write: Callable[[_DatePlan, str, np.ndarray], None] | None = None  # None: COGs under S2/


def _clouds(plan: _DatePlan, seed: int, size: int) -> dict[str, np.ndarray] | None:
    """Cloud opacity, shadow and cirrus fields at 20 m (scene window) for one date."""
    if plan.cloud <= 0 and plan.cirrus <= 0:
        return None
    rng = np.random.default_rng([seed, 12, plan.index])
    h = size // 2
    dy, dx = _SHADOW_OFFSET[0] // 2, _SHADOW_OFFSET[1] // 2
    pad = max(dy, dx) + 8
    n = h + pad
    out = {}
    if plan.cloud > 0:
        f = _smooth_noise(rng, (n, n), scale=max(40.0, n / 3), beta=3.4)
        thr = np.quantile(f[:h, :h], 1 - plan.cloud)
        alpha = np.clip(0.12 + (f - thr) * 1.1, 0, 1)
        thick = np.clip((alpha - 0.1) / 0.5, 0, 1)
        out["alpha"] = alpha[:h, :h].astype(np.float32)
        out["shadow"] = thick[dy:dy + h, dx:dx + h].astype(np.float32)
    else:
        rng.standard_normal((n, n))  # keep the stream of draws aligned
    if plan.cirrus > 0:
        fc = _smooth_noise(rng, (h, h), scale=max(40.0, h / 2), beta=3.4, stretch=2.0,
                           angle=rng.uniform(0, np.pi))
        thr = np.quantile(fc, 1 - plan.cirrus)
        out["cirrus"] = np.clip(0.05 + (fc - thr) * 0.08, 0, 0.15).astype(np.float32)
    return out


def _nodata_mask(plan: _DatePlan, size: int) -> np.ndarray | None:
    """Swath-edge nodata at 20 m (True = nodata), a slanted strip along one side."""
    if plan.strip is None:
        return None
    side, top, bottom = plan.strip
    h = size // 2
    r = (np.arange(h) + 0.5) / h
    c = (np.arange(h) + 0.5) / h
    edge = top + (bottom - top) * r
    m = c[None, :] < edge[:, None]
    return m[:, ::-1].copy() if side else m


def _render_date(ctx: _Context, plan: _DatePlan) -> dict:
    land = ctx.land
    size = land.grid.height
    t = float((plan.date - ctx.season_start).days)
    g_u, s_u, y_u = _unit_state(land, t)
    winter = 0.5 * (1 + math.cos(2 * math.pi * (t - _day("2022-01-20")) / 365.0))
    bright_u = land.bright * np.where(land.soil_like, 1 - 0.15 * winter, 1.0)
    # per unit and band: constant part C and base B
    C = s_u[:, None] * _SENESCENT[None, :] + y_u[:, None] * _FLOWERS[land.flower]
    B = _BASES[land.base] * bright_u[:, None]
    C = np.ascontiguousarray(C.T, dtype=np.float32)
    B = np.ascontiguousarray(B.T, dtype=np.float32)
    unit = land.unit
    sy_px = (s_u + y_u).astype(np.float32)[unit]
    G = g_u.astype(np.float32)[unit]
    G *= land.het
    np.clip(G, 0, None, out=G)
    np.minimum(G, 1.0 - sy_px, out=G)
    Q = 1.0 - sy_px - G
    Q *= land.base_mult
    del sy_px

    clouds = _clouds(plan, ctx.seed, size)
    nodata20 = _nodata_mask(plan, size)
    nodata10 = None if nodata20 is None else np.repeat(np.repeat(nodata20, 2, 0), 2, 1)
    cl10 = None
    if clouds is not None:
        cl10 = {k: _upsample(v, 2, (size, size)) for k, v in clouds.items()}

    rng = np.random.default_rng([ctx.seed, 13, plan.index])
    folder = ctx.root / "S2" / plan.date.strftime("%Y%m%d")
    if ctx.write is None:
        folder.mkdir(parents=True, exist_ok=True)

    def write(band: str, data: np.ndarray) -> None:
        if ctx.write is None:
            _write_cog(folder / f"{band}.tif", data, NATIVE_RESOLUTION[band], land.grid, ctx.blocksize)
        else:
            ctx.write(plan, band, data)
    ground20: dict[str, np.ndarray] = {}
    for b, band in enumerate(BANDS):
        ground = G * _GREEN[b]
        ground += C[b][unit]
        ground += Q * B[b][unit]
        ground = _psf(ground)
        ground += np.float32(_HAZE[b] * plan.haze)
        if NATIVE_RESOLUTION[band] == 20:
            ground = _block_mean(ground)
            cl, nod = clouds, nodata20
        else:
            cl, nod = cl10, nodata10
        if band in ("B04", "B8A"):
            ground20[band] = ground if NATIVE_RESOLUTION[band] == 20 else _block_mean(ground)
        refl = _apply_clouds(ground, cl, b)
        noise = rng.standard_normal(refl.shape, dtype=np.float32)
        noise *= 0.002 + 0.01 * refl
        refl += noise
        dn = _to_dn(refl, plan.offset, nod)
        write(band, dn)

    scl = _scl(land, clouds, nodata20, ground20)
    write(SCL, scl)
    valid = scl != 0
    n_valid = max(int(valid.sum()), 1)
    pct = lambda *v: round(100.0 * float(np.isin(scl, v).sum()) / n_valid, 4)  # noqa: E731
    return {
        "eo:cloud_cover": pct(8, 9, 10),
        "s2:nodata_pixel_percentage": round(100.0 * (1 - valid.mean()), 4),
        "s2:high_proba_clouds_percentage": pct(9),
        "s2:medium_proba_clouds_percentage": pct(8),
        "s2:thin_cirrus_percentage": pct(10),
        "s2:cloud_shadow_percentage": pct(3),
        "s2:vegetation_percentage": pct(4),
        "s2:not_vegetated_percentage": pct(5),
        "s2:water_percentage": pct(6),
    }


def _apply_clouds(ground: np.ndarray, cl: dict | None, b: int) -> np.ndarray:
    if cl is None:
        return ground
    out = ground
    if "shadow" in cl:
        out = out * (1.0 - 0.6 * cl["shadow"])
    if "cirrus" in cl:
        out = out + cl["cirrus"] * np.float32(_CIRRUS[b])
    if "alpha" in cl:
        a = cl["alpha"]
        out = out * (1.0 - a) + a * np.float32(_CLOUD[b])
    return out


def _to_dn(refl: np.ndarray, offset: int, nodata: np.ndarray | None) -> np.ndarray:
    refl *= 10000.0
    refl += offset + 0.5
    np.clip(refl, 1, 65535, out=refl)
    dn = refl.astype(np.uint16)
    if nodata is not None:
        dn[nodata] = 0
    return dn


def _scl(land: _Landscape, clouds: dict | None, nodata20: np.ndarray | None,
         ground20: dict[str, np.ndarray]) -> np.ndarray:
    red, nir = ground20["B04"], ground20["B8A"]
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    water20 = _block_mean(land.water.astype(np.float32)) >= 0.5
    scl = np.where(ndvi > 0.4, 4, 5).astype(np.uint8)
    scl[water20] = 6
    if clouds is not None:
        if "shadow" in clouds:
            scl[clouds["shadow"] > 0.3] = 3
        if "cirrus" in clouds:
            scl[clouds["cirrus"] >= 0.05] = 10
        if "alpha" in clouds:
            a = clouds["alpha"]
            scl[a >= 0.12] = 8
            scl[a >= 0.4] = 9
    if nodata20 is not None:
        scl[nodata20] = 0
    return scl


def _write_cog(path: Path, data: np.ndarray, res: int, grid: Grid, blocksize: int) -> None:
    import rasterio
    from affine import Affine

    transform = Affine(res, 0.0, grid.x0, 0.0, -res, grid.y0)
    is_scl = data.dtype == np.uint8
    profile = {
        "driver": "COG", "width": data.shape[1], "height": data.shape[0], "count": 1,
        "dtype": data.dtype.name, "crs": f"EPSG:{grid.epsg}", "transform": transform, "nodata": 0,
        "compress": "DEFLATE", "predictor": "NO" if is_scl else "2", "blocksize": blocksize,
        "overview_resampling": "NEAREST" if is_scl else "AVERAGE", "bigtiff": "IF_SAFER",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        dst.set_band_description(1, path.stem)


# --- STAC ---------------------------------------------------------------------------------------
_STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "https://stac-extensions.github.io/sentinel-2/v1.0.0/schema.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
]
_COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def _footprint_wgs84(grid: Grid) -> tuple[list[float], dict]:
    from pyproj import Transformer

    tr = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    minx, miny, maxx, maxy = grid.bounds
    n = 8  # densified edges
    xs = np.r_[np.linspace(minx, maxx, n), np.full(n, maxx), np.linspace(maxx, minx, n), np.full(n, minx)]
    ys = np.r_[np.full(n, maxy), np.linspace(maxy, miny, n), np.full(n, miny), np.linspace(miny, maxy, n)]
    lon, lat = tr.transform(xs, ys)
    ring = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat)]
    ring = [p for k, p in enumerate(ring) if k == 0 or p != ring[k - 1]]
    ring.append(ring[0])
    bbox = [round(float(min(lon)), 7), round(float(min(lat)), 7), round(float(max(lon)), 7), round(float(max(lat)), 7)]
    return bbox, {"type": "Polygon", "coordinates": [ring]}


def _acquisition_time(plan: _DatePlan, tile: str) -> str:
    """HHMMSS (UTC) of the overpass: ORBITS' time over zone 33, 24 minutes earlier a zone east."""
    hhmmss = ORBITS[plan.orbit]
    zone = parse_tile(tile).zone
    if zone == 33:
        return hhmmss
    s = (int(hhmmss[:2]) * 3600 + int(hhmmss[2:4]) * 60 + int(hhmmss[4:]) + (33 - zone) * 24 * 60) % 86400
    return f"{s // 3600:02d}{s // 60 % 60:02d}{s % 60:02d}"


def _acquisition(plan: _DatePlan, tile: str) -> dt.datetime:
    hhmmss = _acquisition_time(plan, tile)
    return dt.datetime.combine(plan.date, dt.time(int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:]), 24000))


def _file_fields(path: Path) -> dict:
    """``file:size`` and ``file:checksum`` (sha2-256 multihash, hex) of a written file."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"file:size": path.stat().st_size, "file:checksum": "1220" + h.hexdigest()}


def _stac_item(plan: _DatePlan, grid: Grid, stats: dict, bbox: list, geometry: dict, tile: str = TILE,
               root: Path | None = None) -> dict:
    ymd = plan.date.strftime("%Y%m%d")
    hhmmss = _acquisition_time(plan, tile)
    sat = "S2A" if plan.platform == "sentinel-2a" else "S2B"
    baseline = plan.baseline
    item_id = f"{sat}_MSIL2A_{ymd}T{hhmmss}_N{baseline.replace('.', '')}_R{plan.orbit:03d}_T{tile}_synthetic"
    when = _acquisition(plan, tile)
    assets = {}
    for band in sorted([*BANDS, SCL], key=lambda b: (b == SCL, b)):
        res = NATIVE_RESOLUTION[band]
        shape = [grid.height * 10 // res, grid.width * 10 // res]
        asset = {
            "href": f"S2/{ymd}/{band}.tif",
            "type": _COG_TYPE,
            "roles": ["data"],
            "gsd": res,
            "proj:code": f"EPSG:{grid.epsg}",
            "proj:shape": shape,
            "proj:transform": [float(res), 0.0, grid.x0, 0.0, -float(res), grid.y0],
            "nodata": 0,
        }
        if root is not None:
            asset.update(_file_fields(root / asset["href"]))
        if band == SCL:
            asset.update({"title": "Scene classification map (SCL)", "data_type": "uint8",
                          "bands": [{"name": "SCL", "description": "Sen2Cor scene classification"}]})
        else:
            common, wl, fwhm, title = _BAND_INFO[band]
            asset.update({
                "title": f"{title} ({band}) - {res}m",
                "data_type": "uint16",
                "bands": [{"name": band, "eo:common_name": common, "eo:center_wavelength": wl,
                           "eo:full_width_half_max": fwhm}],
                "raster:scale": 0.0001,
                "raster:offset": -0.1 if plan.offset else 0.0,
            })
        assets[band] = asset
    props = {
        "datetime": when.isoformat() + "Z",
        "platform": plan.platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": stats["eo:cloud_cover"],
        "proj:code": f"EPSG:{grid.epsg}",
        "grid:code": f"MGRS-{tile}",
        "sat:relative_orbit": plan.orbit,
        "sat:orbit_state": "descending",
        "s2:mgrs_tile": tile,
        "s2:processing_baseline": baseline,
        "s2:product_type": "S2MSI2A",
        "s2:product_uri": f"{sat}_MSIL2A_{ymd}T{hhmmss}_N{baseline.replace('.', '')}_R{plan.orbit:03d}_T{tile}_synthetic.SAFE",
        **{k: v for k, v in stats.items() if k != "eo:cloud_cover"},
    }
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": _STAC_EXTENSIONS,
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "bbox": bbox,
        "geometry": geometry,
        "properties": props,
        "links": [],
        "assets": assets,
    }


# --- the public entry point ---------------------------------------------------------------------
def _parameters(size: int, n_dates: int, seed: int, parcels_crs: int, tile: str = TILE, year: int = YEAR,
                fmt: str = "cog") -> dict:
    return {"generator_version": GENERATOR_VERSION, "size": size, "n_dates": n_dates,
            "seed": seed, "parcels_crs": parcels_crs, "tile": tile, "year": year, "format": fmt}


def _validate(size, n_dates, seed, parcels_crs, tile=TILE, year=YEAR, fmt="cog") -> tuple:
    import pyproj

    def as_int(name, v):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {v!r}")
        return int(v)

    size, n_dates, seed, parcels_crs, year = (
        as_int(n, v) for n, v in (("size", size), ("n_dates", n_dates), ("seed", seed),
                                  ("parcels_crs", parcels_crs), ("year", year)))
    tile = parse_tile(tile).name  # TileError (a ValueError) names a bad id
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if size < 64 or size % 2:
        raise ValueError(f"size must be an even number of 10 m pixels >= 64 (the 20 m bands are size/2), got {size}")
    if size > MAX_SIZE:
        raise ValueError(f"size must be at most {MAX_SIZE} px so the scene stays inside tile {tile}, got {size}")
    if not 2016 <= year <= 2100:
        raise ValueError(f"year (the season's harvest year) must be between 2016 and 2100, got {year}")
    n_max = len(_candidate_days(year))
    if not 2 <= n_dates <= n_max:
        start, end = _season(year)
        raise ValueError(f"n_dates must be between 2 and {n_max} (Sentinel-2 acquisitions over "
                         f"{start}..{end}), got {n_dates}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    try:
        pyproj.CRS.from_epsg(parcels_crs)
    except pyproj.exceptions.CRSError as exc:
        raise ValueError(f"parcels_crs must be an EPSG code known to PROJ, got {parcels_crs}: {exc}") from None
    return size, n_dates, seed, parcels_crs, tile, year, fmt


def _scene_from_marker(root: Path, meta: dict) -> DemoScene:
    g = meta["grid"]
    return DemoScene(
        root=root, items=root / "items.json", parcels=root / "parcels.gpkg",
        mapping=root / "crop_mapping.csv",
        grid=Grid(int(g["epsg"]), float(g["x0"]), float(g["y0"]), float(g["resolution"]),
                  int(g["height"]), int(g["width"])),
        dates=tuple(dt.date.fromisoformat(d) for d in meta["dates"]),
        tile=meta.get("tile", TILE),
    )


def scene_is_complete(root: Path, meta: dict) -> bool:
    """Whether every file the marker ``meta`` of the demo scene folder ``root`` names is there."""
    need = [root / "items.json", root / "parcels.gpkg", root / "crop_mapping.csv"]
    products = meta.get("products")
    if products is not None:  # SAFE formats: the products listed in the marker
        need += [root / p for p in products]
    else:
        for d in meta.get("dates", []):
            folder = root / "S2" / d.replace("-", "")
            need += [folder / f"{b}.tif" for b in (*BANDS, SCL)]
    return all(p.exists() for p in need)


def read_scene_marker(root: Path) -> dict | None:
    """The ``scene.json`` of a demo scene folder (its generation parameters), None if unreadable."""
    try:
        return json.loads((root / "scene.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _safe_names(plan: _DatePlan, tile: str):
    from .safe import SafeNames

    sat = "S2A" if plan.platform == "sentinel-2a" else "S2B"
    start = _acquisition(plan, tile)
    launch = dt.date(2015, 6, 23) if sat == "S2A" else dt.date(2017, 3, 7)
    absolute = int((plan.date - launch).days * 143 / 10) + 1
    generated = dt.datetime.combine(plan.date, dt.time(12, 0, 0))
    return SafeNames(sat=sat, start=start, baseline=plan.baseline, orbit=plan.orbit, tile=tile,
                     generated=generated, absolute_orbit=absolute)


def make_demo_scene(
    outdir: str | os.PathLike,
    size: int = 1024,
    n_dates: int = 24,
    seed: int = 0,
    parcels_crs: int = 5514,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    *,
    tile: str = TILE,
    year: int = YEAR,
    format: str = "cog",  # noqa: A002 (the user-facing name, as --format)
) -> DemoScene:
    """Write a synthetic Sentinel-2 L2A time series with LPIS-like parcels into ``outdir``.

    Parameters
    ----------
    outdir : str or path-like
        Target folder; created if missing. If it already holds a complete scene made with the
        same parameters, that scene is returned as is (nothing is rewritten).
    size : int
        Scene width and height in 10 m pixels (even, >= 64); the 20 m bands are ``size // 2``.
    n_dates : int
        Number of acquisition dates (>= 2), irregularly spread over the season (15 September of
        ``year - 1`` .. 15 October of ``year``).
    seed : int
        Seed of every random draw (landscape, dates, clouds): same parameters give byte-identical
        pixels; another seed gives another landscape and another date set.
    parcels_crs : int
        EPSG code of the parcel file (default 5514, S-JTSK / Krovak East North, as Czech LPIS).
    overwrite : bool
        Replace the scene files of a folder that holds another scene or an unrelated non-empty
        folder's scene-named entries (other files are left alone).
    progress : callable, optional
        Called with a short message at each step (e.g. each date written).
    tile : str
        Sentinel-2 (MGRS) tile the scene stands for (default ``33UWQ``): the scene lies on that
        tile's real grid (its UTM CRS, its upper-left corner + (12 km, -18 km)), and item ids,
        ``s2:mgrs_tile``, ``grid:code`` and footprints name it.
    year : int
        Harvest year of the season (default 2022: 2021-09-15 .. 2022-10-15). Processing baselines
        follow the dates (04.00 and the +1000 DN offset from 2022-01-25).
    format : str
        ``cog`` (default): one Cloud-Optimized GeoTIFF per band and date under ``S2/<YYYYMMDD>/``;
        ``safe``: one L2A ``.SAFE`` product per date under ``S2/`` (JPEG2000, lossless, real
        layout and metadata); ``safe-zip``: the same products zipped. ``items.json`` is written
        for every format (for SAFE, by :func:`crop2seg_pipeline.safe.index_safe`).

    Returns
    -------
    DemoScene

    Raises
    ------
    ValueError
        For invalid ``size``, ``n_dates``, ``seed``, ``parcels_crs``, ``tile``, ``year`` or ``format``.
    Crop2SegError
        If ``outdir`` is a non-empty folder holding something else and ``overwrite`` is False.
    """
    size, n_dates, seed, parcels_crs, tile, year, fmt = _validate(size, n_dates, seed, parcels_crs, tile, year, format)
    root = Path(outdir).expanduser().resolve()
    params = _parameters(size, n_dates, seed, parcels_crs, tile, year, fmt)
    say = progress or (lambda msg: None)

    if root.exists() and not root.is_dir():
        raise Crop2SegError(f"{root} exists and is not a folder; choose another output folder")
    reused = _reuse(root, params, say)
    if reused is not None:
        return reused
    with writer_lock(root, "crop2seg-demo-scene", "demo scene folder"):
        return _make(root, params, size, n_dates, seed, parcels_crs, tile, year, fmt, overwrite, say)


def _reuse(root: Path, params: dict, say: Callable[[str], None]) -> "DemoScene | None":
    """The complete scene of these parameters already in ``root`` (reading only), or None."""
    if root.is_dir():
        meta = read_scene_marker(root)
        if meta is not None and meta.get("parameters") == params and scene_is_complete(root, meta):
            log.info("reusing the demo scene in %s", root)
            say(f"reusing the demo scene in {root}")
            return _scene_from_marker(root, meta)
    return None


def _make(root: Path, params: dict, size: int, n_dates: int, seed: int, parcels_crs: int, tile: str, year: int,
          fmt: str, overwrite: bool, say: Callable[[str], None]) -> "DemoScene":
    """Write the scene into ``root`` (under its writer lock)."""
    reused = _reuse(root, params, say)  # made by another process while we waited for the lock
    if reused is not None:
        return reused
    if root.is_dir():
        meta = read_scene_marker(root)
        same = meta is not None and meta.get("parameters") == params
        entries = {p.name for p in root.iterdir()} - {LOCK_DIR}
        # an interrupted or damaged generation of this very scene is simply made again
        partial_ours = entries <= _OUR_NAMES and (same or "scene.json" not in entries)
        if entries and not overwrite and not partial_ours:
            what = ("a demo scene made with other parameters" if meta is not None
                    else "files that are not a demo scene")
            raise Crop2SegError(
                f"{root} is not empty (it holds {what}); pass overwrite=True (--overwrite) to "
                f"replace it, or choose another (new or empty) output folder"
            )
        if entries:
            if partial_ours:
                log.warning("%s holds an incomplete demo scene (no scene.json): regenerating it", root)
            for name in ["scene.json", *sorted(entries & _OUR_NAMES)]:
                p = root / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()

    import time

    t0 = time.perf_counter()
    say(f"building the landscape ({size} x {size} px on tile {tile})")
    land = _build_landscape(size, seed, tile)
    plans = _plan_dates(n_dates, seed, year)
    log.info("demo landscape: %d parcels, %d units (%.1f s)", len(land.parcels), land.profile.size,
             time.perf_counter() - t0)

    root.mkdir(parents=True, exist_ok=True)
    mapping = root / "crop_mapping.csv"
    shutil.copyfile(_shipped_mapping(), mapping)
    parcels_path = root / "parcels.gpkg"
    out = land.parcels[["ID_DPB", "KOD_PLODINY", "NAZEV_PLODINY", "VYMERA", "geometry"]]
    if parcels_crs != land.grid.epsg:
        out = out.to_crs(epsg=parcels_crs)
    out.to_file(parcels_path, layer="parcels", driver="GPKG", index=False)

    bbox, geometry = _footprint_wgs84(land.grid)
    writers = {}
    if fmt != "cog":
        from .safe import SafeWriter

        writers = {p.index: SafeWriter(root / "S2", _safe_names(p, tile), land.grid) for p in plans}
    ctx = _Context(land=land, seed=seed, root=root, blocksize=512 if size >= 2048 else 256,
                   season_start=_season(year)[0],
                   write=(lambda p, band, data: writers[p.index].write_band(band, data)) if writers else None)
    workers = max(1, min(2, os.cpu_count() or 1, n_dates))
    stats: list[dict] = []
    products: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for plan, st in zip(plans, pool.map(lambda p: _render_date(ctx, p), plans)):
            stats.append(st)
            if writers:
                w = writers[plan.index]
                w.finish(cloud_cover=st["eo:cloud_cover"], nodata_pct=st["s2:nodata_pixel_percentage"],
                         boa_offset=plan.offset, footprint_lonlat=geometry["coordinates"][0],
                         spacecraft="Sentinel-2A" if plan.platform == "sentinel-2a" else "Sentinel-2B")
                path = w.zip() if fmt == "safe-zip" else w.root
                products.append(path.relative_to(root).as_posix())
            msg = f"date {plan.index + 1}/{n_dates}: {plan.date} ({st['eo:cloud_cover']:.0f}% cloud)"
            log.debug(msg)
            say(msg)

    if writers:
        from .safe import index_safe

        features = index_safe([root / p for p in products], relative_to=root)
    else:
        features = [_stac_item(p, land.grid, st, bbox, geometry, tile, root) for p, st in zip(plans, stats)]
    with open(root / "items.json", "w", encoding="utf-8") as f:
        json.dump({"type": "FeatureCollection", "features": features}, f, indent=1)

    g = land.grid
    counts = land.parcels["class_id"].value_counts().sort_index()
    meta = {
        "parameters": params,
        "grid": {"epsg": g.epsg, "x0": g.x0, "y0": g.y0, "resolution": g.resolution,
                 "height": g.height, "width": g.width},
        "tile": tile,
        "dates": [p.date.isoformat() for p in plans],
        "n_parcels": int(len(land.parcels)),
        "parcels_per_class": {CLASS_NAMES[int(k)]: int(v) for k, v in counts.items()},
    }
    if writers:
        meta["products"] = products
    tmp = root / "scene.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(tmp, root / "scene.json")
    log.info("demo scene written to %s in %.1f s", root, time.perf_counter() - t0)
    say(f"demo scene written to {root}")
    return _scene_from_marker(root, meta)
