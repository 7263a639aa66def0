"""Pure numpy kernels of the dataset report: per-class temporal moments, class and parcel counts.

No dask, xarray or I/O: the report maps these over the patches of a store (one patch per task)
and adds the results up.

Features are named ``"NDVI"`` or a band name. NDVI is ``(B08 - B04) / (B08 + B04)`` on the
stored DN (the baseline offset is already harmonized, so DN ratios are reflectance ratios); a
band's value is its reflectance, ``DN / 10000``. A pixel counts for a feature when every band
the feature reads is > 0 (0 is nodata/padding in the store).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .s2 import ndvi

__all__ = [
    "NDVI",
    "REFLECTANCE_SCALE",
    "feature_bands",
    "feature_values",
    "class_date_moments",
    "moments_to_mean_std",
    "class_parcel_codes",
    "decode_parcel_codes",
]

NDVI = "NDVI"
#: Stored DN / this = surface reflectance (L2A quantification value; offset already removed).
REFLECTANCE_SCALE = 10000.0


def feature_bands(feature: str) -> tuple[str, ...]:
    """The bands a feature reads: ``("B04", "B08")`` for NDVI, ``(feature,)`` for a band."""
    return ("B04", "B08") if feature == NDVI else (feature,)


def feature_values(s2: np.ndarray, band_index: Mapping[str, int], feature: str) -> tuple[np.ndarray, np.ndarray]:
    """Values and validity of one feature on a (time, band, y, x) uint16 block.

    Returns
    -------
    values : (time, y, x) float64 (0 where invalid)
    valid : (time, y, x) bool, every band the feature reads > 0
    """
    if feature == NDVI:
        return ndvi(s2[:, band_index["B04"]], s2[:, band_index["B08"]])
    dn = s2[:, band_index[feature]]
    valid = dn > 0
    return dn.astype(np.float64) / REFLECTANCE_SCALE, valid


def class_date_moments(
    s2: np.ndarray,
    label: np.ndarray,
    date_index: np.ndarray,
    n_dates: int,
    n_classes: int,
    band_index: Mapping[str, int],
    features: Sequence[str],
) -> np.ndarray:
    """Per class, date and feature: pixel count, sum and sum of squares over one patch.

    Parameters
    ----------
    s2 : (time, band, y, x) uint16
        One patch's reflectance DN.
    label : (y, x) uint8
        Its class ids (values >= ``n_classes`` are ignored).
    date_index : (time,) int
        Where each of the patch's dates goes in the report's date axis; -1 leaves the date out
        (padding, or a date not clear enough).
    n_dates, n_classes
        Sizes of the date and class axes of the result.
    band_index
        Band name -> position on the band axis of ``s2``.
    features
        ``"NDVI"`` and/or band names.

    Returns
    -------
    (n_classes, n_dates, len(features), 3) float64
        ``[..., 0]`` pixel count, ``[..., 1]`` sum, ``[..., 2]`` sum of squares. Moments of
        several patches add up.
    """
    K, D, F = n_classes, n_dates, len(features)
    out = np.zeros((K, D, F, 3), dtype=np.float64)
    date_index = np.asarray(date_index, dtype=np.int64)
    keep_t = np.flatnonzero(date_index >= 0)
    if keep_t.size == 0:
        return out
    lab = label.astype(np.int64)
    in_range = lab < K
    # key of each (kept date, pixel): class * D + date, shape (t, y, x)
    key = lab[None] * D + date_index[keep_t][:, None, None]
    block = s2[keep_t]
    for f, feature in enumerate(features):
        values, valid = feature_values(block, band_index, feature)
        m = valid & in_range[None]
        k = key[m]
        v = values[m]
        out[:, :, f, 0] = np.bincount(k, minlength=K * D).reshape(K, D)
        out[:, :, f, 1] = np.bincount(k, weights=v, minlength=K * D).reshape(K, D)
        out[:, :, f, 2] = np.bincount(k, weights=v * v, minlength=K * D).reshape(K, D)
    return out


def moments_to_mean_std(moments: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean, std) from summed moments ``[..., 3]``; NaN where the count is 0.

    ``std`` is the population standard deviation (ddof 0) of the pixels counted.
    """
    n = moments[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, moments[..., 1] / n, np.nan)
        var = np.where(n > 0, moments[..., 2] / n - mean * mean, np.nan)
    return n, mean, np.sqrt(np.clip(var, 0.0, None))


def class_parcel_codes(label: np.ndarray, parcel_id: np.ndarray) -> np.ndarray:
    """Sorted unique ``class << 32 | parcel id`` codes of the parcels (id > 0) in a patch.

    Codes of several patches are merged with ``np.union1d``; :func:`decode_parcel_codes` splits
    them back. A parcel cut by patch borders is counted once however many patches hold it.
    """
    inside = parcel_id > 0
    if not inside.any():
        return np.empty(0, dtype=np.int64)
    codes = (label[inside].astype(np.int64) << 32) | parcel_id[inside].astype(np.int64)
    return np.unique(codes)


def decode_parcel_codes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class ids, parcel ids) of codes from :func:`class_parcel_codes`."""
    codes = np.asarray(codes, dtype=np.int64)
    return codes >> 32, codes & 0xFFFFFFFF
