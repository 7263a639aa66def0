"""A torch ``Dataset`` over a Zarr patch store: reads one patch at a time, never the whole store.

>>> from crop2seg_pipeline.dataset import PatchDataset, collate_patches
>>> ds = PatchDataset("crop2seg-demo/patches.zarr", split="train")
>>> loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_patches)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from .errors import StoreError
from .kernels.dates import DEFAULT_DATE_ENCODING, check_date_encoding, date_positions
from .kernels.windows import preprocess
from . import storage
from .store import open_store


def default_reference_date(first: np.datetime64) -> dt.date:
    """September 1st on or before ``first`` (the start of a crop season, as PASTIS/Crop2Seg)."""
    d = first.astype("datetime64[D]").item()
    year = d.year if d >= dt.date(d.year, 9, 1) else d.year - 1
    return dt.date(year, 9, 1)


class PatchDataset(torch.utils.data.Dataset):
    """Patches of a store as normalized tensors with their acquisition dates.

    Parameters
    ----------
    store
        Path or object-store URL (``s3://bucket/patches.zarr``) of a complete patch store.
    split
        ``"train"``, ``"val"``, ``"test"``, a list of them, or None for all patches.
    normalize
        Standardize bands with ``mean``/``std`` (default: the store's train statistics).
    mean, std
        Per-band statistics to use instead of the store's (e.g. those of a checkpoint).
    reference_date
        Dates are given as days since this date (default: September 1st before the first date).
    date_encoding
        ``"days"`` (days since ``reference_date``) or ``"doy"`` (day of the year): how
        ``positions`` are computed (:func:`crop2seg_pipeline.kernels.dates.date_positions`).
    tiles, exclude_tiles
        Keep only the patches of these tiles / drop the patches of these tiles (on top of
        ``split``), e.g. to hold whole tiles out of training for validation.
    transform
        Optional callable applied to each sample dict (augmentation) *before* ``positions`` are
        computed: it may change the per-date entries ``s2``, ``dates`` and ``clear``
        (:mod:`crop2seg_pipeline.augment`).
    cache
        With a store URL: a local folder where the chunks read are kept (fsspec's
        ``simplecache``), so later epochs read them from disk instead of the object store.

    Each item is a dict: ``s2`` (T, band, y, x) float32, ``dates`` (T,) int64 days since
    1970-01-01, ``positions`` (T,) float32 (from ``dates``, the reference date and the date
    encoding), ``label`` (y, x) int64, ``parcel_id`` (y, x) int64, ``clear`` (T,) float32 and
    ``index`` (int). T is the patch's own number of dates (padding dropped).
    """

    def __init__(
        self,
        store: str | Path,
        split: str | Sequence[str] | None = "train",
        *,
        normalize: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        reference_date: str | dt.date | None = None,
        date_encoding: str = DEFAULT_DATE_ENCODING,
        tiles: Sequence[str] | None = None,
        exclude_tiles: Sequence[str] | None = None,
        transform: Callable[[dict], dict] | None = None,
        cache: str | Path | None = None,
    ) -> None:
        ds = open_store(store)
        self.cache = None if cache is None else str(cache)
        self.path = str(store)
        self.tiles = np.array(ds["tile"].values.tolist(), dtype=str)
        self.indices = np.flatnonzero(select_patches(store, np.array(ds["split"].values.tolist(), dtype=str),
                                                     self.tiles, split, tiles, exclude_tiles))
        self.dates = ds["dates"].values  # (patch, time) datetime64, small
        self.clear = ds["clear"].values.astype(np.float32)
        norm = ds.attrs.get("normalization", {}).get("train", {})
        self.mean = np.asarray(mean if mean is not None else norm.get("mean"), np.float32)
        self.std = np.asarray(std if std is not None else norm.get("std"), np.float32)
        if normalize and (self.mean.ndim != 1 or self.std.ndim != 1):
            raise StoreError(f"{store} has no normalization statistics; pass mean= and std=")
        self.std = np.where(self.std > 0, self.std, 1.0).astype(np.float32)
        self.normalize = normalize
        first = self.dates[~np.isnat(self.dates)].min()
        self.reference_date = (
            dt.date.fromisoformat(str(reference_date)) if reference_date else default_reference_date(first)
        )
        try:
            self.date_encoding = check_date_encoding(date_encoding)
        except ValueError as e:
            raise StoreError(str(e)) from None
        self.bands = [str(b) for b in ds["band"].values.tolist()]
        self.class_names = list(ds.attrs.get("class_names", []))
        self.transform = transform
        self._arrays: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _open(self) -> dict[str, Any]:
        if self._arrays is None:  # opened lazily, once per DataLoader worker process
            g = zarr.open_group(storage.zarr_store(self.path, read_only=True, cache=self.cache), mode="r",
                                zarr_format=3)
            self._arrays = {k: g[k] for k in ("s2", "label", "parcel_id")}
        return self._arrays

    def positions(self, index: int) -> np.ndarray:
        """Positions of store patch ``index``'s dates (padding dropped), without augmentation."""
        d = self.dates[index]
        return date_positions(d[~np.isnat(d)], self.reference_date, self.date_encoding)

    def __getitem__(self, i: int) -> dict:
        idx = int(self.indices[i])
        arr = self._open()
        d = self.dates[idx]
        t = int((~np.isnat(d)).sum())  # padding is at the end
        raw = np.asarray(arr["s2"][idx, :t])
        # the one preprocessing code path, shared with crop2seg-predict
        x = preprocess(raw, self.mean, self.std) if self.normalize else raw.astype(np.float32)
        sample = {
            "s2": torch.from_numpy(x),
            "dates": torch.from_numpy(d[:t].astype("datetime64[D]").astype(np.int64)),
            "label": torch.from_numpy(np.asarray(arr["label"][idx], dtype=np.int64)),
            "parcel_id": torch.from_numpy(np.asarray(arr["parcel_id"][idx], dtype=np.int64)),
            "clear": torch.from_numpy(self.clear[idx, :t].copy()),
            "index": idx,
        }
        return with_positions(self.transform(sample) if self.transform else sample, self.reference_date,
                              self.date_encoding)


def with_positions(sample: dict, reference_date: dt.date | str, date_encoding: str) -> dict:
    """``sample`` with ``positions`` computed from its (possibly augmented) ``dates``."""
    days = np.asarray(sample["dates"], dtype=np.int64).astype("datetime64[D]")
    sample["positions"] = torch.from_numpy(date_positions(days, reference_date, date_encoding))
    return sample


def select_patches(store: Any, splits: np.ndarray, tiles: np.ndarray, split: str | Sequence[str] | None,
                   only_tiles: Sequence[str] | None = None, exclude_tiles: Sequence[str] | None = None) -> np.ndarray:
    """Boolean mask of the patches in ``split`` (None: all), restricted to / excluding tiles."""
    keep = np.ones(len(splits), bool)
    if split is not None:
        wanted = [split] if isinstance(split, str) else list(split)
        keep &= np.isin(splits, wanted)
        if not keep.any():
            raise StoreError(f"{store} has no patch in split {split!r} (splits: {sorted(set(splits.tolist()))})")
    for name, given in (("tiles", only_tiles), ("exclude_tiles", exclude_tiles)):
        if given is None:
            continue
        unknown = sorted(set(given) - set(tiles.tolist()))
        if unknown:
            raise StoreError(f"{store} has no tile {', '.join(unknown)} (its tiles: {', '.join(sorted(set(tiles.tolist())))})")
        inside = np.isin(tiles, list(given))
        keep &= inside if name == "tiles" else ~inside
    if not keep.any():
        raise StoreError(f"{store} has no patch in split {split!r} of tiles "
                         f"{'all' if only_tiles is None else ','.join(only_tiles)}"
                         + (f" outside {','.join(exclude_tiles)}" if exclude_tiles else ""))
    return keep


def collate_patches(samples: Sequence[dict], pad_value: float = 0.0) -> dict:
    """Batch samples of different T: dates are zero-padded at the end (U-TAE masks them)."""
    t_max = max(s["s2"].shape[0] for s in samples)
    b, (_, c, h, w) = len(samples), samples[0]["s2"].shape
    x = torch.full((b, t_max, c, h, w), pad_value, dtype=torch.float32)
    pos = torch.zeros((b, t_max), dtype=torch.float32)
    pad = torch.ones((b, t_max), dtype=torch.bool)
    for k, s in enumerate(samples):
        t = s["s2"].shape[0]
        x[k, :t] = s["s2"]
        pos[k, :t] = s["positions"]
        pad[k, :t] = False
    return {
        "s2": x,
        "positions": pos,
        "pad_mask": pad,
        "label": torch.stack([s["label"] for s in samples]),
        "parcel_id": torch.stack([s["parcel_id"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
    }
