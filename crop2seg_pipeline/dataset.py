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
from .kernels.windows import date_positions, preprocess
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
        Path of a complete patch store.
    split
        ``"train"``, ``"val"``, ``"test"``, a list of them, or None for all patches.
    normalize
        Standardize bands with ``mean``/``std`` (default: the store's train statistics).
    mean, std
        Per-band statistics to use instead of the store's (e.g. those of a checkpoint).
    reference_date
        Dates are given as days since this date (default: September 1st before the first date).
    transform
        Optional callable applied to each sample dict (augmentation).

    Each item is a dict: ``s2`` (T, band, y, x) float32, ``positions`` (T,) float32 days since
    the reference date, ``label`` (y, x) int64, ``parcel_id`` (y, x) int64, ``clear`` (T,)
    float32 and ``index`` (int). T is the patch's own number of dates (padding dropped).
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
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        ds = open_store(store)
        self.path = str(store)
        splits = np.array(ds["split"].values.tolist(), dtype=str)
        if split is None:
            keep = np.ones(len(splits), bool)
        else:
            wanted = [split] if isinstance(split, str) else list(split)
            keep = np.isin(splits, wanted)
            if not keep.any():
                raise StoreError(f"{store} has no patch in split {split!r} (splits: {sorted(set(splits))})")
        self.indices = np.flatnonzero(keep)
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
        self.bands = [str(b) for b in ds["band"].values.tolist()]
        self.class_names = list(ds.attrs.get("class_names", []))
        self.transform = transform
        self._arrays: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _open(self) -> dict[str, Any]:
        if self._arrays is None:  # opened lazily, once per DataLoader worker process
            g = zarr.open_group(self.path, mode="r", zarr_format=3)
            self._arrays = {k: g[k] for k in ("s2", "label", "parcel_id")}
        return self._arrays

    def positions(self, index: int) -> np.ndarray:
        d = self.dates[index]
        return date_positions(d[~np.isnat(d)], self.reference_date)

    def __getitem__(self, i: int) -> dict:
        idx = int(self.indices[i])
        arr = self._open()
        pos = self.positions(idx)
        t = len(pos)
        raw = np.asarray(arr["s2"][idx, :t])
        # the one preprocessing code path, shared with crop2seg-predict
        x = preprocess(raw, self.mean, self.std) if self.normalize else raw.astype(np.float32)
        sample = {
            "s2": torch.from_numpy(x),
            "positions": torch.from_numpy(pos),
            "label": torch.from_numpy(np.asarray(arr["label"][idx], dtype=np.int64)),
            "parcel_id": torch.from_numpy(np.asarray(arr["parcel_id"][idx], dtype=np.int64)),
            "clear": torch.from_numpy(self.clear[idx, :t].copy()),
            "index": idx,
        }
        return self.transform(sample) if self.transform else sample


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
