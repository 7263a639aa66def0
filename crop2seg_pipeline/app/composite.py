"""The map's background: the scene's own true-colour composite, so the app needs no internet.

Per pixel, the median of B04/B03/B02 over the dates the SCL calls clear (all valid dates where
none is), read through the package's lazy cube at a reduced resolution (at most ``max_side``
pixels on the longer side), computed on the Dask cluster and cached as a PNG per items file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cube import clear_sky, cube_grid_of, load_cube
from ..grid import Grid
from .area import Area
from .cache import AppCache, request_key

log = logging.getLogger(__name__)

__all__ = ["Composite", "true_colour", "median_composite", "stretch", "composite_resolution"]

RGB = ("B04", "B03", "B02")
VERSION = 1


@dataclass(frozen=True)
class Composite:
    """An RGBA image (rows from the north, uint8 (y, x, 4)) on ``grid``."""

    rgba: np.ndarray
    grid: Grid
    n_dates: int


def composite_resolution(area: Area, max_side: int) -> float:
    """A multiple of 10 m giving at most ``max_side`` px on the area's longer side (20 m steps past 10 m)."""
    f = math.ceil(max(area.grid.height, area.grid.width) / max(int(max_side), 16))
    return 10.0 if f <= 1 else 20.0 * math.ceil(f / 2)


def stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Reflectance DN (3, y, x) float -> uint8 (y, x, 4): one linear stretch for all bands (2nd to
    98th percentile of the valid pixels, so colours keep their balance), gamma 1/1.3; alpha 0
    where there is no data."""
    out = np.zeros(rgb.shape[1:] + (4,), np.uint8)
    if not valid.any():
        return out
    v = rgb[:, valid]
    lo, hi = np.nanpercentile(v, 2), np.nanpercentile(v, 98)
    scaled = np.clip((np.nan_to_num(rgb, nan=lo) - lo) / max(hi - lo, 1.0), 0, 1) ** (1 / 1.3)
    out[..., :3] = np.moveaxis(np.round(scaled * 255), 0, -1).astype(np.uint8)
    out[..., 3] = np.where(valid, 255, 0)
    return out


def nanmedian_last(v: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN (NaN where all are NaN), without numpy's all-NaN warning."""
    s = np.sort(v, axis=-1)  # NaN sort last
    n = np.sum(~np.isnan(v), axis=-1)
    lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0)[..., None], -1)[..., 0]
    hi = np.take_along_axis(s, np.maximum(n // 2, 0)[..., None], -1)[..., 0]
    return np.where(n > 0, (lo + hi) / 2, np.nan).astype(v.dtype)


def _median(a: Any) -> Any:
    import xarray as xr

    return xr.apply_ufunc(nanmedian_last, a, input_core_dims=[["time"]], dask="parallelized", output_dtypes=[a.dtype])


def _median_composite(s2: Any, clear: Any) -> Any:
    """Lazy (3, y, x) float32 medians over clear dates, over valid dates where no date is clear."""
    valid = (s2 > 0).all("band")
    v = s2.astype("float32")
    return _median(v.where(clear & valid)).fillna(_median(v.where(valid))).transpose("band", "y", "x")


def median_composite(area: Area, client: Any = None, max_side: int = 1024) -> tuple[np.ndarray, Grid, int]:
    """The (3, y, x) float32 medians (B04, B03, B02 DN; NaN where no date is valid), their grid and
    the number of dates, computed on ``client`` when given."""
    res = composite_resolution(area, max_side)
    cube = load_cube(area.source, bands=RGB, resolution=res, chunksize=512)
    lazy = _median_composite(cube["s2"], clear_sky(cube))
    med = client.compute(lazy.data).result() if client is not None else lazy.data.compute()
    return np.asarray(med, np.float32), cube_grid_of(cube), int(cube.sizes["time"])


def true_colour(area: Area, cache: AppCache, client: Any = None, max_side: int = 1024) -> Composite:
    """The area's composite, from the cache or computed (on ``client`` when given) and cached."""
    from PIL import Image

    res = composite_resolution(area, max_side)
    key = request_key({"v": VERSION, "items": area.digest, "res": res})
    folder = cache.path("backgrounds", key)
    with cache.lock("backgrounds", key):
        if cache.is_complete("backgrounds", key):
            meta = cache.read_marker("backgrounds", key) or {}
            g = meta["grid"]
            rgba = np.asarray(Image.open(folder / "composite.png").convert("RGBA"))
            return Composite(rgba, Grid(g["epsg"], g["x0"], g["y0"], g["resolution"], g["height"], g["width"]),
                             int(meta.get("n_dates", 0)))
        cache.clear_partial("backgrounds", key)
        med, grid, n_dates = median_composite(area, client, max_side)
        rgba = stretch(med, np.isfinite(med).all(axis=0))
        cache.write_marker("backgrounds", key, status="writing", description=f"true colour of {area.source}")
        Image.fromarray(rgba, "RGBA").save(folder / "composite.png")
        g = {"epsg": grid.epsg, "x0": grid.x0, "y0": grid.y0, "resolution": grid.resolution,
             "height": grid.height, "width": grid.width}
        cache.write_marker("backgrounds", key, status="complete", grid=g, n_dates=n_dates, items=area.source,
                           description=f"true colour of {area.source} at {res:g} m")
        log.info("true-colour composite of %s: %d x %d px at %g m, %d dates", area.source, grid.height,
                 grid.width, res, n_dates)
        return Composite(rgba, grid, n_dates)
