"""STAC items -> a lazy, chunked Sentinel-2 cube. The only caller of stackstac.

:func:`load_cube` reads top to bottom: normalize items -> select -> choose the grid ->
stack 10 m bands, 20 m bands and SCL (three stackstac graphs on one grid) -> harmonize the
processing-baseline offset and merge items of the same day -> wrap as one ``xr.Dataset``.

Grid convention: ``x``/``y`` coordinates are pixel *centers*; the ``transform`` attribute is the
affine of the upper-left corner (see :mod:`crop2seg_pipeline.grid`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pyproj
import rasterio
import rasterio.enums
import stackstac
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from stackstac.rio_reader import DEFAULT_GDAL_ENV, AutoParallelRioReader

from .access import redact, resolve_href
from .errors import EmptySelectionError, ReadError
from .grid import Grid
from .items import ItemsLike, normalize_items, require_single_crs, select_items
from .kernels.s2 import assemble_bands, clear_mask, merge_first_valid, upsample2
from .nomenclature import BANDS, DEFAULT_UNCLEAR_SCL, NATIVE_RESOLUTION, SCL

log = logging.getLogger(__name__)

RESAMPLINGS = ("nearest", "bilinear", "cubic", "average")

#: GDAL settings for every read: stackstac's defaults plus HTTP retries of transient codes
#: (429, 502, 503, 504) with backoff inside GDAL, before its /vsicurl/ cache records a failure.
GDAL_ENV = DEFAULT_GDAL_ENV.updated(
    always=dict(GDAL_HTTP_MAX_RETRY="4", GDAL_HTTP_RETRY_DELAY="0.5", GDAL_HTTP_TIMEOUT="60")
)


class RetryingReader(AutoParallelRioReader):
    """stackstac reader: direct windowed reads on aligned grids, retries, errors naming the href.

    - When a file lies on the output grid (same CRS and resolution, origin an integer number of
      pixels away), windows are read straight from the file (intersected with its extent, the
      rest filled with the fill value) instead of through a GDAL ``WarpedVRT``: same pixels,
      several times faster. Other files go through stackstac's warped path.
    - Transient read errors are retried with exponential backoff; a permanent one (missing or
      corrupt file) raises :class:`ReadError` naming the href.

    Only the recipe (url, grid spec...) is pickled into the graph; files are opened on workers.
    """

    retries: int = 3
    backoff_s: float = 0.5
    #: errors not worth another attempt ("HTTP response code": GDAL has already retried it)
    _PERMANENT = ("No such file", "does not exist", "not recognized as", "not a supported file format",
                  "Assets must have exactly 1 band", "HTTP response code")

    def read(self, window, **kwargs):  # noqa: D102 (see class docstring)
        attempt = 0
        while True:
            try:
                direct = self._direct_offset()
                if direct is None:
                    return super().read(window, **kwargs)
                return self._read_direct(window, *direct)
            except Exception as e:  # stackstac wraps GDAL errors in RuntimeError
                text = redact(str(e))
            permanent = any(p in text for p in self._PERMANENT)
            if permanent or attempt == self.retries:
                break
            log.warning("read of %s failed (attempt %d), retrying: %s", self.url, attempt + 1, text)
            with self._dataset_lock:
                self._dataset = None
            self._local = threading.local()
            time.sleep(self.backoff_s * 2**attempt)
            attempt += 1
        # raised outside the except block: no chained GDAL exception that might not unpickle
        tried = "" if permanent else f" after {attempt + 1} attempts"
        raise ReadError(
            f"cannot read {self.url!r}{tried}: {text}. Check that the file exists, is readable "
            "and is a valid single-band GeoTIFF/JPEG2000, or drop its item."
        )

    def _handle(self) -> rasterio.DatasetReader:
        local = self.__dict__.setdefault("_local", threading.local())
        ds = getattr(local, "ds", None)
        if ds is None:
            with self.gdal_env.open:
                try:  # signed/resolved at open time, never stored (crop2seg_pipeline.access)
                    ds = local.ds = rasterio.open(resolve_href(self.url), sharing=False)
                except Exception as e:  # noqa: BLE001 (reported by read())
                    raise RuntimeError(f"Error opening {self.url!r}: {redact(repr(e))}") from None
        return ds

    def _direct_offset(self) -> tuple[int, int] | None:
        """(row, col) of the output grid's origin in the file, or None when not aligned."""
        if "_aligned" not in self.__dict__:
            ds = self._handle()
            t, spec_t = ds.transform, self.spec.transform
            ok = (
                ds.count == 1
                and ds.crs is not None
                and ds.crs.to_epsg() == self.spec.epsg
                and t.b == 0 and t.d == 0 and spec_t.b == 0 and spec_t.d == 0
                and abs(t.a - spec_t.a) < 1e-9 and abs(t.e - spec_t.e) < 1e-9
                and self.scale_offset == (1, 0)
            )
            offset = None
            if ok:
                col, row = (spec_t.c - t.c) / t.a, (spec_t.f - t.f) / t.e
                if abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6:
                    offset = (int(round(row)), int(round(col)))
            self._aligned = offset
        return self._aligned

    def _read_direct(self, window, row0: int, col0: int) -> np.ndarray:
        ds = self._handle()
        h, w = int(window.height), int(window.width)
        r, c = int(window.row_off) + row0, int(window.col_off) + col0
        out = np.full((h, w), self.fill_value, dtype=self.dtype)
        r_a, r_b = max(r, 0), min(r + h, ds.height)
        c_a, c_b = max(c, 0), min(c + w, ds.width)
        if r_b > r_a and c_b > c_a:
            with self.gdal_env.read:
                data = ds.read(1, window=((r_a, r_b), (c_a, c_b)), out_dtype=self.dtype)
            if ds.nodata is not None and ds.nodata != self.fill_value:
                data[data == np.asarray(ds.nodata).astype(self.dtype)] = self.fill_value
            out[r_a - r : r_b - r, c_a - c : c_b - c] = data
        return out

    def close(self) -> None:  # noqa: D102
        self._local = threading.local()
        super().close()


def cube_grid(
    items: Sequence[Mapping],
    epsg: int,
    resolution: float = 10.0,
    bbox: Sequence[float] | None = None,
    bbox_crs: Any = 4326,
) -> Grid:
    """The output grid: the items' footprint (optionally cut to ``bbox``) snapped to the S2 grid.

    Bounds are snapped outward to multiples of 20 m measured from the items' own pixel origin
    (when the items are in ``epsg``), so every 10 m output pixel sits inside one 20 m pixel and
    the 10 m bands are read without resampling.
    """
    bounds = None
    anchor = (0.0, 0.0)
    for it in items:
        for band, a in it["assets"].items():
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
    assert bounds is not None
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


def _stack(items, assets, grid: Grid, chunks_yx, resampling: str, dtype) -> xr.DataArray:
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
        gdal_env=GDAL_ENV,
        reader=RetryingReader,
    )
    if arr.shape[-2:] != grid.shape:  # guard against a silently different grid
        raise RuntimeError(f"stackstac built a {arr.shape[-2:]} grid, expected {grid.shape}")
    return arr


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
    chunksize: int | tuple[int, int] = 1024,
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
        Spatial chunk (pixels); every chunk holds all dates and bands of its block.
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
    norm = normalize_items(items, bands=bands, check_files=check_files)
    sel = select_items(norm, bbox=bbox, bbox_crs=bbox_crs, start=start, end=end, max_cloud=max_cloud)
    if grid is None:
        target = require_single_crs(sel, epsg)
        grid = cube_grid(sel, target, resolution, bbox, bbox_crs)
    chunks_yx = (chunksize, chunksize) if isinstance(chunksize, int) else tuple(chunksize)

    groups = _same_day_groups(sel)
    offsets = np.array([it["properties"]["crop2seg:dn_offset"] for it in sel], dtype=np.int32)
    b10 = [b for b in bands if NATIVE_RESOLUTION[b] == 10]
    b20 = [b for b in bands if NATIVE_RESOLUTION[b] != 10]
    native20 = resampling_20m == "nearest" and _native_20m_ok(sel, grid, chunks_yx)
    if native20:  # read 20 m bands and SCL at 20 m, repeat 2 x 2 in the assembly kernel
        g20 = Grid(grid.epsg, grid.x0, grid.y0, 2 * grid.resolution, grid.height // 2, grid.width // 2)
        c20 = (chunks_yx[0] // 2, chunks_yx[1] // 2)
        a20 = _stack(sel, b20, g20, c20, "nearest", "uint16").data if b20 else None
        scl20 = _stack(sel, [SCL], g20, c20, "nearest", "uint8").data
        scl = _upsampled(scl20, grid, chunks_yx)
    else:
        a20 = _stack(sel, b20, grid, chunks_yx, resampling_20m, "uint16").data if b20 else None
        scl = _stack(sel, [SCL], grid, chunks_yx, "nearest", "uint8").data[:, 0]
    a10 = _stack(sel, b10, grid, chunks_yx, "nearest", "uint16").data if b10 else None
    s2 = _assembled(a10, a20, bands, b10, b20, offsets, native20, grid, chunks_yx)
    if any(len(g) > 1 for g in groups):
        s2, scl = _merge_days(s2, scl, groups)

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
        "dn_offset": ("time", [int(offsets[g[0]]) for g in groups]),
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


def _native_20m_ok(items: Sequence[Mapping], grid: Grid, chunks_yx: tuple[int, int]) -> bool:
    """True when every 20 m asset is in the grid's CRS with pixel edges on the grid's 20 m lattice."""
    if grid.resolution != 10 or grid.height % 2 or grid.width % 2 or chunks_yx[0] % 2 or chunks_yx[1] % 2:
        return False
    for it in items:
        for band, a in it["assets"].items():
            if NATIVE_RESOLUTION.get(band) != 20:
                continue
            t = a["proj:transform"]
            if a["proj:epsg"] != grid.epsg or abs(t[0] - 20) > 1e-9 or abs(t[4] + 20) > 1e-9:
                return False
            if abs(((grid.x0 - t[2]) / 20) % 1) > 1e-9 or abs(((t[5] - grid.y0) / 20) % 1) > 1e-9:
                return False
    return True


def _out_chunks(grid: Grid, chunks_yx: tuple[int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return da.core.normalize_chunks(chunks_yx, grid.shape)


def _upsampled(scl20: da.Array, grid: Grid, chunks_yx: tuple[int, int]) -> da.Array:
    cy, cx = _out_chunks(grid, chunks_yx)
    return da.map_blocks(upsample2, scl20[:, 0], dtype=scl20.dtype, chunks=(scl20.chunks[0], cy, cx))


def _assembled(a10, a20, bands, b10, b20, offsets, native20, grid, chunks_yx) -> da.Array:
    """One kernel per chunk: bands in the requested order, 20 m repeated, offsets harmonized."""
    pos10 = [list(bands).index(b) for b in b10]
    pos20 = [list(bands).index(b) for b in b20]
    kw = dict(n_bands=len(bands), pos10=pos10, pos20=pos20, offsets=offsets, upsample20=native20)
    if a10 is not None and a20 is not None:
        return da.blockwise(
            assemble_bands, "tbyx", a10, "tcyx", a20, "tdyx", new_axes={"b": len(bands)},
            align_arrays=False, concatenate=True, dtype=np.uint16, **kw,
        )
    if a10 is not None:
        return da.map_blocks(assemble_bands, a10, None, dtype=np.uint16, chunks=a10.chunks[:1] + ((len(bands),),) + a10.chunks[2:], **kw)
    cy, cx = _out_chunks(grid, chunks_yx)
    return da.map_blocks(
        lambda a, **k: assemble_bands(None, a, **k), a20, dtype=np.uint16,
        chunks=(a20.chunks[0], (len(bands),), cy, cx), **kw,
    )


def cube_grid_of(ds: xr.Dataset) -> Grid:
    """The :class:`Grid` of a cube made by :func:`load_cube`."""
    return Grid.from_coords(ds["x"].values, ds["y"].values, int(ds.attrs["epsg"]))


def _same_day_groups(items: Sequence[Mapping]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it["properties"]["datetime"][:10], []).append(i)
    return [groups[k] for k in sorted(groups)]


def _mean_cc(items: Sequence[Mapping], group: Sequence[int]) -> float:
    v = [items[i]["properties"].get("eo:cloud_cover") for i in group]
    v = [x for x in v if x is not None]
    return float(np.mean(v)) if v else float("nan")


def _merged_s2(s2: np.ndarray, scl4: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    return merge_first_valid(s2, scl4[:, 0], groups)[0]


def _merged_scl(s2: np.ndarray, scl4: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    return merge_first_valid(s2, scl4[:, 0], groups)[1][:, None]


def _merge_days(s2: da.Array, scl: da.Array, groups: list[list[int]]) -> tuple[da.Array, da.Array]:
    """Merge items of the same day; each block holds all dates (time is one chunk)."""
    n = len(groups)
    scl4 = scl[:, None]
    s2_out = da.map_blocks(_merged_s2, s2, scl4, groups, dtype=s2.dtype, chunks=((n,),) + s2.chunks[1:])
    scl_out = da.map_blocks(
        _merged_scl, s2, scl4, groups, dtype=scl.dtype, chunks=((n,), (1,)) + scl.chunks[1:]
    )
    return s2_out, scl_out[:, 0]


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
