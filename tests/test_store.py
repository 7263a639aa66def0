"""The patch store's skeleton: data arrays described exactly as xarray would, nothing written."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from crop2seg_pipeline.nomenclature import BANDS
from crop2seg_pipeline.store import CODECS, DEFAULT_CODEC, create_skeleton, open_store


def _patches(n: int) -> pd.DataFrame:
    return pd.DataFrame({"tile": ["33UWQ"] * n, "row": np.arange(n) // 3, "col": np.arange(n) % 3,
                         "split": ["train"] * (n - 1) + ["val"], "epsg": [32633] * n,
                         "x0": 500000.0 + 320 * (np.arange(n) % 3), "y0": 5500000.0 - 320 * (np.arange(n) // 3)})


def _meta(path: Path, name: str) -> dict:
    return json.loads((path / name / "zarr.json").read_text())


def test_skeleton_arrays_match_what_xarray_writes_and_hold_no_chunk(tmp_path):
    n, t, p = 5, 4, 32
    patches = _patches(n)
    dates = np.tile(np.arange("2021-04-01", "2021-04-05", dtype="datetime64[D]"), (n, 1)).astype("datetime64[ns]")
    clear = np.full((n, t), 0.5, np.float32)
    ours = tmp_path / "ours.zarr"
    create_skeleton(ours, patches, dates, clear, BANDS, p, {"patch_size": p})

    # the reference: xarray's own description of the same arrays (lazy zeros, nothing computed)
    b = len(BANDS)
    ref = tmp_path / "xarray.zarr"
    ds = xr.Dataset(
        {"s2": (("patch", "time", "band", "y", "x"), da.zeros((n, t, b, p, p), dtype="uint16", chunks=(1, t, b, p, p))),
         "label": (("patch", "y", "x"), da.zeros((n, p, p), dtype="uint8", chunks=(1, p, p))),
         "parcel_id": (("patch", "y", "x"), da.zeros((n, p, p), dtype="int32", chunks=(1, p, p)))},
        coords={"band": ("band", np.array(list(BANDS), dtype=object)),
                **{k: ("patch", patches[k].to_numpy()) for k in ("tile", "row", "col", "split", "epsg", "x0", "y0")}})
    c = CODECS[DEFAULT_CODEC]
    enc = {k: {"compressors": [c] if c is not None else None, "chunks": (1,) + ds[k].shape[1:], "_FillValue": None}
           for k in ("s2", "label", "parcel_id")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(ref, zarr_format=3, compute=False, consolidated=False, encoding=enc)
    for name in ("s2", "label", "parcel_id"):
        assert _meta(ours, name) == _meta(ref, name), name
        assert not (ours / name / "c").exists(), f"{name}: the skeleton wrote chunks"

    opened = open_store(ours, require_complete=False)
    assert opened["s2"].dims == ("patch", "time", "band", "y", "x") and opened["s2"].shape == (n, t, b, p, p)
    assert set(opened["s2"].coords) >= {"tile", "row", "col", "split", "epsg", "x0", "y0", "band"}
    assert opened.attrs["complete"] is False and opened.attrs["codec"] == DEFAULT_CODEC
    np.testing.assert_array_equal(opened["dates"].values, dates)
