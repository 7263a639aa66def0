"""A parcel's NDVI time series, read from the items for the parcel's window and cached.

The parcel's pixels are those whose centre lies inside it (as the parcel-id raster of the
prediction; all touched pixels for a parcel too thin to hold a centre); per date, the mean NDVI
(B08 - B04) / (B08 + B04) over those pixels the SCL calls clear.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from ..cube import clear_sky, cube_grid_of, load_cube
from ..kernels.s2 import ndvi_series
from ..storage import write_local_atomic
from .area import Area
from .cache import AppCache, request_key

__all__ = ["parcel_ndvi"]

VERSION = 1


def parcel_ndvi(area: Area, cache: AppCache, geometry: Any, parcel_id: Any, start: str | None = None,
                end: str | None = None, client: Any = None) -> dict:
    """``{"parcel_id", "dates", "ndvi", "clear_pixels", "n_pixels", "cached"}`` for one parcel.

    ``geometry`` is a shapely geometry in the area's CRS; ``ndvi`` holds None on dates with no
    clear pixel of the parcel.
    """
    import rasterio.features

    key = request_key({"v": VERSION, "items": area.digest, "start": start, "end": end})
    gid = hashlib.sha256(geometry.wkb + str(parcel_id).encode()).hexdigest()[:24]
    path = cache.path("ndvi", key) / f"{gid}.json"
    if path.exists():
        doc = json.loads(path.read_text())
        doc["cached"] = True
        return doc
    res = area.grid.resolution
    x0, y0, x1, y1 = geometry.bounds
    bbox = (x0 - res, y0 - res, x1 + res, y1 + res)
    cube = load_cube(area.source, bands=("B04", "B08"), bbox=bbox, bbox_crs=area.epsg, start=start, end=end,
                     chunksize=512)
    grid = cube_grid_of(cube)
    shape = grid.shape
    inside = rasterio.features.geometry_mask([geometry], shape, grid.transform, invert=True)
    if not inside.any():
        inside = rasterio.features.geometry_mask([geometry], shape, grid.transform, invert=True, all_touched=True)
    lazy = [cube["s2"].sel(band="B04").data, cube["s2"].sel(band="B08").data, clear_sky(cube).data]
    red, nir, clear = client.compute(lazy, sync=True) if client is not None else [a.compute() for a in lazy]
    mean, count = ndvi_series(np.asarray(red), np.asarray(nir), np.asarray(clear), inside)
    doc = {
        "parcel_id": parcel_id if isinstance(parcel_id, (int, str)) else str(parcel_id),
        "dates": [str(np.datetime64(t, "D")) for t in cube["time"].values],
        "ndvi": [None if not np.isfinite(v) else round(float(v), 4) for v in mean],
        "clear_pixels": [int(v) for v in count],
        "n_pixels": int(inside.sum()),
    }
    if cache.read_marker("ndvi", key) is None:
        cache.write_marker("ndvi", key, status="complete", items=area.source,
                           description=f"parcel NDVI series of {area.source} ({start or '...'} .. {end or '...'})")
    write_local_atomic(path, lambda fh: fh.write(json.dumps(doc).encode("utf-8")))
    doc["cached"] = False
    return doc
