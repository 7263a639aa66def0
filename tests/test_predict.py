"""Whole-tile inference: window kernels, chunk invariance, an independent reference, outputs,
per-worker model loading and bad inputs.

The model is a randomly initialised but seeded ``utae-small`` with 32 px windows (fast on CPU);
its normalization statistics are those of the test cube.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.features
import torch
import xarray as xr
from click.testing import CliRunner

from crop2seg_pipeline.cube import cube_grid_of, load_cube
from crop2seg_pipeline.errors import Crop2SegError, EmptySelectionError, MissingBandError
from crop2seg_pipeline.grid import Grid
from crop2seg_pipeline.items import normalize_items
from crop2seg_pipeline.blocks import cube_source
from crop2seg_pipeline.kernels.windows import (
    accumulate_windows,
    blend_weights,
    date_positions,
    plan_axis,
    preprocess,
)
from crop2seg_pipeline.mapping import CropMapping
from crop2seg_pipeline.parcels import read_parcels
from crop2seg_pipeline.malloc import malloc_tuned
from crop2seg_pipeline.models import CheckpointError, build_model, save_weights
from crop2seg_pipeline.nomenclature import BANDS, CLASS_COLORS, CLASS_NAMES
from crop2seg_pipeline.outputs import TiledRaster, read_category_names, validate_cog
from crop2seg_pipeline.predict import (
    BLEND_FLOOR,
    DateRangeWarning,
    model_loads,
    predict,
    predict_cube,
    read_model_spec,
    source_probabilities,
)

PATCH = 32
OVERLAP = 8
REF_DATE = "2021-09-01"


def _save(folder, *, n_classes=15, bands=BANDS, mean=None, std=None, seed=0, model_name="utae-small", **extra):
    torch.manual_seed(seed)
    model = build_model(model_name, n_classes, input_dim=len(bands))
    meta = {
        "bands": list(bands),
        "normalization": {"mean": list(mean if mean is not None else [1000.0] * len(bands)),
                          "std": list(std if std is not None else [500.0] * len(bands))},
        "class_names": list(CLASS_NAMES[:n_classes]) if n_classes <= 15 else [f"c{k}" for k in range(n_classes)],
        "reference_date": REF_DATE,
        "patch_size": PATCH,
        "ignore_index": 14,
        **extra,
    }
    return save_weights(model, folder, meta)


@pytest.fixture(scope="module")
def cube_arrays(small_scene):
    cube = load_cube(small_scene.items, chunksize=256)
    return cube["s2"].values, cube["time"].values


@pytest.fixture(scope="module")
def weights(small_scene, cube_arrays, tmp_path_factory):
    s2, times = cube_arrays
    mean = s2.astype(np.float64).mean(axis=(0, 2, 3))
    std = s2.astype(np.float64).std(axis=(0, 2, 3))
    days = np.asarray(times).astype("datetime64[D]")
    return _save(tmp_path_factory.mktemp("weights"), mean=mean, std=std,
                 training={"date_range": [str(days.min()), str(days.max())]})


@pytest.fixture(scope="module")
def pred96(small_scene, weights):
    cube = load_cube(small_scene.items, chunksize=96)
    return predict_cube(cube, weights, overlap=OVERLAP, batch_size=5, probabilities=True).compute(scheduler="threads")


# ----------------------------------------------------------------------------- kernels


def test_blend_weights_ramp_with_a_floor():
    w = blend_weights(32, 8, floor=0.05)
    assert w.shape == (32, 32) and w.dtype == np.float32
    assert w.min() > 0 and w[16, 16] == 1.0 and np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
    assert np.allclose(blend_weights(16, 0), 1.0)


def test_accumulated_windows_normalize_to_probabilities_and_skip_the_ignored_class():
    rng = np.random.default_rng(1)
    s2 = rng.integers(0, 5000, (3, 2, 50, 70)).astype(np.uint16)
    rows, cols = plan_axis(50, 16, 12), plan_axis(70, 16, 12)

    def forward(x, pos):  # a fake model: logits from the band means, any shape-correct function
        m = x.mean(dim=(1, 2), keepdim=False)[:, None]
        return torch.cat([m * k for k in range(4)], dim=1)

    acc = np.zeros((4, 50, 70))
    wsum = np.zeros((50, 70))
    n = accumulate_windows(s2, np.arange(3, dtype=np.float32), forward, mean=np.zeros(2), std=np.ones(2) * 1000,
                           windows=[(r, c) for r in rows for c in cols], size=16, weights=blend_weights(16, 4),
                           acc=acc, wsum=wsum, batch_size=3, ignore_index=3)
    assert n == len(rows) * len(cols)
    assert (wsum > 0).all()
    probs = acc / wsum
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert (probs[3] == 0).all()  # the ignored class is never predicted


def test_preprocess_and_positions_are_the_training_transform():
    rng = np.random.default_rng(2)
    s2 = rng.integers(0, 10000, (2, 4, 3, 5, 5)).astype(np.uint16)
    mean = np.array([100.0, 200.0, 300.0], np.float32)
    std = np.array([10.0, 0.0, 30.0], np.float32)
    out = preprocess(s2, mean, std)
    x = s2.astype(np.float32)
    std1 = np.where(std > 0, std, 1).astype(np.float32)
    assert out.dtype == np.float32
    assert np.array_equal(out, (x - mean[None, :, None, None]) / std1[None, :, None, None])
    dates = np.array(["2021-09-01T10:30", "2022-03-01T00:00"], dtype="datetime64[ns]")
    assert date_positions(dates, "2021-09-01").tolist() == [0.0, 181.0]


# ----------------------------------------------------------------------------- the lazy graph


def test_chunk_invariance(small_scene, weights, pred96):
    cube = load_cube(small_scene.items, chunksize=160)
    other = predict_cube(cube, weights, overlap=OVERLAP, batch_size=8, probabilities=True).compute(scheduler="threads")
    assert pred96["probabilities"].dims == ("class_id", "y", "x")
    np.testing.assert_allclose(other["probabilities"].values, pred96["probabilities"].values, atol=1e-5, rtol=0)
    assert np.array_equal(other["class"].values, pred96["class"].values)
    assert np.array_equal(other["confidence"].values, pred96["confidence"].values)


def _reference(s2, times, folder):
    """A plain single-process sliding-window prediction over the whole area, in memory."""
    meta = json.loads((Path(folder) / "model.json").read_text())
    from crop2seg_pipeline.models import load_model

    model = load_model(folder)
    mean = np.asarray(meta["normalization"]["mean"], np.float32)[:, None, None]
    std = np.asarray(meta["normalization"]["std"], np.float32)[:, None, None]
    x = (s2.astype(np.float32) - mean) / std
    pos = (np.asarray(times).astype("datetime64[D]") - np.datetime64(meta["reference_date"])).astype(np.float32)
    T, B, H, W = x.shape
    P, S = meta["patch_size"], meta["patch_size"] - OVERLAP

    def origins(n):
        o = list(range(0, n - P + 1, S))
        return o if o[-1] == n - P else o + [n - P]

    ramp = np.array([min(1.0, max(BLEND_FLOOR, (min(i, P - 1 - i) + 1) / (OVERLAP + 1))) for i in range(P)])
    w2 = ramp[:, None] * ramp[None, :]
    acc = np.zeros((15, H, W))
    wsum = np.zeros((H, W))
    for r in origins(H):
        for c in origins(W):
            with torch.no_grad():
                logits = model(torch.from_numpy(x[None, :, :, r : r + P, c : c + P].copy()), torch.from_numpy(pos[None]))
            logits[:, 14] = -float("inf")
            p = torch.softmax(logits, dim=1)[0].numpy()
            acc[:, r : r + P, c : c + P] += p * w2
            wsum[r : r + P, c : c + P] += w2
    assert (wsum > 0).all()
    return acc / wsum


def test_equals_an_independent_sliding_window_reference(cube_arrays, weights, pred96):
    s2, times = cube_arrays
    ref = _reference(s2, times, weights)
    got = pred96["probabilities"].values
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    top2 = np.sort(ref, axis=0)[-2:]
    decided = (top2[1] - top2[0]) > 1e-5  # pixels whose argmax is not a numerical tie
    assert np.array_equal(pred96["class"].values[decided], ref.argmax(axis=0)[decided])
    assert np.array_equal(pred96["confidence"].values, np.rint(ref.max(axis=0) * 255).astype(np.uint8)) or \
        np.abs(pred96["confidence"].values.astype(int) - np.rint(ref.max(axis=0) * 255)).max() <= 1


def test_area_smaller_than_a_window_is_padded(small_scene, weights):
    cube = load_cube(small_scene.items, chunksize=256).isel(y=slice(0, 20), x=slice(0, 45))
    out = predict_cube(cube, weights, overlap=OVERLAP, probabilities=True).compute(scheduler="sync")
    assert out["class"].shape == (20, 45) and out["probabilities"].shape == (15, 20, 45)
    np.testing.assert_allclose(out["probabilities"].sum("class_id").values, 1.0, atol=1e-5)


def _items_path(cube, items, weights, chunksize):
    """Probabilities through the path of :func:`predict`: model tasks read their own blocks."""
    spec = read_model_spec(weights)
    src = cube_source(items, cube_grid_of(cube), spec.bands)
    lazy, _ = source_probabilities(src, list(range(src.n_dates)), spec, chunksize=chunksize, overlap=OVERLAP,
                                   batch_size=5, device="cpu")
    graph = dict(lazy.__dask_graph__())
    assert not set(graph) & set(dict(cube["s2"].data.__dask_graph__())), "the cube's read tasks are in the graph"
    return lazy.compute(scheduler="threads")


def test_model_tasks_that_read_their_own_blocks_give_the_same_probabilities(small_scene, weights, pred96):
    # chunks of 75 px: haloed blocks start at odd rows/cols (20 m bands at odd 10 m offsets)
    norm = normalize_items(small_scene.items)
    cube = load_cube(norm, chunksize=75)
    got = _items_path(cube, norm, weights, 75)
    np.testing.assert_allclose(got, pred96["probabilities"].values, atol=1e-5, rtol=0)


def test_model_tasks_that_read_their_own_blocks_pad_small_areas(small_scene, weights):
    norm = normalize_items(small_scene.items)
    grid = cube_grid_of(load_cube(norm))
    # odd origin and height, smaller than a 32 px window along y
    cube = load_cube(norm, grid=grid.window(3, 5, 21, 45), chunksize=64)
    assert cube.sizes["y"] == 21 and cube.sizes["x"] == 45
    lazy = predict_cube(cube, weights, overlap=OVERLAP, probabilities=True).compute(scheduler="sync")
    np.testing.assert_allclose(_items_path(cube, norm, weights, 64), lazy["probabilities"].values, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def predicted(small_scene, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred")
    summary = predict(small_scene.items, weights, out, parcels=small_scene.parcels, mapping=small_scene.mapping,
                      overlap=OVERLAP, batch_size=6, chunksize=128, probabilities=True, progress=lambda m: None)
    return out, summary


def test_rasters_are_cogs_on_the_cube_grid(small_scene, predicted, pred96):
    out, summary = predicted
    grid = cube_grid_of(load_cube(small_scene.items))
    for name in ("classes.tif", "confidence.tif"):
        assert validate_cog(out / name) == [], name
        with rasterio.open(out / name) as ds:
            assert ds.crs.to_epsg() == grid.epsg and ds.transform == grid.transform
            assert (ds.height, ds.width) == grid.shape and ds.dtypes[0] == "uint8"
    with rasterio.open(out / "classes.tif") as ds:
        cmap = ds.colormap(1)
        assert all(cmap[k][:3] == CLASS_COLORS[k] for k in range(15))
        assert json.loads(ds.tags(1)["class_names"]) == list(CLASS_NAMES)
        classes = ds.read(1)
    assert read_category_names(out / "classes.tif") == list(CLASS_NAMES)
    with rasterio.open(out / "confidence.tif") as ds:
        conf = ds.read(1)
    # chunk size 128 here, 96 in pred96: same maps
    assert np.array_equal(classes, pred96["class"].values)
    assert np.array_equal(conf, pred96["confidence"].values)
    probs = xr.open_zarr(out / "probabilities.zarr")["probabilities"].values
    np.testing.assert_allclose(probs, pred96["probabilities"].values, atol=1e-5)
    assert (out / "quicklook.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(summary.area_ha.values()) == pytest.approx(grid.height * grid.width * 0.01)
    assert json.loads((out / "summary.json").read_text())["shape"] == list(grid.shape)


def test_cog_writer_builds_overviews_and_validator_rejects_plain_tiffs(tmp_path):
    grid = Grid(32633, 500000.0, 5500000.0, 10.0, 1500, 1300)
    data = (np.arange(1500 * 1300).reshape(1500, 1300) % 15).astype(np.uint8)
    with TiledRaster(tmp_path / "c.tif", grid, kind="classes") as w:  # chunks arrive in any order
        for r in (1024, 512, 0):
            for c in (0, 600):
                w.write(data[r : r + 512, c : c + 700], r, c)
    assert validate_cog(tmp_path / "c.tif") == []
    with rasterio.open(tmp_path / "c.tif") as ds:
        assert ds.overviews(1) and np.array_equal(ds.read(1), data)
        assert ds.colormap(1)[5][:3] == CLASS_COLORS[5] and ds.tags(1)["CLASS_3"] == CLASS_NAMES[3]
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=1300, height=1500, count=1, dtype="uint8",
                       crs=grid.crs, transform=grid.transform) as ds:
        ds.write(data, 1)
    assert validate_cog(plain)


def test_parcel_table_is_the_majority_of_the_class_raster(small_scene, predicted):
    import geopandas as gpd

    out, summary = predicted
    table = gpd.read_file(out / "parcels.gpkg")
    with rasterio.open(out / "classes.tif") as ds:
        classes, transform, crs = ds.read(1), ds.transform, ds.crs
    gdf, _ = read_parcels(small_scene.parcels, mapping=CropMapping.read(small_scene.mapping), target_crs=crs.to_epsg())
    # independent rasterization: ascending id, later burns win, pixel centers
    order = np.argsort(gdf["parcel_id"].to_numpy(), kind="stable")
    pid = rasterio.features.rasterize(
        ((g, int(v)) for g, v in zip(gdf.geometry.to_numpy()[order], gdf["parcel_id"].to_numpy()[order])),
        out_shape=classes.shape, transform=transform, fill=0, dtype="int32",
    )
    rows = table.set_index("parcel_id")
    assert set(rows.index) == set(gdf["parcel_id"])
    checked = 0
    for p in np.unique(pid[pid > 0]):
        counts = np.bincount(classes[pid == p], minlength=15)
        r = rows.loc[p]
        assert r["n_pixels"] == counts.sum()
        assert r["predicted_class"] == counts.argmax()
        assert r["predicted_share"] == pytest.approx(counts.max() / counts.sum())
        assert 0 <= r["mean_confidence"] <= 1
        checked += 1
    assert checked > 10
    flagged = table[table["declared_class"] != 14]
    assert (flagged["agreement"].astype(bool) == (flagged["declared_class"] == flagged["predicted_class"])).all()
    assert table.loc[table["declared_class"] == 14, "agreement"].isna().all()
    share = summary.parcels["agreement_share"]
    assert share == pytest.approx(flagged["agreement"].astype(bool).mean())


# ----------------------------------------------------------------------------- cluster


def test_model_loaded_once_per_worker_never_in_the_graph(small_scene, weights, tmp_path):
    import cloudpickle
    from distributed import Client, LocalCluster

    cube = load_cube(small_scene.items, chunksize=64)  # 16 chunks over 2 workers
    lazy = predict_cube(cube, weights, overlap=OVERLAP)
    graph = cloudpickle.dumps(dict(lazy.__dask_graph__()))
    base = cloudpickle.dumps(dict(cube["s2"].data.__dask_graph__()))
    weights_size = (Path(weights) / "weights.pt").stat().st_size
    assert len(graph) - len(base) < min(weights_size / 4, 100_000), (len(graph), len(base), weights_size)
    assert b"torch._utils" not in graph and b"torch.nn" not in graph  # no tensor, no module

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
            Client(lc) as client:
        s = predict(small_scene.items, weights, tmp_path / "out", parcels=small_scene.parcels,
                    mapping=small_scene.mapping, overlap=OVERLAP, chunksize=64, client=client, progress=lambda m: None)
        loads = client.run(model_loads)
        tuned = client.run(malloc_tuned)
    assert s.n_chunks == 16
    # every worker that loaded the model serves large tensors from the heap (see malloc.py)
    assert all(tuned[w] for w, d in loads.items() if d) and any(tuned.values()), (tuned, loads)
    counts = [sum(v for k, v in d.items() if k.startswith(str(Path(weights).resolve()))) for d in loads.values()]
    assert all(c <= 1 for c in counts) and sum(counts) >= 1, loads
    assert validate_cog(tmp_path / "out" / "classes.tif") == []


# ----------------------------------------------------------------------------- bad inputs


def test_bad_weights(tmp_path, small_scene):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_model_spec(tmp_path / "nowhere")
    corrupt = _save(tmp_path / "corrupt")
    (corrupt / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_model_spec(corrupt)
    with pytest.raises(CheckpointError, match="classes"):
        read_model_spec(_save(tmp_path / "ten", n_classes=10))
    with pytest.raises(CheckpointError, match="B01"):
        read_model_spec(_save(tmp_path / "b01", bands=("B01", *BANDS[1:])))
    no_norm = _save(tmp_path / "nonorm")
    meta = json.loads((no_norm / "model.json").read_text())
    del meta["normalization"]
    (no_norm / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="normalization"):
        predict(small_scene.items, no_norm, tmp_path / "o")


def test_weights_read_again_unchanged_are_not_loaded_again(tmp_path, monkeypatch):
    from crop2seg_pipeline import models

    loads = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    folder = _save(tmp_path / "w")
    first = read_model_spec(folder)
    assert read_model_spec(folder) == first and len(loads) == 1
    meta = json.loads((folder / "model.json").read_text())  # rewritten: read (and checked) again
    del meta["normalization"]
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="normalization"):
        read_model_spec(folder)
    assert len(loads) == 2


def test_items_lacking_a_band_the_model_needs(tmp_path, small_scene, weights):
    doc = json.loads(Path(small_scene.items).read_text())
    for it in doc["features"]:
        it["assets"].pop("B05")
        for a in it["assets"].values():
            a["href"] = str(Path(small_scene.root) / a["href"])
    items = tmp_path / "items.json"
    items.write_text(json.dumps(doc))
    with pytest.raises(MissingBandError, match="B05"):
        predict(str(items), weights, tmp_path / "o")
    cube = load_cube(small_scene.items).sel(band=[b for b in BANDS if b != "B11"])
    with pytest.raises(MissingBandError, match="B11"):
        predict_cube(cube, weights, overlap=OVERLAP)
    # a model trained on fewer bands reads only those, in its own order
    few = _save(tmp_path / "few", bands=("B08", "B04", "B03"))
    out = predict_cube(load_cube(small_scene.items, chunksize=256).isel(y=slice(0, 40), x=slice(0, 40)), few, overlap=OVERLAP)
    assert out["class"].shape == (40, 40)


def test_bbox_outside_the_items(tmp_path, small_scene, weights):
    with pytest.raises(EmptySelectionError):
        predict(small_scene.items, weights, tmp_path / "o", bbox=(-10.0, -10.0, -9.0, -9.0))


def test_dates_outside_the_training_range_warn(tmp_path, small_scene, cube_arrays):
    _, times = cube_arrays
    days = np.sort(np.asarray(times).astype("datetime64[D]"))
    narrow = _save(tmp_path / "narrow", training={"date_range": [str(days[2]), str(days[-3])]})
    cube = load_cube(small_scene.items).isel(y=slice(0, 40), x=slice(0, 40))
    with pytest.warns(DateRangeWarning, match="4 of 8 dates"):
        predict_cube(cube, narrow, overlap=OVERLAP)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DateRangeWarning)
        predict_cube(cube.isel(time=slice(2, -2)), narrow, overlap=OVERLAP)


def test_bad_options(small_scene, weights):
    cube = load_cube(small_scene.items).isel(y=slice(0, 40), x=slice(0, 40))
    with pytest.raises(Crop2SegError, match="overlap"):
        predict_cube(cube, weights, overlap=PATCH)
    with pytest.raises(Crop2SegError, match="batch"):
        predict_cube(cube, weights, overlap=OVERLAP, batch_size=0)


def test_cli_names_missing_demo_weights(monkeypatch, tmp_path):
    from crop2seg_pipeline import predict as predict_module
    from crop2seg_pipeline.cli.predict import predict_cmd

    monkeypatch.setattr(predict_module, "default_demo_weights", lambda: tmp_path / "demo_weights")
    res = CliRunner().invoke(predict_cmd, [])
    assert res.exit_code != 0
    assert str(tmp_path / "demo_weights") in res.output and "train" in res.output


def test_cli_predicts(tmp_path, small_scene, weights):
    from crop2seg_pipeline.cli.predict import predict_cmd

    res = CliRunner().invoke(predict_cmd, [
        "--items", str(small_scene.items), "--weights", str(weights), "--out", str(tmp_path / "o"),
        "--overlap", str(OVERLAP), "--chunksize", "128", "--workers", "1", "-q",
    ])
    assert res.exit_code == 0, res.output
    assert "Mpx/s" in res.output and validate_cog(tmp_path / "o" / "classes.tif") == []


def test_rerun_with_other_options_owns_its_folder(tmp_path, small_scene, weights, predicted):
    """A second prediction into the folder of one with parcels and probabilities, without them:
    the first run's parcels.gpkg and probabilities.zarr go (they are its own, unchanged), the
    user's file stays, and the manifest lists exactly what this run wrote."""
    from crop2seg_pipeline.manifest import read_manifest

    first, _ = predicted
    out = tmp_path / "out"
    shutil.copytree(first, out, copy_function=shutil.copy2)  # copy2: sizes and mtimes as written
    (out / "my-notes.txt").write_text("mine")
    assert (out / "parcels.gpkg").exists() and (out / "probabilities.zarr").is_dir()
    assert (out / "probabilities.tif").exists()
    s = predict(small_scene.items, weights, out, overlap=OVERLAP, batch_size=6, chunksize=128,
                progress=lambda m: None)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["classes.tif", "classes.tif.aux.xml", "confidence.tif", "quicklook.png", "summary.json",
                            "manifest.json", "my-notes.txt"])  # probabilities.tif went with probabilities.zarr
    doc = read_manifest(out)
    assert doc["complete"] and sorted(doc["files"]) == sorted(set(names) - {"manifest.json", "my-notes.txt"})
    assert doc["settings"]["parcels"] is None and s.parcels is None


# ----------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize("name", ["timeunet-small", "wtae-small", "unet3d-small"])
def test_every_architecture_predicts_with_the_same_machinery(small_scene, cube_arrays, tmp_path, name):
    """Untrained Time-Unet / W-TAE / UNet3D weights folders: predict writes valid outputs that equal
    the independent sliding-window reference, with no architecture-specific code."""
    s2, times = cube_arrays
    folder = _save(tmp_path / "w", model_name=name, mean=s2.astype(np.float64).mean(axis=(0, 2, 3)),
                   std=s2.astype(np.float64).std(axis=(0, 2, 3)))
    assert json.loads((folder / "model.json").read_text())["architecture"] == name.split("-")[0]
    out = tmp_path / "out"
    summary = predict(small_scene.items, folder, out, parcels=small_scene.parcels, mapping=small_scene.mapping,
                      overlap=OVERLAP, batch_size=6, chunksize=128, probabilities=True, progress=lambda m: None)
    for raster in ("classes.tif", "confidence.tif"):
        assert validate_cog(out / raster) == [], raster
    with rasterio.open(out / "classes.tif") as ds:
        classes = ds.read(1)
    assert classes.shape == s2.shape[2:] and classes.max() < 14  # never "Not classified"
    probs = xr.open_zarr(out / "probabilities.zarr")["probabilities"].values
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, _reference(s2, times, folder), atol=1e-5, rtol=0)
    assert (out / "parcels.gpkg").is_file() and summary.parcels["n_compared"] > 0


# the shipped demo weights on an unseen scene: tests/test_generalization.py


@pytest.mark.parametrize("h,w,chunk,patch,overlap,threads,expected", [
    (512, 512, 512, 128, 32, 2, 192),     # one chunk for two threads: 3 x 3 chunks on window origins
    (256, 256, 512, 128, 32, 2, 128),     # down to one window, never below
    (100, 60, 512, 32, 8, 2, 48),         # two windows per side at most: 48 px chunks on origins
    (4096, 4096, 512, 128, 32, 2, 512),   # plenty of chunks: unchanged
    (1024, 1024, 512, 128, 32, 8, 288),   # 4 chunks of 512 px for 8 threads: 16 of 288 px
    (1024, 1024, 512, 128, 32, 1, 512),   # one thread: nothing to balance
])
def test_small_areas_are_cut_so_that_every_thread_has_work(h, w, chunk, patch, overlap, threads, expected):
    from crop2seg_pipeline.predict import work_chunksize

    assert work_chunksize(h, w, chunk, patch, threads, overlap) == expected


def test_model_task_annotations_reach_the_scheduler(small_scene, weights):
    """What the scheduler receives from predict's finishing tasks carries the model layer's
    annotations: its priority (each chunk's owned window count: Dask's queue hands out the
    largest first) and the GPU resource of ``--device cuda`` on GPU workers. (``to_delayed()``
    with graph optimization fused the layers and dropped both.)"""
    from dask.base import collections_to_expr

    from crop2seg_pipeline.blocks import PREDICT_BLOCK_CACHE
    from crop2seg_pipeline.graph.windows import finish_tasks, owned_counts
    from crop2seg_pipeline.predict import source_probabilities

    spec = read_model_spec(weights)
    cube = load_cube(small_scene.items, chunksize=128)
    src = cube_source(normalize_items(small_scene.items, bands=spec.bands), cube_grid_of(cube), spec.bands)
    probs, plan = source_probabilities(src, [0, 1, 2], spec, chunksize=96, overlap=16, batch_size=2, device="cpu",
                                       resources={"GPU": 1}, small_area=True)
    counts = owned_counts(plan)
    assert sum(counts.values()) == len(plan.rows) * len(plan.cols) and len(set(counts.values())) > 1
    tasks = finish_tasks(probs, None, spec.n_classes, prob_store=None, device="cpu", small_area=True)
    ann = collections_to_expr(tasks).__dask_annotations__()
    model = {k for k in ann["resources"] if isinstance(k, tuple) and str(k[0]).startswith("predict-windows")}
    assert len(model) == len(counts) and all(ann["resources"][k] == {"GPU": 1} for k in model)
    assert {(k[1], k[2]): ann["priority"][k] for k in model} == counts
    # what follows a model task (parts, blends, finishing) runs before any other model task
    rest = {k: v for k, v in ann["priority"].items() if k not in model}
    assert len(rest) > len(counts) and min(rest.values()) > max(counts.values())
    assert {f"finish-{probs.name}-{i}-{j}" for i, j in counts} <= set(rest)
    # ... and its model tasks read with the large block cache (every file block of the area fits)
    assert {_model_task_args(probs)[-1]} == {PREDICT_BLOCK_CACHE}
    # a large area: no priorities (chunks are finished as they come, memory stays one chunk a
    # thread), GDAL's default block cache
    probs, _ = source_probabilities(src, [0, 1, 2], spec, chunksize=96, overlap=16, batch_size=2, device="cpu")
    tasks = finish_tasks(probs, None, spec.n_classes, prob_store=None, device="cpu")
    assert "priority" not in collections_to_expr(tasks).__dask_annotations__()
    assert {_model_task_args(probs)[-1]} == {None}


def _model_task_args(probs) -> tuple:
    """The arguments of one model task of ``probs``' graph."""
    (layer,) = [v for k, v in probs.dask.layers.items() if k.startswith("predict-windows")]
    return next(iter(dict(layer).values()))[1:]
