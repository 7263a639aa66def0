"""Tests of the torch Dataset over a patch store: selection, positions, augmentation hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from patchstores import make_store

from crop2seg_pipeline.augment import TemporalAugment, TrainTransform
from crop2seg_pipeline.dataset import PatchDataset, collate_patches
from crop2seg_pipeline.errors import StoreError
from crop2seg_pipeline.kernels.dates import date_positions
from crop2seg_pipeline.store import open_store

TILES = ("33UVR",) * 4 + ("33UWQ",) * 8


@pytest.fixture(scope="module")
def two_tiles(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("tiles") / "tiles.zarr", tiles=TILES)


def test_items_are_the_store_patches_with_their_own_dates(two_tiles):
    ds = PatchDataset(two_tiles, split="train")
    store = open_store(two_tiles)
    g = zarr.open_group(str(two_tiles), mode="r", zarr_format=3)
    assert ds.indices.tolist() == list(range(8))
    for i in (0, 5):
        item = ds[i]
        dates = store["dates"].values[i]
        t = int((~np.isnat(dates)).sum())
        assert item["s2"].shape == (t, 10, 32, 32) and item["dates"].shape == (t,)
        raw = np.asarray(g["s2"][i, :t]).astype(np.float32)
        np.testing.assert_allclose(item["s2"].numpy(), (raw - ds.mean[:, None, None]) / ds.std[:, None, None], rtol=1e-6)
        np.testing.assert_array_equal(item["positions"].numpy(), date_positions(dates[:t], ds.reference_date))
        assert item["label"].dtype == torch.int64 and item["index"] == i
    batch = collate_patches([ds[0], ds[1], ds[2]])
    t_max = batch["s2"].shape[1]
    assert batch["pad_mask"].sum(1).tolist() == [t_max - len(ds[k]["dates"]) for k in range(3)]


def test_day_of_year_positions(two_tiles):
    ds = PatchDataset(two_tiles, split="val", date_encoding="doy")
    item = ds[0]
    days = item["dates"].numpy().astype("datetime64[D]")
    np.testing.assert_array_equal(item["positions"].numpy(), date_positions(days, "2000-01-01", "doy"))
    assert 60 <= item["positions"].min() and item["positions"].max() <= 305  # March .. October
    with pytest.raises(StoreError, match="unknown date encoding"):
        PatchDataset(two_tiles, date_encoding="week")


@pytest.mark.parametrize("encoding", ["days", "doy"])
def test_positions_follow_the_augmented_dates(two_tiles, encoding):
    aug = TemporalAugment(keep=(0.5, 0.5), min_dates=2, shift_days=20, jitter_days=2, cloudy_drop=0.0)
    plain = PatchDataset(two_tiles, split="train", date_encoding=encoding)
    moved = PatchDataset(two_tiles, split="train", date_encoding=encoding,
                         transform=TrainTransform(seed=1, augment=False, temporal=aug))
    for i in range(4):
        a, b = plain[i], moved[i]
        assert len(b["dates"]) == max(2, int(np.ceil(0.5 * len(a["dates"]))))
        days = b["dates"].numpy().astype("datetime64[D]")
        np.testing.assert_array_equal(b["positions"].numpy(), date_positions(days, plain.reference_date, encoding))
        # each kept date carries the pixels of one original date, in order, its day moved by one
        # shared shift (|shift| <= 20) plus its own jitter (|jitter| <= 2)
        origin = [next(j for j in range(len(a["s2"])) if torch.equal(b["s2"][k], a["s2"][j]))
                  for k in range(len(b["s2"]))]
        assert origin == sorted(set(origin))
        delta = b["dates"].numpy() - a["dates"].numpy()[origin]
        assert delta.max() - delta.min() <= 4 and np.abs(delta).max() <= 22


def test_tile_selection(two_tiles):
    assert PatchDataset(two_tiles, split=None, tiles=["33UVR"]).indices.tolist() == [0, 1, 2, 3]
    assert PatchDataset(two_tiles, split="train", exclude_tiles=["33UVR"]).indices.tolist() == [4, 5, 6, 7]
    with pytest.raises(StoreError, match="no tile 33XXX"):
        PatchDataset(two_tiles, split=None, tiles=["33XXX"])
    with pytest.raises(StoreError, match="no patch in split 'val' of tiles 33UVR"):
        PatchDataset(two_tiles, split="val", tiles=["33UVR"])
    with pytest.raises(StoreError, match="no patch in split 'nope'"):
        PatchDataset(two_tiles, split="nope")
