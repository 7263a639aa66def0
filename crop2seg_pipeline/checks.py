"""Argument checks shared by the commands and the Python API, run before anything starts.

Each check raises :class:`~crop2seg_pipeline.errors.Crop2SegError` naming the option and what
to give instead; none reads data or starts anything. The commands call them (through the
library's own ``validate``/``check_*`` functions) before a cluster starts or a file is touched.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from .errors import Crop2SegError

__all__ = [
    "check_date",
    "check_dates",
    "check_crs",
    "check_target_crs",
    "check_bbox",
    "check_fraction",
    "check_percent",
    "check_split",
    "check_patch_size",
    "check_positive",
]


def check_date(value: Any, option: str) -> dt.date | None:
    """``value`` (``YYYY-MM-DD``, an ISO datetime, a date) as a date; None stays None."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    try:
        return dt.date.fromisoformat(text)
    except ValueError as e:
        reason = str(e)
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        pass
    raise Crop2SegError(f"{option}: expected a date YYYY-MM-DD, got {text!r} ({reason})")


def check_dates(start: Any, end: Any) -> tuple[dt.date | None, dt.date | None]:
    """``--start`` and ``--end`` as dates, the end not before the start."""
    d0, d1 = check_date(start, "--start"), check_date(end, "--end")
    if d0 is not None and d1 is not None and d1 < d0:
        raise Crop2SegError(f"--end {d1} is before --start {d0}; give the first date as --start")
    return d0, d1


def check_crs(value: Any, option: str):
    """A known CRS (``EPSG:4326``, ``4326``, a WKT or PROJ string) as a ``pyproj.CRS``."""
    import pyproj

    try:
        return pyproj.CRS.from_user_input(int(value) if str(value).isdigit() else value)
    except (pyproj.exceptions.CRSError, TypeError, ValueError) as e:
        reason = str(e).split(": (", 1)[0]
        raise Crop2SegError(
            f"{option}: unknown coordinate reference system {value!r} ({reason}); give an EPSG code such as "
            "EPSG:4326 (lon/lat) or EPSG:32633 (UTM 33N)"
        ) from None


def check_target_crs(value: Any, option: str = "--epsg") -> int | None:
    """The EPSG code of an output grid: a projected CRS in metres (Sentinel-2's 10 m pixels)."""
    if value is None:
        return None
    crs = check_crs(value, option)
    epsg = crs.to_epsg()
    unit = crs.axis_info[0].unit_name if crs.axis_info else ""
    if epsg is None or not crs.is_projected or unit not in ("metre", "meter"):
        raise Crop2SegError(
            f"{option} {value!r}: the output grid needs a projected CRS in metres with an EPSG code "
            "(e.g. 32633 for UTM 33N, 3035 for LAEA Europe)"
        )
    return int(epsg)


def check_bbox(bbox: Sequence[float] | None, crs: Any = "EPSG:4326", *, antimeridian: bool = False,
               option: str = "--bbox") -> tuple[float, float, float, float] | None:
    """A ``(minx, miny, maxx, maxy)`` box in ``crs``: four finite numbers, min below max on both
    axes, lon/lat within range. ``minx > maxx`` only with ``antimeridian`` (lon/lat only): a box
    crossing the 180th meridian."""
    if bbox is None:
        if antimeridian:
            raise Crop2SegError("--antimeridian needs a --bbox (in lon/lat) that crosses the 180th meridian")
        return None
    crs_opt = option + "-crs"
    src = check_crs(crs, crs_opt)
    try:
        vals = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise Crop2SegError(f"{option}: expected 4 numbers minx,miny,maxx,maxy, got {bbox!r}") from None
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise Crop2SegError(f"{option}: expected 4 finite numbers minx,miny,maxx,maxy, got {bbox!r}")
    minx, miny, maxx, maxy = vals
    if miny >= maxy:
        raise Crop2SegError(f"{option}: miny {miny:g} is not below maxy {maxy:g}; the order is minx,miny,maxx,maxy")
    if src.is_geographic:
        if not (-180 <= minx <= 180 and -180 <= maxx <= 180):
            raise Crop2SegError(f"{option}: longitudes must be within -180..180, got {minx:g} and {maxx:g}")
        if not (-90 <= miny <= 90 and -90 <= maxy <= 90):
            raise Crop2SegError(f"{option}: latitudes must be within -90..90, got {miny:g} and {maxy:g}")
    if antimeridian:
        if not src.is_geographic:
            raise Crop2SegError(f"--antimeridian: the bbox must be in lon/lat ({crs_opt} EPSG:4326)")
        if minx <= maxx:
            raise Crop2SegError(
                f"--antimeridian: the bbox {minx:g}..{maxx:g} does not cross the 180th meridian "
                "(minx must be east of it, maxx west of it, e.g. 179.5,-17,-179.5,-16); drop --antimeridian"
            )
    elif minx >= maxx:
        hint = (" A box crossing the 180th meridian needs --antimeridian." if src.is_geographic and minx > maxx else "")
        raise Crop2SegError(f"{option}: minx {minx:g} is not below maxx {maxx:g}; the order is minx,miny,maxx,maxy.{hint}")
    if src.is_projected and all(abs(v) <= 180 for v in vals):
        raise Crop2SegError(
            f"{option} {vals} looks like lon/lat degrees but {crs_opt} is {src.name} (in {src.axis_info[0].unit_name}s); "
            f"pass {crs_opt} EPSG:4326 for lon/lat"
        )
    return vals  # type: ignore[return-value]


def check_fraction(value: float | None, option: str) -> float | None:
    """A share in 0..1 (None stays None)."""
    return _in_range(value, option, 1.0, "a fraction")


def check_percent(value: float | None, option: str) -> float | None:
    """A percentage in 0..100 (None stays None)."""
    return _in_range(value, option, 100.0, "a percentage")


def _in_range(value: float | None, option: str, hi: float, what: str) -> float | None:
    if value is None:
        return None
    v = float(value)
    if not (0.0 <= v <= hi):
        raise Crop2SegError(f"{option} is {what} in 0..{hi:g}, got {value:g}")
    return v


def check_split(split: Sequence[float]) -> tuple[float, float, float]:
    """train,val,test shares: each in 0..1, summing to 1, and a train share above 0."""
    vals = tuple(float(v) for v in split)
    if len(vals) != 3:
        raise Crop2SegError(f"--split takes three shares train,val,test, got {len(vals)} values")
    bad = [v for v in vals if not (0.0 <= v <= 1.0) or not math.isfinite(v)]
    if bad:
        raise Crop2SegError(f"--split shares are each in 0..1, got {','.join(f'{v:g}' for v in vals)}")
    total = sum(vals)
    if abs(total - 1.0) > 1e-6:
        raise Crop2SegError(
            f"--split shares must sum to 1, got {' + '.join(f'{v:g}' for v in vals)} = {total:g} "
            "(e.g. 0.7,0.15,0.15)"
        )
    if vals[0] <= 0:
        raise Crop2SegError(
            f"--split {','.join(f'{v:g}' for v in vals)} leaves the train split empty: the normalization "
            "statistics come from the train split and training needs it; give it a share above 0"
        )
    return vals  # type: ignore[return-value]


def check_patch_size(patch_size: int) -> int:
    """A patch side every model architecture can take (a multiple of their common divisor)."""
    from .models.presets import patch_multiple

    m = patch_multiple()
    p = int(patch_size)
    if p < m or p % m:
        lo = max(m, p // m * m)
        raise Crop2SegError(
            f"--patch-size {p}: the models need a multiple of {m} px (their encoders halve the patch "
            f"{m.bit_length() - 1} times); use e.g. {lo} or {lo + m}"
        )
    return p


def check_positive(value: int | None, option: str) -> int | None:
    """An integer >= 1 (None stays None)."""
    if value is None:
        return None
    if int(value) < 1:
        raise Crop2SegError(f"{option} must be at least 1, got {value}")
    return int(value)
