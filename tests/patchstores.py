"""Small synthetic patch stores with learnable labels, and the fixtures built on them.

Shared by the training, evaluation, dataset and PASTIS tests (``from patchstores import ...``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crop2seg_pipeline.nomenclature import BANDS, CLASS_NAMES
from crop2seg_pipeline.store import create_skeleton, finalize, write_patches
from crop2seg_pipeline.train import train

#: classes used by the synthetic store and the day of year their vegetation peaks (None: bare)
PHENOLOGY = {0: None, 1: 160, 4: 140, 5: 110, 6: 225}


def _reflectance(cls: int, doy: np.ndarray) -> np.ndarray:
    """(T, 10) DN of a class on days of year ``doy``: NIR bands follow the class's greenness."""
    peak = PHENOLOGY[cls]
    green = np.zeros(len(doy)) if peak is None else np.exp(-0.5 * ((doy - peak) / 30.0) ** 2)
    if cls == 1:
        green = 0.5 + 0.3 * green  # grassland: green all season
    nir = np.array([0, 0, 0, 0.4, 0.8, 1, 1, 1, 0.2, 0.0])  # per band response to greenness
    red = np.array([0.3, 0.2, 0.6, 0.3, 0, 0, 0, 0, 0.3, 0.5])
    return 900 + 3000 * green[:, None] * nir[None] + 900 * (1 - green[:, None]) * red[None]


def make_store(path: Path, n: int = 12, size: int = 32, t_max: int = 8, seed: int = 0,
               splits: tuple[str, ...] | None = None, tiles: tuple[str, ...] | None = None,
               epsgs: tuple[int, ...] | None = None) -> Path:
    """A complete patch store with learnable labels: 4 rectangular parcels per patch whose
    classes differ by their time series, an unclassified (14) strip in some patches, 5..8
    dates per patch (NaT-padded), splits 8 train / 2 val / 2 test by default, all patches on
    tile 33UWQ unless ``tiles`` (one per patch) says otherwise."""
    rng = np.random.default_rng(seed)
    splits = splits or tuple(["train"] * 8 + ["val"] * 2 + ["test"] * 2)[:n]
    classes = np.array(list(PHENOLOGY))
    s2 = np.zeros((n, t_max, len(BANDS), size, size), np.uint16)
    label = np.zeros((n, size, size), np.uint8)
    pid = np.zeros((n, size, size), np.int32)
    dates = np.full((n, t_max), np.datetime64("NaT"), "datetime64[ns]")
    clear = np.full((n, t_max), np.nan, np.float32)
    pool = np.arange(np.datetime64("2021-03-01"), np.datetime64("2021-10-31"), np.timedelta64(6, "D"))
    for p in range(n):
        t = int(rng.integers(5, t_max + 1))
        d = np.sort(rng.choice(pool, t, replace=False))
        dates[p, :t] = d
        clear[p, :t] = rng.uniform(0.5, 1.0, t)
        doy = (d - d.astype("datetime64[Y]")).astype(int) + 1
        r, c = rng.integers(8, size - 8, 2)
        for k, (ys, xs) in enumerate([(slice(0, r), slice(0, c)), (slice(0, r), slice(c, None)),
                                      (slice(r, None), slice(0, c)), (slice(r, None), slice(c, None))]):
            cls = int(classes[(p + k) % len(classes)])
            label[p, ys, xs] = cls
            pid[p, ys, xs] = 0 if cls == 0 else 100 * p + k + 1
            block = _reflectance(cls, doy)[:, :, None, None]
            noise = rng.normal(0, 60, (t, len(BANDS)) + label[p, ys, xs].shape)
            s2[p, :t, :, ys, xs] = np.clip(block + noise, 1, 10000).astype(np.uint16)
        if p % 3 == 0:
            label[p, -3:, :] = 14  # an unclassified parcel strip
    patches = pd.DataFrame({
        "tile": list(tiles) if tiles is not None else ["33UWQ"] * n, "row": np.arange(n) // 4, "col": np.arange(n) % 4,
        "split": list(splits), "epsg": list(epsgs) if epsgs is not None else [32633] * n,
        "x0": 500000.0 + 320 * (np.arange(n) % 4), "y0": 5500000.0 - 320 * (np.arange(n) // 4),
    })
    create_skeleton(path, patches, dates, clear, BANDS, size,
                    {"class_names": list(CLASS_NAMES), "bands": list(BANDS), "patch_size": size})
    write_patches(path, list(range(n)), s2, label, pid)
    train_idx = [i for i, s in enumerate(splits) if s == "train"] or list(range(n))  # stats of all if no train
    valid = np.stack([(np.arange(t_max) < (~np.isnat(dates[i])).sum()) for i in train_idx])
    vals = s2[train_idx].transpose(0, 1, 3, 4, 2)[valid].reshape(-1, len(BANDS)).astype(np.float64)
    counts = {s: np.bincount(label[[i for i, x in enumerate(splits) if x == s]].ravel(),
                             minlength=15).tolist() for s in ("train", "val", "test")}
    finalize(path, {"normalization": {"train": {"mean": vals.mean(0).tolist(), "std": vals.std(0).tolist()}},
                    "class_pixel_counts": counts})
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "patches.zarr")


KW = dict(model="utae-small", batch_size=2, lr=5e-3, device="cpu", num_workers=0, seed=3)


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """A 2-epoch utae-small run (shared by the training, resume and evaluation tests)."""
    out = tmp_path_factory.mktemp("run") / "run"
    summary = train(store, out, epochs=2, **KW)
    return out, summary


