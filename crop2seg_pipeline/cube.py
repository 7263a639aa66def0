"""STAC items -> a lazy, chunked Sentinel-2 cube for the Python API. The only caller of stackstac.

:func:`load_cube` reads top to bottom: normalize items -> select -> choose the grid -> stack the
10 m bands, the 20 m bands and SCL with stackstac (every file window read by
:func:`crop2seg_pipeline.blocks.read_file_window`, the function the commands' block reader uses,
through :class:`BlockReader`, an implementation of stackstac's ``Reader`` protocol) ->
harmonize the processing-baseline offset per item and merge items of the same day (the same
kernels as the block reader) -> wrap as one ``xr.Dataset``. The cube and
:func:`crop2seg_pipeline.blocks.read_block` give the same pixels (tested).

The commands (build, predict) do not use this cube: their tasks read their windows with the
block reader directly. It is for users who want an xarray view of their items.

Grid convention: ``x``/``y`` coordinates are pixel *centers*; the ``transform`` attribute is the
affine of the upper-left corner (see :mod:`crop2seg_pipeline.grid`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import rasterio
import rasterio.enums
import rioxarray  # noqa: F401  (registers the .rio accessor)
import stackstac
import xarray as xr

from .blocks import GDAL_OPTIONS, RESAMPLINGS, cube_source, read_file_window
from .grid import Grid, grid_of_items
from .items import ItemsLike, normalize_items, require_single_crs, select_items
from .kernels.s2 import clear_mask, harmonize_offsets, merge_first_valid
from .nomenclature import BANDS, DEFAULT_UNCLEAR_SCL, NATIVE_RESOLUTION, SCL

log = logging.getLogger(__name__)

__all__ = ["load_cube", "clear_sky", "cube_grid_of", "BlockReader", "RESAMPLINGS"]


class BlockReader:
    """A stackstac ``Reader`` (``stackstac.reader_protocol.Reader``) over :func:`read_file_window`.

    It pickles as its recipe (url, output grid, resampling, dtype); files are opened on the
    worker, once per thread, by the block reader's file cache.
    """

    def __init__(self, *, url: str, spec, resampling, dtype, fill_value, scale_offset=(1, 0),
                 gdal_env=None, errors_as_nodata=()):
        if fill_value not in (0, None) or tuple(scale_offset) != (1, 0):
            raise ValueError("BlockReader reads raw DNs with 0 as nodata (fill_value=0, no rescale)")
        self.url = url
        self.grid = Grid.from_transform(spec.transform, spec.shape, spec.epsg)
        self.resampling = rasterio.enums.Resampling(resampling).name
        self.dtype = np.dtype(dtype)

    def read(self, window) -> np.ndarray:
        win = self.grid.window(int(window.row_off), int(window.col_off), int(window.height), int(window.width))
        with rasterio.Env(**GDAL_OPTIONS):
            return read_file_window(self.url, win, self.resampling, self.dtype)

    def close(self) -> None:
        """Nothing to do: files are kept open by the per-thread cache of the block reader."""

    def __getstate__(self) -> dict:
        return {"url": self.url, "grid": self.grid, "resampling": self.resampling, "dtype": self.dtype.str}

    def __setstate__(self, state: dict) -> None:
        self.url, self.grid, self.resampling = state["url"], state["grid"], state["resampling"]
        self.dtype = np.dtype(state["dtype"])


def _stack(items, assets: Sequence[str], grid: Grid, chunks_yx, resampling: str, dtype) -> da.Array:
    """``(item, asset, y, x)`` of ``assets`` on ``grid``, every item and asset in one chunk."""
    arr = stackstac.stack(
        items,
        assets=list(assets),
        epsg=grid.epsg,
        resolution=grid.resolution,
        bounds=grid.bounds,
        snap_bounds=False,
        resampling=rasterio.enums.Resampling[resampling],
        chunksize=(-1, -1, *chunks_yx),
        dtype=np.dtype(dtype),
        fill_value=np.dtype(dtype).type(0),
        rescale=False,
        sortby_date=False,
        xy_coords="center",
        properties=False,
        band_coords=False,
        errors_as_nodata=(),
        reader=BlockReader,
    )
    if arr.shape[-2:] != grid.shape:  # guard against a silently different grid
        raise RuntimeError(f"stackstac built a {arr.shape[-2:]} grid, expected {grid.shape}")
    return arr.data


def load_cube(
    items: ItemsLike,
    *,
    bands: Sequence[str] = BANDS,
    bbox: Sequence[float] | None = None,
    bbox_crs: Any = 4326,
    start: Any = None,
    end: Any = None,
    max_cloud: float | None = None,
    epsg: int | None = None,
    resolution: float = 10.0,
    chunksize: int = 1024,
    resampling_20m: str = "nearest",
    check_files: bool = True,
    grid: Grid | None = None,
) -> xr.Dataset:
    """Build the lazy Sentinel-2 cube of a set of STAC items.

    Parameters
    ----------
    items
        Anything :func:`crop2seg_pipeline.items.read_items` accepts (path or URL of an
        ItemCollection, pystac objects, item dicts), from any supported provider.
    bands
        Reflectance bands, in the order of the ``band`` axis (default: the 10 PASTIS bands).
    bbox, bbox_crs
        Optional area (minx, miny, maxx, maxy), in ``bbox_crs`` (default lon/lat).
    start, end
        Optional date range (inclusive, ISO dates).
    max_cloud
        Drop items whose ``eo:cloud_cover`` exceeds this percentage.
    epsg
        Target CRS; required when the items are in more than one CRS.
    resolution
        Output pixel size (m).
    chunksize
        Side of a spatial chunk in pixels; every chunk holds all dates and bands of its block.
    resampling_20m
        How 20 m bands are brought to 10 m: ``nearest`` (default: each 20 m pixel repeated 2 x 2,
        no invented values), ``bilinear``, ``cubic`` (as Crop2Seg) or ``average``. 10 m bands are
        read without resampling; SCL always uses ``nearest``.
    check_files
        Check that local files exist before building the graph.
    grid
        Use exactly this output grid (e.g. to rebuild the cube of an earlier run) instead of
        deriving it from the items and ``bbox``.

    Returns
    -------
    xr.Dataset
        ``s2`` (time, band, y, x) uint16 DN, 0 = nodata, baseline offset harmonized, and
        ``scl`` (time, y, x) uint8; coordinates ``time``, ``band``, ``y``, ``x`` (pixel centers),
        per-date ``item_id``, ``tile``, ``cloud_cover``, ``dn_offset`` and ``spatial_ref``;
        attributes ``epsg``, ``transform`` (GDAL order) and ``resolution``.
    """
    if resampling_20m not in RESAMPLINGS:
        raise ValueError(f"resampling_20m must be one of {RESAMPLINGS}, got {resampling_20m!r}")
    unknown = [b for b in bands if b not in NATIVE_RESOLUTION or b == SCL]
    if unknown:
        raise ValueError(f"unknown band(s) {unknown}; choose from {list(BANDS)}")
    if isinstance(chunksize, bool) or not isinstance(chunksize, (int, np.integer)) or chunksize < 1:
        raise ValueError(f"chunksize is the side of a chunk in pixels (a positive int), got {chunksize!r}")
    norm = normalize_items(items, bands=bands, check_files=check_files)
    sel = select_items(norm, bbox=bbox, bbox_crs=bbox_crs, start=start, end=end, max_cloud=max_cloud)
    if grid is None:
        grid = grid_of_items(sel, require_single_crs(sel, epsg), resolution, bbox, bbox_crs)
    src = cube_source(sel, grid, bands, resampling_20m)
    chunks_yx = (int(chunksize), int(chunksize))

    b10 = [b for b in bands if NATIVE_RESOLUTION[b] == 10]
    b20 = [b for b in bands if NATIVE_RESOLUTION[b] != 10]
    parts = []
    if b10:
        parts.append(_stack(sel, b10, grid, chunks_yx, "nearest", "uint16"))
    if b20:
        parts.append(_stack(sel, b20, grid, chunks_yx, resampling_20m, "uint16"))
    raw = da.concatenate(parts, axis=1).rechunk({1: -1}) if len(parts) > 1 else parts[0]
    order = [(b10 + b20).index(b) for b in bands]
    raw_scl = _stack(sel, [SCL], grid, chunks_yx, "nearest", "uint8")[:, 0]
    groups = [list(g) for g in src.groups]
    n = len(groups)
    s2 = da.map_blocks(
        _harmonized_merged, raw, raw_scl[:, None], order=order, offsets=list(src.offsets), groups=groups,
        dtype=np.uint16, chunks=((n,), (len(bands),)) + raw.chunks[2:],
    )
    scl = da.map_blocks(
        lambda s: merge_first_valid(None, s, groups)[1], raw_scl, dtype=np.uint8, chunks=((n,),) + raw_scl.chunks[1:],
    )

    firsts = [sel[g[0]] for g in groups]
    times = pd.to_datetime([it["properties"]["datetime"] for it in firsts]).tz_localize(None)
    coords = {
        "time": ("time", times.values.astype("datetime64[ns]")),
        "band": ("band", list(bands)),
        "y": ("y", grid.y_coords()),
        "x": ("x", grid.x_coords()),
        "item_id": ("time", ["+".join(sel[i]["id"] for i in g) for g in groups]),
        "tile": ("time", ["+".join(sorted({sel[i]["properties"]["crop2seg:tile"] for i in g})) for g in groups]),
        "cloud_cover": ("time", [_mean_cc(sel, g) for g in groups]),
        "dn_offset": ("time", [int(src.offsets[g[0]]) for g in groups]),
    }
    ds = xr.Dataset(
        {"s2": (("time", "band", "y", "x"), s2), "scl": (("time", "y", "x"), scl)},
        coords=coords,
        attrs={
            "epsg": grid.epsg,
            "transform": list(grid.transform)[:6],
            "resolution": grid.resolution,
            "resampling_20m": resampling_20m,
        },
    )
    ds = ds.rio.write_crs(f"EPSG:{grid.epsg}")
    ds["s2"].attrs.update(nodata=0, units="DN (reflectance x 10000, baseline offset harmonized)")
    ds["scl"].attrs.update(nodata=0, flag_meanings="Sen2Cor scene classification")
    log.info(
        "cube: %d dates (%d items), %d bands, %d x %d px in EPSG:%d, chunks %s",
        ds.sizes["time"], len(sel), len(bands), grid.height, grid.width, grid.epsg, chunks_yx,
    )
    return ds


def _harmonized_merged(raw: np.ndarray, scl: np.ndarray, *, order, offsets, groups) -> np.ndarray:
    """One chunk: bands in the requested order, offsets harmonized per item, same-day items merged."""
    s2 = harmonize_offsets(np.ascontiguousarray(raw[:, order]), offsets, inplace=True)
    return merge_first_valid(s2, scl[:, 0], groups)[0]


def cube_grid_of(ds: xr.Dataset) -> Grid:
    """The :class:`Grid` of a cube made by :func:`load_cube`."""
    return Grid.from_coords(ds["x"].values, ds["y"].values, int(ds.attrs["epsg"]))


def _mean_cc(items: Sequence, group: Sequence[int]) -> float:
    v = [items[i]["properties"].get("eo:cloud_cover") for i in group]
    v = [x for x in v if x is not None]
    return float(np.mean(v)) if v else float("nan")


def clear_sky(ds: xr.Dataset, unclear_scl: Sequence[int] = DEFAULT_UNCLEAR_SCL) -> xr.DataArray:
    """Lazy (time, y, x) bool mask: True where SCL says clear sky and valid data.

    Parameters
    ----------
    unclear_scl
        SCL classes that are not clear (default: no data, defective, cloud shadow, medium and
        high probability cloud, thin cirrus, snow).
    """
    unclear = tuple(int(v) for v in unclear_scl)
    return xr.apply_ufunc(
        clear_mask, ds["scl"], kwargs={"unclear": unclear}, dask="parallelized", output_dtypes=[bool]
    ).rename("clear")
