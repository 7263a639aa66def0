"""Parcels shared by the parcel-reading and label-rasterization tests (imported, not collected)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import rasterio.features
import shapely
from shapely.affinity import rotate

from crop2seg_pipeline.grid import Grid
from crop2seg_pipeline.nomenclature import NOT_CLASSIFIED

GRID = Grid(32633, 505980.0, 5494020.0, 10.0, 256, 256)
X0, Y0 = GRID.x0, GRID.y0
#: Class ids the shipped mapping gives these codes, written out independently of the CSV.
EXPECTED_CLASS = {"PSE_O": 4, "KUK_S": 6, "TTP": 1, "REP_O": 5, "NOPE": NOT_CLASSIFIED}


def utm_parcels() -> gpd.GeoDataFrame:
    """Irregular, non-overlapping parcels in UTM 33N; several cross the 64 and 100 px chunk
    borders (at 640 m / 1000 m from the corner), one sticks out of the grid."""
    polys = [
        rotate(shapely.box(X0 + 500, Y0 - 1200, X0 + 1400, Y0 - 300), 17),  # crosses 64 & 100
        shapely.Polygon(
            [(X0 + 1700, Y0 - 200), (X0 + 2300, Y0 - 260), (X0 + 2100, Y0 - 1300),
             (X0 + 1550, Y0 - 900)]
        ),
        shapely.Point(X0 + 900, Y0 - 1900).buffer(420),  # crosses the 1000/1280 m borders
        shapely.box(X0 + 2300, Y0 - 2700, X0 + 2700, Y0 - 1800),  # beyond the right edge
        shapely.box(X0 + 1604, Y0 - 1637, X0 + 1677, Y0 - 1583),  # tiny, inside one chunk
    ]
    return gpd.GeoDataFrame(
        {
            "ID_DPB": [101, 7, 55, 3000, 12],
            "KOD_PLODINY": ["PSE_O", "KUK_S", "TTP", "NOPE", "REP_O"],
            "NAZEV_PLODINY": ["pšenice", "kukuřice", "TTP", "?", "řepka"],
        },
        geometry=polys,
        crs=32633,
    )


def write_parcels_gpkg(tmp_path):
    path = tmp_path / "dpb.gpkg"
    utm_parcels().to_crs(5514).to_file(path)
    return path


def reference_rasters(path) -> tuple[np.ndarray, np.ndarray]:
    """Independent expectation: geopandas reprojection + one rasterio.features.rasterize."""
    gdf = gpd.read_file(path).to_crs(GRID.epsg)
    label = rasterio.features.rasterize(
        [(g, EXPECTED_CLASS[c]) for g, c in zip(gdf.geometry, gdf["KOD_PLODINY"])],
        out_shape=GRID.shape, transform=GRID.transform, fill=0, dtype="uint8",
    )
    pid = rasterio.features.rasterize(
        list(zip(gdf.geometry, gdf["ID_DPB"])),
        out_shape=GRID.shape, transform=GRID.transform, fill=0, dtype="int32",
    )
    return label, pid
