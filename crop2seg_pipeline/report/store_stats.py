"""The numbers of a patch-store report, from Dask reductions over the store.

:func:`store_statistics` reads top to bottom:

1. the store's small per-patch arrays (``dates``, ``clear``, ``split``, ``x0``/``y0``/``epsg``...)
   are loaded on the client; the report's date axis is the sorted union of the patches' dates
   (day resolution), and each (patch, date) is *usable* for the profiles when its clear-sky
   fraction ``clear`` is at least ``min_clear`` (the store keeps no per-pixel cloud mask, so a
   usable date counts every valid pixel of the patch; with the default 0.9 at most 10 % of a
   patch's pixels on a used date can be cloudy);
2. one task per patch (:func:`~crop2seg_pipeline.graph.store_report.patch_summary`) reads that
   patch's ``s2``, ``label`` and ``parcel_id`` chunks (one Zarr chunk each) and returns per
   class/date/feature moments, class pixel counts and the patch's (class, parcel id) codes;
3. the results are added up in a tree of ``combine_summaries`` tasks (``split_every`` at a
   time), so a worker holds one patch or a few small summaries, never the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd

from ..errors import ReportError, StoreError
from ..graph.store_report import summary_tree
from ..kernels.profiles import NDVI, decode_parcel_codes, feature_bands, moments_to_mean_std
from ..nomenclature import CLASS_NAMES
from ..store import open_store

log = logging.getLogger(__name__)

__all__ = ["StoreStats", "check_store", "store_statistics", "store_statistics_graph", "DEFAULT_BANDS",
           "DEFAULT_MIN_CLEAR", "SPLIT_ORDER"]

#: Bands profiled besides NDVI by default (red, near infrared, short-wave infrared).
DEFAULT_BANDS: tuple[str, ...] = ("B04", "B08", "B11")
#: A (patch, date) enters the temporal profiles when its clear-sky fraction is at least this.
DEFAULT_MIN_CLEAR = 0.9
SPLIT_ORDER: tuple[str, ...] = ("train", "val", "test")


@dataclass
class StoreStats:
    """Everything the store report shows, as arrays (small: no pixel data).

    Attributes
    ----------
    path : the store
    class_names, splits, features : the axes of the arrays below
    dates : (D,) datetime64[D], sorted union of the patches' dates
    moments : (K, D, F, 3) float64 count / sum / sum of squares per class, date and feature over
        the usable (patch, date) pairs
    pixels : (S, K) int64 labelled pixels per split and class (all pixels, every date irrelevant)
    parcels : (S, K) int64 distinct parcel ids per split and class
    parcels_total : (S,) int64 distinct parcel ids per split
    clear_mean : (D,) mean clear-sky fraction over the patches that have the date
    patches_with_date, patches_usable : (D,) patches having the date, and those at >= min_clear
    patches : per-patch table (tile, row, col, split, epsg, x0, y0)
    min_clear : the usability threshold
    attrs : the store's attributes (normalization, build parameters...)
    """

    path: str
    class_names: tuple[str, ...]
    splits: tuple[str, ...]
    features: tuple[str, ...]
    dates: np.ndarray
    moments: np.ndarray
    pixels: np.ndarray
    parcels: np.ndarray
    parcels_total: np.ndarray
    clear_mean: np.ndarray
    patches_with_date: np.ndarray
    patches_usable: np.ndarray
    patches: pd.DataFrame
    patch_size: int
    resolution: float
    min_clear: float
    attrs: dict = field(default_factory=dict)

    def profile(self, feature: str) -> pd.DataFrame:
        """Long table of one feature: class_id, class_name, date, n_pixels, mean, std."""
        f = self.features.index(feature)
        n, mean, std = moments_to_mean_std(self.moments[:, :, f])
        K, D = n.shape
        return pd.DataFrame({
            "class_id": np.repeat(np.arange(K), D),
            "class_name": np.repeat(np.asarray(self.class_names, dtype=object), D),
            "date": np.tile(self.dates.astype("datetime64[D]").astype(str), K),
            "n_pixels": n.ravel().astype(np.int64),
            "mean": mean.ravel(),
            "std": std.ravel(),
        })

    def class_table(self) -> pd.DataFrame:
        """Pixels and parcels per class (rows) and split (columns ``pixels_<split>``, ``parcels_<split>``)."""
        data: dict[str, Any] = {"class_id": np.arange(len(self.class_names)), "class_name": list(self.class_names)}
        for s, name in enumerate(self.splits):
            data[f"pixels_{name}"] = self.pixels[s]
        for s, name in enumerate(self.splits):
            data[f"parcels_{name}"] = self.parcels[s]
        return pd.DataFrame(data)


# ----------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class _Meta:
    """What the client learns from the store's small arrays before building the graph."""

    dates: np.ndarray  # (D,) datetime64[D]
    date_index: np.ndarray  # (N, T) int, -1 for NaT
    usable: np.ndarray  # (N, T) bool
    clear: np.ndarray  # (N, T) float
    split_ids: np.ndarray  # (N,) int
    splits: tuple[str, ...]
    patches: pd.DataFrame


def _load_meta(ds: Any, min_clear: float) -> _Meta:
    dates = ds["dates"].values.astype("datetime64[D]")
    clear = ds["clear"].values.astype(np.float64)
    valid = ~np.isnat(dates)
    uniq = np.unique(dates[valid])
    date_index = np.full(dates.shape, -1, dtype=np.int64)
    date_index[valid] = np.searchsorted(uniq, dates[valid])
    usable = valid & (np.nan_to_num(clear, nan=0.0) >= min_clear)
    coords = {k: ds[k].values for k in ("tile", "row", "col", "split", "epsg", "x0", "y0") if k in ds.coords}
    patches = pd.DataFrame({k: ([str(x) for x in v] if v.dtype.kind in "OUT" else v) for k, v in coords.items()})
    split_names = [str(s) for s in patches["split"]]
    found = set(split_names)
    splits = tuple([s for s in SPLIT_ORDER if s in found] + sorted(found - set(SPLIT_ORDER)))
    split_ids = np.array([splits.index(s) for s in split_names], dtype=np.int64)
    return _Meta(uniq, date_index, usable, clear, split_ids, splits, patches)


def _check_features(ds: Any, bands: Sequence[str]) -> tuple[tuple[str, ...], dict[str, int]]:
    store_bands = [str(b) for b in ds["band"].values]
    features = (NDVI, *[b for b in bands if b != NDVI])
    need = sorted({b for f in features for b in feature_bands(f)})
    missing = [b for b in need if b not in store_bands]
    if missing:
        raise ReportError(
            f"the store has no band(s) {missing} (it has {store_bands}); choose --bands among those"
        )
    return features, {b: store_bands.index(b) for b in need}


def _open(path: str | Path) -> Any:
    try:
        return open_store(path)
    except StoreError as e:
        raise ReportError(str(e)) from e


def check_store(path: str | Path, bands: Sequence[str] = DEFAULT_BANDS) -> None:
    """Raise :class:`ReportError` unless ``path`` is a complete store holding the bands to profile."""
    _check_features(_open(path), bands)


def store_statistics_graph(
    path: str | Path, *, min_clear: float = DEFAULT_MIN_CLEAR, bands: Sequence[str] = DEFAULT_BANDS,
    patches: Sequence[int] | None = None, split_every: int = 8,
) -> tuple[Any, Any, _Meta, tuple[str, ...]]:
    """The lazy reduction: ``(delayed total summary, dataset, meta, features)``; nothing is computed."""
    if not 0.0 <= float(min_clear) <= 1.0:
        raise ReportError(f"min_clear must be in [0, 1], got {min_clear}")
    if split_every < 2:
        raise ReportError(f"split_every must be >= 2, got {split_every}")
    ds = _open(path)
    if patches is not None:
        idx = np.asarray(list(patches), dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= ds.sizes["patch"]:
            raise ReportError(f"patches must be indices in [0, {ds.sizes['patch']}), got {list(idx)[:10]}")
        ds = ds.isel(patch=idx)
    if ds.sizes["patch"] == 0:
        raise ReportError(f"{path} holds no patch: nothing to report")
    features, band_index = _check_features(ds, bands)
    meta = _load_meta(ds, float(min_clear))
    K, D, S = len(ds.attrs.get("class_names") or CLASS_NAMES), len(meta.dates), len(meta.splits)
    if ds["s2"].data.chunks[0] != (1,) * ds.sizes["patch"]:
        ds = ds.chunk({"patch": 1})  # a store is written one patch per chunk; keep tasks at one patch
    s2_blocks = ds["s2"].data.to_delayed().ravel()
    label_blocks = ds["label"].data.to_delayed().ravel()
    pid_blocks = ds["parcel_id"].data.to_delayed().ravel()
    total = summary_tree(
        s2_blocks, label_blocks, pid_blocks, np.where(meta.usable, meta.date_index, -1), meta.split_ids,
        n_splits=S, n_dates=D, n_classes=K, band_index=band_index, features=features,
        name=dask.base.tokenize(str(path), min_clear, features, patches), split_every=split_every,
    )
    return total, ds, meta, features


def store_statistics(
    path: str | Path, *, min_clear: float = DEFAULT_MIN_CLEAR, bands: Sequence[str] = DEFAULT_BANDS,
    patches: Sequence[int] | None = None, client: Any = None, split_every: int = 8,
    progress: Callable[[str], None] | None = None,
) -> StoreStats:
    """Compute the numbers of a store report with one pass over the store's patches.

    Parameters
    ----------
    path
        A complete patch store.
    min_clear
        A (patch, date) enters the temporal profiles when its clear-sky fraction is >= this.
    bands
        Bands profiled besides NDVI.
    patches
        Only these patch indices (default: all).
    client
        A ``distributed.Client``; None computes on the current default Dask scheduler.
    split_every
        Summaries added up per reduction task.
    """
    say = progress or log.info
    total, ds, meta, features = store_statistics_graph(path, min_clear=min_clear, bands=bands, patches=patches,
                                                       split_every=split_every)
    n = ds.sizes["patch"]
    say(f"report: reducing {n} patches x {len(meta.dates)} dates over {path}")
    result = client.compute(total).result() if client is not None else total.compute()
    K = result["moments"].shape[0]
    S = len(meta.splits)
    parcels = np.zeros((S, K), dtype=np.int64)
    parcels_total = np.zeros(S, dtype=np.int64)
    for s, codes in result["parcels"].items():
        cls, pid = decode_parcel_codes(codes)
        parcels[s] = np.bincount(cls, minlength=K)[:K]
        parcels_total[s] = np.unique(pid).size
    D = len(meta.dates)
    with_date = np.zeros(D, dtype=np.int64)
    usable = np.zeros(D, dtype=np.int64)
    clear_sum = np.zeros(D, dtype=np.float64)
    has = meta.date_index >= 0
    np.add.at(with_date, meta.date_index[has], 1)
    np.add.at(usable, meta.date_index[has & meta.usable], 1)
    np.add.at(clear_sum, meta.date_index[has], np.nan_to_num(meta.clear[has], nan=0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        clear_mean = np.where(with_date > 0, clear_sum / np.maximum(with_date, 1), np.nan)
    attrs = dict(ds.attrs)
    return StoreStats(
        path=str(path), class_names=tuple(attrs.get("class_names") or CLASS_NAMES[:K]), splits=meta.splits,
        features=features, dates=meta.dates, moments=result["moments"], pixels=result["pixels"], parcels=parcels,
        parcels_total=parcels_total, clear_mean=clear_mean, patches_with_date=with_date, patches_usable=usable,
        patches=meta.patches, patch_size=int(attrs.get("patch_size", ds.sizes["y"])),
        resolution=float(attrs.get("resolution", 10.0)), min_clear=float(min_clear), attrs=attrs,
    )
