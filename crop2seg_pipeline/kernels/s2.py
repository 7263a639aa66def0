"""Pure numpy kernels on Sentinel-2 blocks: offset harmonization, same-day merge, SCL masks.

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


def upsample2(a: np.ndarray) -> np.ndarray:
    """Repeat each pixel 2 x 2 along the last two axes (20 m -> 10 m nearest, exact)."""
    out = np.empty(a.shape[:-2] + (2 * a.shape[-2], 2 * a.shape[-1]), dtype=a.dtype)
    for i in range(2):
        for j in range(2):
            out[..., i::2, j::2] = a
    return out


def assemble_bands(
    a10: np.ndarray | None,
    a20: np.ndarray | None,
    *,
    n_bands: int,
    pos10: Sequence[int],
    pos20: Sequence[int],
    offsets: Sequence[int] | np.ndarray,
    upsample20: bool,
) -> np.ndarray:
    """Put 10 m and 20 m band blocks into one (time, band, y, x) block and harmonize offsets.

    Parameters
    ----------
    a10 : (time, n10, y, x) uint16 or None
    a20 : (time, n20, y, x) uint16, or (time, n20, y/2, x/2) when ``upsample20``; or None
    pos10, pos20 : positions of those bands on the output band axis
    offsets : (time,) DN offsets (see :func:`harmonize_offsets`)
    """
    ref = a10 if a10 is not None else a20
    t = ref.shape[0]
    h, w = ref.shape[-2:]
    if a10 is None and upsample20:
        h, w = 2 * h, 2 * w
    out = np.empty((t, n_bands, h, w), dtype=np.uint16)
    for k, p in enumerate(pos10):  # basic slicing only: no fancy-index temporaries
        out[:, p] = a10[:, k]
    for k, p in enumerate(pos20):
        if upsample20:
            for i in range(2):
                for j in range(2):
                    out[:, p, i::2, j::2] = a20[:, k]
        else:
            out[:, p] = a20[:, k]
    return harmonize_offsets(out, offsets, inplace=True)


def merge_first_valid(
    s2: np.ndarray, scl: np.ndarray, groups: Sequence[Sequence[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Merge dates that belong together (same day), taking each pixel from the first item with data.

    Parameters
    ----------
    s2 : ndarray (time, band, y, x)
    scl : ndarray (time, y, x)
        SCL of the same items; ``0`` (no data) marks pixels an item does not cover.
    groups : sequence of index lists
        Indices along ``time`` of the items merged into each output date, in priority order.

    Returns
    -------
    (s2, scl) with ``len(groups)`` dates.
    """
    out_s2 = np.zeros((len(groups),) + s2.shape[1:], dtype=s2.dtype)
    out_scl = np.zeros((len(groups),) + scl.shape[1:], dtype=scl.dtype)
    for k, idx in enumerate(groups):
        filled = np.zeros(scl.shape[1:], dtype=bool)
        for i in idx:
            has = (scl[i] != 0) | (s2[i] != 0).any(axis=0)
            take = has & ~filled
            out_scl[k][take] = scl[i][take]
            out_s2[k][:, take] = s2[i][:, take]
            filled |= take
    return out_s2, out_scl


def clear_mask(scl: np.ndarray, unclear: Sequence[int]) -> np.ndarray:
    """True where the SCL class is not in ``unclear`` (clear sky, valid data)."""
    return ~np.isin(scl, np.asarray(list(unclear), dtype=scl.dtype))


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
    r = red.astype(np.float64)
    n = nir.astype(np.float64)
    use = clear & (red > 0) & (nir > 0) & inside[None]
    with np.errstate(invalid="ignore", divide="ignore"):
        v = (n - r) / (n + r)
    count = use.sum(axis=(1, 2)).astype(np.int64)
    total = np.where(use, v, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean, count
