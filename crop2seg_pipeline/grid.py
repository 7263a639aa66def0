"""The pixel grid: one small value object answers every "where is this pixel" question.

Convention used everywhere in the package: ``transform`` is the GDAL/rasterio affine of the
grid's *upper-left corner*; the ``x``/``y`` coordinates of cubes are pixel *centers*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyproj
from affine import Affine

from .errors import EmptySelectionError


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid in a projected CRS.

    Parameters
    ----------
    epsg : int
        EPSG code of the CRS.
    x0, y0 : float
        Upper-left corner of pixel (0, 0).
    resolution : float
        Pixel size in CRS units (square pixels, north-up).
    height, width : int
        Number of rows and columns.
    """

    epsg: int
    x0: float
    y0: float
    resolution: float
    height: int
    width: int

    @cached_property
    def transform(self) -> Affine:
        return Affine(self.resolution, 0.0, self.x0, 0.0, -self.resolution, self.y0)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width)."""
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy)."""
        return (
            self.x0,
            self.y0 - self.height * self.resolution,
            self.x0 + self.width * self.resolution,
            self.y0,
        )

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    def x_coords(self) -> np.ndarray:
        """Pixel-center x coordinates."""
        return self.x0 + (np.arange(self.width) + 0.5) * self.resolution

    def y_coords(self) -> np.ndarray:
        """Pixel-center y coordinates (decreasing)."""
        return self.y0 - (np.arange(self.height) + 0.5) * self.resolution

    def window(self, row: int, col: int, height: int, width: int) -> "Grid":
        """The sub-grid starting at pixel (row, col); may extend beyond this grid."""
        return Grid(
            self.epsg,
            self.x0 + col * self.resolution,
            self.y0 - row * self.resolution,
            self.resolution,
            height,
            width,
        )

    @classmethod
    def from_coords(cls, x: np.ndarray, y: np.ndarray, epsg: int) -> "Grid":
        """Rebuild a grid from pixel-center coordinates (as on a cube)."""
        x = np.asarray(x, dtype="float64")
        y = np.asarray(y, dtype="float64")
        if x.size < 2 or y.size < 2:
            raise ValueError("need at least 2 x 2 pixels to infer a grid from coordinates")
        res = float(x[1] - x[0])
        if not np.isclose(float(y[0] - y[1]), res):
            raise ValueError("grid must be north-up with square pixels")
        return cls(int(epsg), float(x[0] - res / 2), float(y[0] + res / 2), res, y.size, x.size)

    @classmethod
    def from_transform(cls, transform: Affine, shape: tuple[int, int], epsg: int) -> "Grid":
        if transform.b != 0 or transform.d != 0 or transform.a != -transform.e:
            raise ValueError(f"grid must be north-up with square pixels, got {transform!r}")
        return cls(int(epsg), transform.c, transform.f, transform.a, int(shape[0]), int(shape[1]))


def grid_of_items(
    items: Sequence[Mapping],
    epsg: int,
    resolution: float = 10.0,
    bbox: Sequence[float] | None = None,
    bbox_crs: Any = 4326,
) -> Grid:
    """The output grid of normalized items: their footprint (cut to ``bbox``) snapped to the S2 grid.

    Bounds are snapped outward to multiples of 20 m measured from the items' own pixel origin
    (when the items are in ``epsg``), so every 10 m output pixel sits inside one 20 m pixel and
    the 10 m bands are read without resampling.

    Raises
    ------
    EmptySelectionError
        ``bbox`` does not overlap the items' footprint.
    """
    bounds = None
    anchor = (0.0, 0.0)
    for it in items:
        for a in it["assets"].values():
            t = a["proj:transform"]
            h, w = a["proj:shape"]
            b = (t[2], t[5] + t[4] * h, t[2] + t[0] * w, t[5])
            if a["proj:epsg"] != epsg:
                tr = pyproj.Transformer.from_crs(a["proj:epsg"], epsg, always_xy=True)
                b = tr.transform_bounds(*b, densify_pts=21)
            else:
                anchor = (t[2], t[5])
            bounds = b if bounds is None else (
                min(bounds[0], b[0]), min(bounds[1], b[1]), max(bounds[2], b[2]), max(bounds[3], b[3])
            )
    if bounds is None:
        raise EmptySelectionError("no item to build a grid from")
    if bbox is not None:
        src = pyproj.CRS.from_user_input(bbox_crs)
        if src.to_epsg() != epsg:
            bb = pyproj.Transformer.from_crs(src, epsg, always_xy=True).transform_bounds(*bbox, densify_pts=21)
        else:
            bb = tuple(bbox)
        cut = (max(bounds[0], bb[0]), max(bounds[1], bb[1]), min(bounds[2], bb[2]), min(bounds[3], bb[3]))
        if cut[0] >= cut[2] or cut[1] >= cut[3]:
            raise EmptySelectionError(
                f"the bbox {tuple(round(v, 1) for v in bb)} (EPSG:{epsg}) does not overlap the items' "
                f"footprint {tuple(round(v, 1) for v in bounds)}"
            )
        bounds = cut
    step = 2 * resolution if resolution == 10 else resolution
    ax, ay = anchor
    x0 = ax + math.floor((bounds[0] - ax) / step + 1e-9) * step
    x1 = ax + math.ceil((bounds[2] - ax) / step - 1e-9) * step
    y1 = ay + math.ceil((bounds[3] - ay) / step - 1e-9) * step
    y0 = ay + math.floor((bounds[1] - ay) / step + 1e-9) * step
    return Grid(epsg, x0, y1, resolution, int(round((y1 - y0) / resolution)), int(round((x1 - x0) / resolution)))
