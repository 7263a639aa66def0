"""Pure numpy kernels on Sentinel-2 blocks: offset harmonization, same-day merge, SCL masks.

No dask, xarray or I/O here; the cube builder maps these over chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def harmonize_offsets(s2: np.ndarray, offsets: Sequence[int] | np.ndarray) -> np.ndarray:
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
    out = s2.astype(np.int32) + offsets[:, None, None, None]
    np.maximum(out, 1, out=out)
    out[s2 == 0] = 0
    return out.astype(np.uint16)


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
