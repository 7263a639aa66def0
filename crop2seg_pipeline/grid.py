"""The pixel grid: one small value object answers every "where is this pixel" question.

Convention used everywhere in the package: ``transform`` is the GDAL/rasterio affine of the
grid's *upper-left corner*; the ``x``/``y`` coordinates of cubes are pixel *centers*.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from affine import Affine


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
