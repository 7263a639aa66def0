"""The one block reader: normalized items + a window -> the (time, band, y, x) uint16 block.

Every task that needs pixels (build passes, predict) reads its window here, with rasterio,
synchronously, inside the task; the user-facing lazy cube (:func:`crop2seg_pipeline.cube.load_cube`)
reads every file window through :func:`read_file_window` too, so both give the same pixels.

- :class:`CubeSource` is the small recipe a task carries (shipped once per graph): the items'
  asset references, the output grid, the dates (items of one day merged) and the bands.
- :func:`read_block` gives reflectance (and, with ``scl=True``, the SCL layer of the same dates);
  :func:`read_scl` gives SCL alone and never touches a reflectance file.
- Files are opened once per worker thread and kept open across dates and chunks
  (:class:`_FileCache`); on the first open each file's CRS, transform and shape are checked
  against its item's ``proj:*`` metadata, so a file that disagrees with its item is a clear
  error, never a silently empty or shifted band.
- Windows are read straight from files that lie on the output grid (no GDAL warp); 20 m files
  on the 20 m lattice of a 10 m grid are read at 20 m and each pixel repeated 2 x 2
  (``resampling_20m="nearest"``); anything else goes through a GDAL ``WarpedVRT``.
- Items of the same day are merged first-valid in item order, where an item has data wherever
  its SCL is not 0 (Sen2Cor's NO_DATA), so SCL alone decides and SCL-only reads agree with full
  reads. Processing-baseline offsets are harmonized per item before the merge.
- Transient read errors are retried with backoff; a permanent one (missing, unreadable or
  corrupt file, an HTTP error GDAL already retried) raises :class:`~crop2seg_pipeline.errors.ReadError`
  at once, naming the file.

Pixel convention: ``Grid`` windows; array index ``[..., i, j]`` is the pixel whose upper-left
corner is ``(x0 + j * res, y0 - i * res)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
import rasterio.enums
import rasterio.vrt
import rasterio.windows

from .access import gdal_options, invalidate_tokens, redact, resolve_href
from .errors import Crop2SegError, ReadError
from .grid import Grid
from .kernels.s2 import harmonize_offsets, take_first_valid, upsample2
from .nomenclature import BANDS, NATIVE_RESOLUTION, SCL

log = logging.getLogger(__name__)

__all__ = [
    "AssetRef",
    "CubeSource",
    "GDAL_OPTIONS",
    "PREDICT_BLOCK_CACHE",
    "RESAMPLINGS",
    "cube_source",
    "read_block",
    "read_scl",
    "read_file_window",
    "same_day_groups",
]

RESAMPLINGS = ("nearest", "bilinear", "cubic", "average")

#: GDAL settings of every read: no directory listing on open, HTTP retries of transient codes
#: (429, 502, 503, 504) with backoff inside GDAL, merged range requests, a block cache per process.
GDAL_OPTIONS: dict[str, str | int] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "4",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2,.JP2,.zip,.xml",
    # no per-handle read cache: VSI_CACHE keeps up to 25 MB of *each* open file, and a worker keeps
    # a tile's 264 files (24 dates x 11 bands) open across chunks -- 1 GB per worker after a few
    # chunks on the full-tile benchmark, for nothing (local reads hit the page cache, /vsicurl/
    # has its own region cache)
    "VSI_CACHE": "FALSE",
    # decoded blocks are used by one chunk (and its neighbours' 20 m halves): a small block cache
    # per process keeps worker memory flat while files stay open across chunks (32 MB: the same
    # CPU per chunk as 128 MB, measured with benchmarks/fulltile.py's tile)
    "GDAL_CACHEMAX": 32 * 2**20,  # bytes (rasterio hands an int to GDALSetCacheMax64)
}

#: GDAL block cache of prediction reads on small areas. A model chunk's halo reaches into its
#: neighbours' file blocks, and small areas are cut finer than the files' blocks: with 32 MB, a
#: 1024 px, 12-date demo area decoded its blocks several times (reading was 16 % of the model
#: tasks' time, and the area 25 % slower than with 256 MB, where reading is 3 %;
#: ``benchmarks/predict.py``). 256 MB holds every block of such an area. Large areas keep 32 MB:
#: at 2048 px the large cache took 27.4 s against 28.0 s, for 300 MB more per worker.
PREDICT_BLOCK_CACHE = 256 * 2**20

#: Read attempts after a transient error, and the first backoff (doubled each time).
RETRIES = 2
BACKOFF_S = 0.5
#: Messages of errors that no retry can fix (GDAL has already retried HTTP status codes).
_PERMANENT = (
    "No such file", "does not exist", "not recognized as", "not a supported file format",
    "HTTP response code", "Permission denied", "is a directory",
)
#: Open datasets kept per worker thread (files of one chunk x dates x bands fit many times).
MAX_OPEN_FILES = 2048


# ----------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class AssetRef:
    """One band file of one item, as its item describes it (``proj:*`` of the asset).

    Attributes
    ----------
    href : path or URL GDAL opens
    epsg : CRS of the file
    transform : 6 affine coefficients (GDAL/rasterio order) of the file's upper-left corner
    shape : (height, width) of the file
    item_id, band : for error messages
    """

    href: str
    epsg: int
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]
    item_id: str
    band: str

    @classmethod
    def of(cls, item: Mapping, band: str) -> "AssetRef":
        """The reference of ``band`` in a normalized item (:func:`crop2seg_pipeline.items.normalize_item`)."""
        a = item["assets"][band]
        return cls(
            href=str(a["href"]),
            epsg=int(a["proj:epsg"]),
            transform=tuple(float(v) for v in a["proj:transform"][:6]),  # type: ignore[arg-type]
            shape=(int(a["proj:shape"][0]), int(a["proj:shape"][1])),
            item_id=str(item["id"]),
            band=band,
        )

    def bounds(self) -> tuple[float, float, float, float]:
        a, _, c, _, e, f = self.transform
        h, w = self.shape
        return (c, f + e * h, c + a * w, f)


@dataclass(frozen=True)
class CubeSource:
    """What a task needs to read any window of a cube (small: refs and numbers, no data).

    Attributes
    ----------
    grid : the output grid (10 m)
    bands : reflectance bands in the order of the ``band`` axis
    groups : per output date, the indices (into ``refs``) of the items merged into it, in
        priority order (first valid wins)
    refs : per item, ``{band: AssetRef}`` for every band in ``bands`` and ``SCL``
    offsets : per item, the DN offset harmonizing its processing baseline
    times : per output date, the ISO datetime of its first item
    resampling_20m : how 20 m bands reach 10 m (``nearest`` repeats 2 x 2 when aligned)
    """

    grid: Grid
    bands: tuple[str, ...]
    groups: tuple[tuple[int, ...], ...]
    refs: tuple[Mapping[str, AssetRef], ...]
    offsets: tuple[int, ...]
    times: tuple[str, ...]
    resampling_20m: str = "nearest"

    @property
    def n_dates(self) -> int:
        return len(self.groups)

    def __dask_tokenize__(self):
        return ("crop2seg-cube-source", self.grid, self.bands, self.groups,
                tuple(tuple(sorted(r.items())) for r in self.refs), self.offsets, self.times, self.resampling_20m)


def same_day_groups(items: Sequence[Mapping]) -> list[list[int]]:
    """Indices of ``items`` (sorted by datetime) grouped by acquisition day, days in order."""
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it["properties"]["datetime"][:10], []).append(i)
    return [groups[k] for k in sorted(groups)]


def cube_source(items: Sequence[Mapping], grid: Grid, bands: Sequence[str] = BANDS,
                resampling_20m: str = "nearest") -> CubeSource:
    """The :class:`CubeSource` of normalized, selected items (sorted by datetime) on ``grid``."""
    if resampling_20m not in RESAMPLINGS:
        raise ValueError(f"resampling_20m must be one of {RESAMPLINGS}, got {resampling_20m!r}")
    unknown = [b for b in bands if b not in NATIVE_RESOLUTION or b == SCL]
    if unknown:
        raise ValueError(f"unknown band(s) {unknown}; choose from {list(BANDS)}")
    groups = same_day_groups(items)
    return CubeSource(
        grid=grid,
        bands=tuple(bands),
        groups=tuple(tuple(g) for g in groups),
        refs=tuple({b: AssetRef.of(it, b) for b in (*bands, SCL)} for it in items),
        offsets=tuple(int(it["properties"]["crop2seg:dn_offset"]) for it in items),
        times=tuple(str(items[g[0]]["properties"]["datetime"]).rstrip("Z") for g in groups),
        resampling_20m=resampling_20m,
    )


# ----------------------------------------------------------------------------- files


@dataclass
class _File:
    """An open dataset and the facts every read asks for (read once: rasterio properties cost)."""

    ds: rasterio.DatasetReader
    epsg: int | None
    transform: tuple[float, float, float, float, float, float]
    height: int
    width: int
    count: int
    nodata: float | None

    @classmethod
    def open(cls, href: str) -> "_File":
        # signed / translated at open time and used for this open only (crop2seg_pipeline.access):
        # the cache, messages and graphs keep the unsigned href
        with rasterio.Env(**gdal_options(href)):
            ds = rasterio.open(resolve_href(href), sharing=False)
        epsg = ds.crs.to_epsg() if ds.crs is not None else None
        return cls(ds, epsg, tuple(ds.transform)[:6], ds.height, ds.width, ds.count, ds.nodata)  # type: ignore[arg-type]


class _FileCache(threading.local):
    """Open files of this thread (GDAL handles are not thread-safe), least recently used out."""

    def __init__(self) -> None:
        self.open: OrderedDict[str, _File] = OrderedDict()
        self.checked: set[str] = set()

    def get(self, href: str) -> _File:
        f = self.open.get(href)
        if f is not None:
            self.open.move_to_end(href)
            return f
        f = self.open[href] = _File.open(href)
        while len(self.open) > MAX_OPEN_FILES:
            _, old = self.open.popitem(last=False)
            old.ds.close()
        return f

    def drop(self, href: str) -> None:
        f = self.open.pop(href, None)
        if f is not None:
            f.ds.close()

    def clear(self) -> None:
        for f in self.open.values():
            f.ds.close()
        self.open.clear()
        self.checked.clear()


_FILES = _FileCache()


def close_files() -> None:
    """Close the datasets this thread keeps open (e.g. before files are replaced)."""
    _FILES.clear()


def _check_against_item(f: _File, ref: AssetRef) -> None:
    """The file must be where its item says: same CRS, transform and shape."""
    problems = []
    if f.epsg != ref.epsg:
        problems.append(f"CRS EPSG:{f.epsg} in the file vs EPSG:{ref.epsg} in the item")
    t = f.transform
    tol = 1e-6 * max(abs(ref.transform[0]), 1.0)
    if any(abs(a - b) > max(tol, 1e-6 * abs(b)) for a, b in zip(t, ref.transform)):
        problems.append(f"transform {_fmt(t)} in the file vs {_fmt(ref.transform)} in the item")
    if (f.height, f.width) != tuple(ref.shape):
        problems.append(f"shape {f.height} x {f.width} in the file vs {ref.shape[0]} x {ref.shape[1]} in the item")
    if f.count != 1:
        problems.append(f"{f.count} bands in the file (one band per asset is expected)")
    if problems:
        raise ReadError(
            f"item {ref.item_id!r}, asset {ref.band}: {ref.href} disagrees with its item's projection "
            f"metadata ({'; '.join(problems)}). Fix the item's proj:epsg/proj:transform/proj:shape "
            "(or the file), or drop the item."
        )


def _fmt(t: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.12g}" for v in t) + ")"


def _open(ref: AssetRef | str) -> _File:
    href = ref.href if isinstance(ref, AssetRef) else ref
    f = _FILES.get(href)
    if isinstance(ref, AssetRef) and href not in _FILES.checked:
        _check_against_item(f, ref)
        _FILES.checked.add(href)
    return f


def _with_retries(ref: AssetRef | str, read):
    """``read(file)`` with transient errors retried; permanent ones become ReadError at once.

    A refused signed URL (HTTP 401/403: an expired token) gets one more try with fresh tokens.
    """
    href = ref.href if isinstance(ref, AssetRef) else ref
    attempt, renewed = 0, False
    while True:
        try:
            return read(_open(ref))
        except Crop2SegError:  # ours already say what is wrong (a file disagreeing with its item, access)
            raise
        except Exception as e:  # rasterio/GDAL errors have many types
            text = redact(f"{type(e).__name__}: {e}")
        _FILES.drop(href)
        if not renewed and ("HTTP response code: 403" in text or "HTTP response code: 401" in text):
            renewed = True
            invalidate_tokens()
            continue
        permanent = any(p in text for p in _PERMANENT)
        if permanent or attempt >= RETRIES:
            break
        log.warning("read of %s failed (attempt %d), retrying: %s", href, attempt + 1, text)
        time.sleep(BACKOFF_S * 2**attempt)
        attempt += 1
    tried = "" if permanent else f" after {attempt + 1} attempts"
    where = f"item {ref.item_id!r}, asset {ref.band}: " if isinstance(ref, AssetRef) else ""
    # raised outside the except block: no chained GDAL exception that might not unpickle
    raise ReadError(
        f"{where}cannot read {href!r}{tried}: {text}. Check that the file exists, is readable and is "
        "a valid single-band GeoTIFF/JPEG2000, or drop its item."
    )


# ----------------------------------------------------------------------------- one file window


def _pixel_offset(f: _File, grid: Grid, res: float) -> tuple[float, float]:
    """(row, col) of the grid's upper-left corner in units of ``res`` from the file's corner."""
    return (f.transform[5] - grid.y0) / res, (grid.x0 - f.transform[2]) / res


def _direct(f: _File, r0: int, c0: int, out: np.ndarray) -> np.ndarray:
    """Rows [r0, r0 + h) x cols [c0, c0 + w) of band 1 (file pixels) into ``out`` (h, w), 0 outside."""
    h, w = out.shape
    ra, rb = max(r0, 0), min(r0 + h, f.height)
    ca, cb = max(c0, 0), min(c0 + w, f.width)
    if not (rb > ra and cb > ca):
        out[...] = 0
        return out
    if (ra, rb, ca, cb) != (r0, r0 + h, c0, c0 + w):  # partly outside the file
        out[...] = 0
    dst = out[ra - r0 : rb - r0, ca - c0 : cb - c0]
    f.ds.read(1, window=((ra, rb), (ca, cb)), out=dst)
    if f.nodata is not None and f.nodata != 0:
        dst[dst == np.asarray(f.nodata).astype(out.dtype)] = 0
    return out


def _lies_on(f: _File, grid: Grid, res: float) -> bool:
    a, b, _, d, e, _ = f.transform
    if f.epsg != grid.epsg or b != 0 or d != 0 or abs(a - res) > 1e-9 or abs(e + res) > 1e-9:
        return False
    # the grid's pixel edges fall on the file's pixel edges (measured in grid pixels)
    r, c = _pixel_offset(f, grid, grid.resolution)
    return abs(r - round(r)) < 1e-6 and abs(c - round(c)) < 1e-6


def read_file_window(ref: AssetRef | str, window: Grid, resampling: str = "nearest",
                     dtype=np.uint16, out: np.ndarray | None = None) -> np.ndarray:
    """The ``window`` of one single-band file on the output grid, 0 where the file has no data.

    Parameters
    ----------
    ref
        The file (an :class:`AssetRef`, checked against its item on first open, or a plain href).
    window
        The output pixels (any grid; typically a window of the cube's grid).
    resampling
        Used when the file is not on the window's grid; files at twice the window's resolution
        whose pixels align with it are read natively and repeated 2 x 2 when ``nearest``.
    dtype
        Output dtype.
    out
        Optional ``window.shape`` array of ``dtype`` to read into (no temporary of that size).
    """
    if out is None:
        out = np.empty(window.shape, dtype=dtype)

    def read(f: _File) -> np.ndarray:
        res = window.resolution
        if _lies_on(f, window, res):  # same grid: a plain windowed read
            r, c = _pixel_offset(f, window, res)
            return _direct(f, int(round(r)), int(round(c)), out)
        if resampling == "nearest" and _lies_on(f, window, 2 * res):  # 20 m under a 10 m grid
            r, c = (int(round(v)) for v in _pixel_offset(f, window, res))  # in 10 m pixels
            fr, fc = r // 2, c // 2
            fh = (r + window.height - 1) // 2 - fr + 1
            fw = (c + window.width - 1) // 2 - fc + 1
            coarse = _direct(f, fr, fc, np.empty((fh, fw), dtype=out.dtype))
            dy, dx = r - 2 * fr, c - 2 * fc
            if dy == 0 and dx == 0 and out.shape == (2 * fh, 2 * fw):
                return upsample2(coarse, out=out)
            out[...] = upsample2(coarse)[dy : dy + window.height, dx : dx + window.width]
            return out
        out[...] = _warped(f.ds, window, resampling, out.dtype)
        return out

    return _with_retries(ref, read)


def _warped(ds, window: Grid, resampling: str, dtype) -> np.ndarray:
    """Reproject/resample through GDAL's warper onto ``window`` (0 outside the file)."""
    with rasterio.vrt.WarpedVRT(
        ds, crs=window.crs, transform=window.transform, width=window.width, height=window.height,
        resampling=rasterio.enums.Resampling[resampling], src_nodata=ds.nodata if ds.nodata is not None else 0,
        nodata=0, add_alpha=False,
    ) as vrt:
        return vrt.read(1, out_dtype=dtype)


# ----------------------------------------------------------------------------- blocks


def _as_window(src: CubeSource, window: Grid | tuple[int, int, int, int]) -> Grid:
    if isinstance(window, Grid):
        return window
    r0, r1, c0, c1 = (int(v) for v in window)
    return src.grid.window(r0, c0, r1 - r0, c1 - c0)


def _intersects(ref: AssetRef, window: Grid) -> bool:
    """Whether ``ref`` (as its item places it) overlaps ``window``. A file that does not is still
    checked against its item once per thread: a file whose real georeference disagrees with its
    item (which would place it elsewhere) is an error, never a silently empty band."""
    if ref.epsg != window.epsg:
        return True  # the warper decides
    a = ref.bounds()
    b = window.bounds
    if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
        return True
    if ref.href not in _FILES.checked:
        _with_retries(ref, lambda f: None)
    return False


def _scl_of(src: CubeSource, i: int, window: Grid, out: np.ndarray | None = None) -> np.ndarray:
    ref = src.refs[i][SCL]
    out = np.empty(window.shape, np.uint8) if out is None else out
    if not _intersects(ref, window):
        out[...] = 0
        return out
    return read_file_window(ref, window, "nearest", np.uint8, out=out)


def _band_of(src: CubeSource, i: int, band: str, window: Grid, out: np.ndarray) -> np.ndarray:
    ref = src.refs[i][band]
    if not _intersects(ref, window):
        out[...] = 0
        return out
    resampling = "nearest" if NATIVE_RESOLUTION[band] == 10 else src.resampling_20m
    return read_file_window(ref, window, resampling, np.uint16, out=out)


def _dates(src: CubeSource, dates: Sequence[int] | None) -> list[int]:
    out = list(range(src.n_dates)) if dates is None else [int(d) for d in dates]
    bad = [d for d in out if not 0 <= d < src.n_dates]
    if bad:
        raise IndexError(f"date index {bad[0]} out of range for a cube of {src.n_dates} dates")
    return out


def read_scl(src: CubeSource, window: Grid | tuple[int, int, int, int], dates: Sequence[int] | None = None) -> np.ndarray:
    """``(time, y, x)`` uint8 SCL of ``window`` (a Grid, or ``(row0, row1, col0, col1)`` of the
    cube's grid) on the chosen dates (indices; default all), items of a day merged. Reads SCL
    files only."""
    win = _as_window(src, window)
    ts = _dates(src, dates)
    out = np.empty((len(ts), *win.shape), np.uint8)
    with rasterio.Env(**GDAL_OPTIONS):
        for k, t in enumerate(ts):
            first, *rest = src.groups[t]
            _scl_of(src, first, win, out=out[k])
            filled = out[k] != 0
            for i in rest:
                take_first_valid(None, out[k], filled, None, _scl_of(src, i, win))
    return out


def read_block(
    src: CubeSource,
    window: Grid | tuple[int, int, int, int],
    dates: Sequence[int] | None = None,
    bands: Sequence[str] | None = None,
    *,
    scl: bool = False,
    block_cache: int | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The ``(time, band, y, x)`` uint16 reflectance of ``window`` (0 = nodata, offsets harmonized).

    Parameters
    ----------
    src
        The cube's :class:`CubeSource`.
    window
        A :class:`Grid` window, or ``(row0, row1, col0, col1)`` of the cube's grid (may extend
        beyond it: those pixels are 0).
    dates
        Indices of the output dates to read (default all), in the order wanted.
    bands
        Subset of ``src.bands`` in the order wanted (default all).
    scl
        Also return the ``(time, y, x)`` uint8 SCL of the same dates.
    block_cache
        Bytes of GDAL's decoded-block cache of this process (default ``GDAL_OPTIONS``' 32 MB);
        see :data:`PREDICT_BLOCK_CACHE`.

    Returns
    -------
    ndarray, or (ndarray, ndarray) with ``scl``
    """
    win = _as_window(src, window)
    ts = _dates(src, dates)
    bands = list(src.bands if bands is None else bands)
    missing = [b for b in bands if b not in src.bands]
    if missing:
        raise ValueError(f"band(s) {missing} are not in the cube ({list(src.bands)})")
    out = np.empty((len(ts), len(bands), *win.shape), np.uint16)
    scl_out = np.zeros((len(ts), *win.shape), np.uint8)
    env = GDAL_OPTIONS if block_cache is None else {**GDAL_OPTIONS, "GDAL_CACHEMAX": int(block_cache)}
    with rasterio.Env(**env):
        for k, t in enumerate(ts):
            first, *rest = src.groups[t]
            if scl or rest:  # SCL decides the merge of a day's items
                _scl_of(src, first, win, out=scl_out[k])
            _item_bands(src, first, bands, win, out=out[k])
            filled = scl_out[k] != 0
            for i in rest:
                take_first_valid(out[k], scl_out[k], filled, _item_bands(src, i, bands, win), _scl_of(src, i, win))
    return (out, scl_out) if scl else out


def _item_bands(src: CubeSource, i: int, bands: Sequence[str], win: Grid, out: np.ndarray | None = None) -> np.ndarray:
    """``(band, y, x)`` of item ``i``, its baseline offset harmonized."""
    if out is None:
        out = np.empty((len(bands), *win.shape), np.uint16)
    for k, b in enumerate(bands):
        _band_of(src, i, b, win, out=out[k])
    harmonize_offsets(out[None], [src.offsets[i]], inplace=True)
    return out

