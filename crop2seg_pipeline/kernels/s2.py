"""Pure numpy kernels on Sentinel-2 blocks: offset harmonization, 2 x 2 repeat, same-day merge, SCL masks.

No dask, xarray or I/O here; the cube builder maps these over chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def harmonize_offsets(s2: np.ndarray, offsets: Sequence[int] | np.ndarray, inplace: bool = False) -> np.ndarray:
    """Add a per-date DN offset to reflectance, keeping 0 as nodata.

    Parameters
    ----------
    s2 : ndarray (time, band, y, x) uint16
        DNs, 0 = nodata.
    offsets : (time,) ints
        DN offset to add per date (``-1000`` for processing baseline >= 04.00, else 0).

    Returns
    -------
    ndarray (time, band, y, x) uint16
        ``max(DN + offset, 1)`` where ``DN > 0``, 0 elsewhere. Valid pixels never become 0, so
        very dark pixels of baseline >= 04.00 (negative reflectance) are clipped to DN 1.
    """
    offsets = np.asarray(offsets, dtype=np.int32)
    if not offsets.any():
        return s2
    out = s2 if inplace else s2.copy()
    for t, off in enumerate(offsets.tolist()):
        if off == 0:
            continue
        v = out[t]
        nodata = v == 0
        if off < 0:  # the usual case (-1000): clip, subtract in uint16, restore nodata
            np.maximum(v, np.uint16(1 - off), out=v)
            v -= np.uint16(-off)
        else:
            np.minimum(v, np.uint16(np.iinfo(np.uint16).max - off), out=v)
            v += np.uint16(off)
        v[nodata] = 0
    return out


def upsample2(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Repeat each pixel 2 x 2 along the last two axes (20 m -> 10 m nearest, exact), into ``out``
    (shape ``(..., 2h, 2w)``) when given."""
    if out is None:
        out = np.empty(a.shape[:-2] + (2 * a.shape[-2], 2 * a.shape[-1]), dtype=a.dtype)
    for i in range(2):
        for j in range(2):
            out[..., i::2, j::2] = a
    return out


def take_first_valid(
    dst_s2: np.ndarray | None,
    dst_scl: np.ndarray,
    filled: np.ndarray,
    s2: np.ndarray | None,
    scl: np.ndarray,
) -> None:
    """Merge one more item of a day into the day's arrays, in place: first valid wins.

    An item has data wherever its SCL is not 0 (Sen2Cor's NO_DATA), so the merge is decided by
    SCL alone and an SCL-only read merges exactly as a full read.

    Parameters
    ----------
    dst_s2 : (band, y, x) or None
        The day's reflectance so far (None when only SCL is merged).
    dst_scl : (y, x)
        The day's SCL so far.
    filled : (y, x) bool
        Pixels already taken from an earlier item; updated.
    s2 : (band, y, x) or None
        The item's reflectance.
    scl : (y, x)
        The item's SCL.
    """
    take = (scl != 0) & ~filled
    dst_scl[take] = scl[take]
    if dst_s2 is not None:
        dst_s2[:, take] = s2[:, take]
    filled |= take


def merge_first_valid(
    s2: np.ndarray | None, scl: np.ndarray, groups: Sequence[Sequence[int]]
) -> tuple[np.ndarray | None, np.ndarray]:
    """Merge dates that belong together (same day), taking each pixel from the first item with data.

    Parameters
    ----------
    s2 : ndarray (time, band, y, x) or None
    scl : ndarray (time, y, x)
        SCL of the same items; ``0`` (no data) marks pixels an item does not cover.
    groups : sequence of index lists
        Indices along ``time`` of the items merged into each output date, in priority order.

    Returns
    -------
    (s2, scl) with ``len(groups)`` dates (``s2`` None when given None). The first item of a day
    gives every pixel no later item takes (see :func:`take_first_valid`).
    """
    out_s2 = None if s2 is None else np.empty((len(groups),) + s2.shape[1:], dtype=s2.dtype)
    out_scl = np.empty((len(groups),) + scl.shape[1:], dtype=scl.dtype)
    for k, idx in enumerate(groups):
        first, rest = idx[0], idx[1:]
        out_scl[k] = scl[first]
        if out_s2 is not None:
            out_s2[k] = s2[first]
        filled = scl[first] != 0
        for i in rest:
            take_first_valid(None if out_s2 is None else out_s2[k], out_scl[k], filled,
                             None if s2 is None else s2[i], scl[i])
    return out_s2, out_scl


def clear_mask(scl: np.ndarray, unclear: Sequence[int]) -> np.ndarray:
    """True where the SCL class is not in ``unclear`` (clear sky, valid data).

    SCL classes are 0..11: then the clear classes are the bits of one 16-bit word, and a pixel
    is clear where ``word >> scl`` is odd (one vectorized shift: 7x ``np.isin`` on a 24-date
    1024 px block). Other uint8/uint16 values index a lookup table of every possible value
    (3x ``np.isin``).
    """
    scl = np.asarray(scl)
    if scl.dtype in (np.uint8, np.uint16) and scl.size and int(scl.max()) < 16:
        word = np.uint16(sum(1 << v for v in range(16) if v not in {int(u) for u in unclear}))
        return (np.right_shift(word, scl, dtype=np.uint16) & np.uint16(1)).astype(bool)
    if scl.dtype in (np.uint8, np.uint16):
        lut = np.ones(np.iinfo(scl.dtype).max + 1, bool)
        lut[[int(v) for v in unclear if 0 <= int(v) < lut.size]] = False
        return np.take(lut, scl)
    return ~np.isin(scl, np.asarray(list(unclear), dtype=scl.dtype))


def ndvi(red: np.ndarray, nir: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NDVI ``(nir - red) / (nir + red)`` of DN arrays (baseline offset harmonized, so DN ratios
    are reflectance ratios) and where it is valid (both bands > 0: 0 is nodata).

    Returns
    -------
    (values, valid)
        float64 NDVI (0 where invalid) and the bool validity, both of the inputs' shape.
    """
    r = red.astype(np.float64)
    n = nir.astype(np.float64)
    valid = (red > 0) & (nir > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, (n - r) / (n + r), 0.0), valid


def ndvi_series(red: np.ndarray, nir: np.ndarray, clear: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean NDVI per date over the pixels of a region that are clear and valid on that date.

    Parameters
    ----------
    red, nir : (time, y, x) reflectance DN (B04, B08), 0 = nodata
    clear : (time, y, x) bool clear-sky mask
    inside : (y, x) bool, the region (e.g. a parcel's pixels)

    Returns
    -------
    (mean, count)
        (time,) float64 mean NDVI (NaN on dates with no usable pixel) and (time,) int64 pixel counts.
    """
    v, valid = ndvi(red, nir)
    use = clear & valid & inside[None]
    count = use.sum(axis=(1, 2)).astype(np.int64)
    total = np.where(use, v, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean, count
