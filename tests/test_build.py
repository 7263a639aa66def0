"""crop2seg-build-dataset end to end, on real Dask clusters, checked against independent reads."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import xarray as xr
from distributed import Client, LocalCluster

from crop2seg_pipeline.build import build_dataset
from crop2seg_pipeline.dataset import PatchDataset, collate_patches
from crop2seg_pipeline.errors import ParcelError, ReadError, StoreError
from crop2seg_pipeline.graph.build import MOMENTS_STEP
from processes import DEADLINE_S, start_command, wait_for_scheduler_file
from crop2seg_pipeline.kernels.s2 import clear_mask
from crop2seg_pipeline.nomenclature import BANDS, DEFAULT_UNCLEAR_SCL
from crop2seg_pipeline.store import open_store

pytestmark = pytest.mark.slow

PATCH = 64
OPTS = dict(patch_size=PATCH, chunksize=2 * PATCH, min_crop_cover=0.3, split_block=2, seed=3)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc:
        with Client(lc) as client:
            yield client


@pytest.fixture(scope="module")
def store(demo_scene, cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "patches.zarr"
    summary = build_dataset(demo_scene.items, demo_scene.parcels, out, mapping=demo_scene.mapping, client=cluster, **OPTS)
    return out, summary


# ----------------------------------------------------------------------------- independent references


def independent_labels(scene) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the whole scene by geopandas + rasterio only (EPSG:5514 -> UTM, ascending ids)."""
    gdf = gpd.read_file(scene.parcels).to_crs(32633)
    gdf["geometry"] = gdf.geometry.make_valid()  # repaired in the raster CRS, as documented
    gdf = gdf.sort_values("ID_DPB")  # overlaps: the larger id wins, as documented
    with open(scene.mapping, newline="") as f:
        mapping = {row["crop_code"]: int(row["class_id"]) for row in csv.DictReader(f)}
    classes = [mapping.get(c, 14) for c in gdf["KOD_PLODINY"]]
    g = scene.grid
    label = rasterio.features.rasterize(zip(gdf.geometry, classes), out_shape=g.shape, transform=g.transform, fill=0, dtype="uint8")
    pid = rasterio.features.rasterize(zip(gdf.geometry, gdf["ID_DPB"].astype("int32")), out_shape=g.shape, transform=g.transform, fill=0, dtype="int32")
    return label, pid


def independent_s2(scene) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(T, 10, H, W) harmonized DN and (T, H, W) SCL straight from the COGs with numpy."""
    items = json.loads(Path(scene.items).read_text())["features"]
    root = Path(scene.items).parent
    g = scene.grid
    s2 = np.zeros((len(items), len(BANDS), g.height, g.width), np.uint16)
    scl = np.zeros((len(items), g.height, g.width), np.uint8)
    for t, it in enumerate(items):
        for b, band in enumerate(BANDS + ("SCL",)):
            a = it["assets"][band]
            with rasterio.open(root / a["href"]) as ds:
                arr = ds.read(1)
            if ds.res[0] == 20:
                arr = np.repeat(np.repeat(arr, 2, 0), 2, 1)
            if band == "SCL":
                scl[t] = arr
            else:
                off = int(round(a.get("raster:offset", 0) / a.get("raster:scale", 1e-4)))
                s2[t, b] = np.where(arr > 0, np.maximum(arr.astype(int) + off, 1), 0)
    return s2, scl, [it["properties"]["datetime"][:10] for it in items]


def store_arrays(path) -> dict:
    ds = xr.open_zarr(path)
    out = {k: ds[k].values for k in list(ds.data_vars) + list(ds.coords)}
    out["attrs"] = {k: v for k, v in ds.attrs.items()}
    return out


def assert_same_store(a, b):
    a, b = store_arrays(a), store_arrays(b)
    assert sorted(a) == sorted(b)
    for k in a:
        if k == "attrs":
            assert json.dumps(a[k], sort_keys=True) == json.dumps(b[k], sort_keys=True)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ----------------------------------------------------------------------------- the build


def test_patches_equal_independent_reads(demo_scene, store):
    path, summary = store
    ds = open_store(path)
    assert ds["s2"].dtype == np.uint16 and ds["label"].dtype == np.uint8 and ds["parcel_id"].dtype == np.int32
    assert ds["s2"].dims == ("patch", "time", "band", "y", "x")
    assert ds["s2"].data.chunksize[0] == 1  # one patch per chunk
    label, pid = independent_labels(demo_scene)
    s2, scl, dates = independent_s2(demo_scene)
    kept_dates = [d for d in dates if d not in summary.dates_dropped["33UWQ"]]
    keep_t = [dates.index(d) for d in kept_dates]
    g = demo_scene.grid
    n = ds.sizes["patch"]
    assert n == summary.n_patches > 4
    for k in range(n):
        p = ds.isel(patch=k)
        r, c = int(p["row"]), int(p["col"])
        win = (slice(r * PATCH, (r + 1) * PATCH), slice(c * PATCH, (c + 1) * PATCH))
        assert float(p["x0"]) == g.x0 + c * PATCH * 10 and float(p["y0"]) == g.y0 - r * PATCH * 10
        np.testing.assert_array_equal(p["label"].values, label[win], err_msg=f"label patch {k}")
        np.testing.assert_array_equal(p["parcel_id"].values, pid[win], err_msg=f"parcel_id patch {k}")
        np.testing.assert_array_equal(p["s2"].values[: len(keep_t)], s2[keep_t][:, :, win[0], win[1]], err_msg=f"s2 patch {k}")
        assert [str(d)[:10] for d in p["dates"].values[: len(keep_t)]] == kept_dates
        clear = clear_mask(scl[keep_t][:, win[0], win[1]], DEFAULT_UNCLEAR_SCL).mean(axis=(1, 2))
        np.testing.assert_allclose(p["clear"].values[: len(keep_t)], clear, rtol=0, atol=1e-6)
        cover = np.isin(label[win], range(1, 14)).mean()
        assert cover >= OPTS["min_crop_cover"]
    assert str(ds["tile"].values[0]) == "33UWQ" and int(ds["epsg"].values[0]) == 32633


def test_pass2_workers_run_with_malloc_tuned(store, cluster):
    """The workers that wrote the store's patches allocate their blocks from the heap
    (crop2seg_pipeline.malloc): a fresh mmap per chunk was a third of pass 2's CPU."""
    from crop2seg_pipeline.malloc import malloc_tuned

    assert True in cluster.run(malloc_tuned).values()  # (a worker that got no pass-2 chunk is not)


def test_skipped_patches_are_the_low_cover_ones(demo_scene, store):
    path, summary = store
    label, _ = independent_labels(demo_scene)
    g = demo_scene.grid
    low = 0
    for r in range(g.height // PATCH):
        for c in range(g.width // PATCH):
            win = label[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH]
            low += np.isin(win, range(1, 14)).mean() < OPTS["min_crop_cover"]
    assert summary.skipped["low_crop_cover"] == low
    assert summary.n_patches + low + summary.skipped["no_data"] == (g.height // PATCH) * (g.width // PATCH)


def test_normalization_is_pooled_over_clear_train_pixels(demo_scene, store):
    """Mean/std per band over the clear, valid (> 0) pixels of the train patches, sampled every
    MOMENTS_STEP-th row and column of each patch."""
    path, _ = store
    ds = open_store(path)
    train = np.flatnonzero(ds["split"].values.astype(object) == "train")
    _, scl, dates = independent_s2(demo_scene)
    s2 = ds["s2"].values[train].astype(np.float64)  # (k, T, B, y, x)
    t_kept = int((~np.isnat(ds["dates"].values[0])).sum())
    rows, cols = ds["row"].values[train], ds["col"].values[train]
    dropped = set(json.loads(json.dumps(ds.attrs["dates_dropped"]))["33UWQ"])
    keep_t = [i for i, d in enumerate(dates) if d not in dropped]
    mean, std = [], []
    for b in range(len(BANDS)):
        vals = []
        for k, (r, c) in enumerate(zip(rows, cols)):
            clr = clear_mask(scl[keep_t][:, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH], DEFAULT_UNCLEAR_SCL)
            x = s2[k, :t_kept, b]
            sample = (slice(None), slice(None, None, MOMENTS_STEP), slice(None, None, MOMENTS_STEP))
            x, clr = x[sample], clr[sample]
            vals.append(x[clr & (x > 0)])
        v = np.concatenate(vals)
        mean.append(v.mean())
        std.append(v.std())
    norm = ds.attrs["normalization"]["train"]
    np.testing.assert_allclose(norm["mean"], mean, rtol=1e-9)
    np.testing.assert_allclose(norm["std"], std, rtol=1e-9)


def test_splits_are_spatial_blocks_and_deterministic(demo_scene, store, tmp_path):
    path, summary = store
    ds = open_store(path)
    split = ds["split"].values.astype(object)
    blocks = {}
    for s, r, c in zip(split, ds["row"].values, ds["col"].values):
        blocks.setdefault((r // 2, c // 2), set()).add(s)
    assert all(len(v) == 1 for v in blocks.values())  # a block never straddles splits
    assert set(split) == {"train", "val", "test"}
    assert summary.splits["train"] > summary.splits["val"] > 0 and summary.splits["test"] > 0
    # same seed, same splits (pass-1 only logic: rebuild quickly on the threaded scheduler)
    other = build_dataset(demo_scene.items, demo_scene.parcels, tmp_path / "again.zarr", mapping=demo_scene.mapping, **OPTS)
    np.testing.assert_array_equal(open_store(other.store)["split"].values.astype(object), split)
    assert_same_store(path, other.store)  # threaded scheduler == LocalCluster


def test_footprints_and_summary(store):
    path, summary = store
    fp = gpd.read_file(Path(path) / "patches.gpkg")
    assert len(fp) == summary.n_patches and fp.crs.to_epsg() == 32633
    assert set(fp.columns) >= {"patch", "tile", "row", "col", "split", "crop_cover", "main_class", "geometry"}
    assert np.allclose(fp.geometry.area, (PATCH * 10) ** 2)
    assert summary.unmapped_codes.get("UHOR", 0) >= 1
    assert summary.parcels["n_repaired"] == 1
    text = summary.format()
    assert "patches" in text and "UHOR" in text
    built = json.loads((Path(path) / "build.json").read_text())
    assert built["n_patches"] == summary.n_patches


def test_torch_dataset_reads_patches_lazily(store):
    path, _ = store
    ds = open_store(path)
    data = PatchDataset(path, split="train")
    assert len(data) == int((ds["split"].values.astype(object) == "train").sum())
    sample = data[0]
    idx = sample["index"]
    t = sample["s2"].shape[0]
    norm = ds.attrs["normalization"]["train"]
    raw = ds["s2"].values[idx, :t].astype(np.float32)
    exp = (raw - np.array(norm["mean"], np.float32)[None, :, None, None]) / np.array(norm["std"], np.float32)[None, :, None, None]
    np.testing.assert_allclose(sample["s2"].numpy(), exp, rtol=1e-6)
    np.testing.assert_array_equal(sample["label"].numpy(), ds["label"].values[idx])
    days = (ds["dates"].values[idx, :t].astype("datetime64[D]") - np.datetime64(data.reference_date, "D")).astype(float)
    np.testing.assert_array_equal(sample["positions"].numpy(), days)
    batch = collate_patches([data[0], data[1]])
    assert batch["s2"].shape[:3] == (2, t, 10) and batch["pad_mask"].shape == (2, t)


# ----------------------------------------------------------------------------- clusters and resume


def _cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "crop2seg_pipeline", *args], capture_output=True, text=True, env=env, **kw)


def test_real_scheduler_and_two_workers_give_identical_store(demo_scene, store, tmp_path):
    path, _ = store
    sched_file = tmp_path / "scheduler.json"
    # `python -m` with this interpreter: the processes import this checkout's package
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(sched_file),
                               "--port", "0", "--dashboard-address", "127.0.0.1:0", "--host", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        address = wait_for_scheduler_file(sched_file, procs[0])
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                           "--nworkers", "1", "--no-dashboard"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address) as client:
            client.wait_for_workers(2, timeout=DEADLINE_S)
            out = tmp_path / "remote.zarr"
            build_dataset(demo_scene.items, demo_scene.parcels, out, mapping=demo_scene.mapping, client=client, **OPTS)
            assert len(client.scheduler_info()["workers"]) == 2
        assert_same_store(path, out)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=DEADLINE_S)


def test_interrupt_and_resume_equals_clean_build(demo_scene, store, tmp_path):
    """The CLI killed mid-build (SIGKILL, no cleanup), then re-run: equal to a clean build.

    The test hook holds the worker after 3 pass-2 tasks, so the kill lands with exactly 3 chunks
    done whatever the machine's load."""
    path, summary = store
    out = tmp_path / "resumed.zarr"
    args = ["build-dataset", "--items", str(demo_scene.items), "--parcels", str(demo_scene.parcels), "--out", str(out),
            "--mapping", str(demo_scene.mapping), "--patch-size", str(PATCH), "--chunksize", str(2 * PATCH),
            "--min-crop-cover", "0.3", "--split-block", "2", "--seed", "3", "--workers", "1"]
    cmd = start_command(args, tmp_path, "killed", env={"CROP2SEG_TEST_HOLD_AT": "pass2:3",
                                                       "CROP2SEG_TEST_RESUME_FILE": str(tmp_path / "never")})
    cmd.wait_for("CROP2SEG_TEST_HELD pass2")
    os.killpg(cmd.pid, signal.SIGKILL)
    cmd.wait()
    done_before = len(list((out / ".crop2seg" / "done").glob("*.json")))
    ds = open_store(path)
    n_chunks = len(set(zip(ds["row"].values // 2, ds["col"].values // 2)))
    assert done_before == 3 < n_chunks  # really interrupted mid-way
    with pytest.raises(StoreError, match="incomplete"):
        open_store(out)
    res = _cli(*args, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "already done" in res.stdout and "resuming" in res.stderr
    assert_same_store(path, out)


# ----------------------------------------------------------------------------- bad inputs


def _parcels_copy(scene, tmp_path, transform) -> Path:
    gdf = gpd.read_file(scene.parcels)
    gdf = transform(gdf)
    p = tmp_path / "parcels.gpkg"
    gdf.to_file(p, driver="GPKG")
    return p


def test_disjoint_parcels_write_nothing(demo_scene, tmp_path):
    p = _parcels_copy(demo_scene, tmp_path, lambda g: g.set_geometry(g.geometry.translate(200_000, 0)))
    out = tmp_path / "out.zarr"
    with pytest.raises(ParcelError, match="do not overlap"):
        build_dataset(demo_scene.items, p, out, mapping=demo_scene.mapping, **OPTS)
    assert not out.exists()


def test_empty_parcels_write_nothing(demo_scene, tmp_path):
    p = _parcels_copy(demo_scene, tmp_path, lambda g: g.iloc[0:0])
    out = tmp_path / "out.zarr"
    with pytest.raises(ParcelError, match="empty"):
        build_dataset(demo_scene.items, p, out, mapping=demo_scene.mapping, **OPTS)
    assert not out.exists()


def test_parcels_without_crop_attribute(demo_scene, tmp_path):
    p = _parcels_copy(demo_scene, tmp_path, lambda g: g.drop(columns=["KOD_PLODINY"]))
    out = tmp_path / "out.zarr"
    res = _cli("build-dataset", "--items", str(demo_scene.items), "--parcels", str(p), "--out", str(out))
    assert res.returncode != 0
    assert "KOD_PLODINY" in res.stderr and "--crop-column" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_corrupt_cog_fails_names_file_and_resumes_after_fix(demo_scene, store, tmp_path):
    path, _ = store
    scene = tmp_path / "scene"
    shutil.copytree(Path(demo_scene.items).parent, scene)
    victim = sorted((scene / "S2").glob("*/B11.tif"))[4]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) * 6 // 10])  # truncated: full-resolution tiles (last in a COG) gone
    out = tmp_path / "out.zarr"
    with pytest.raises(ReadError, match=victim.name):
        build_dataset(scene / "items.json", scene / "parcels.gpkg", out, mapping=scene / "crop_mapping.csv", **OPTS)
    with pytest.raises(StoreError, match="incomplete"):
        open_store(out)  # nothing a re-run or a reader would trust
    victim.write_bytes(good)
    build_dataset(scene / "items.json", scene / "parcels.gpkg", out, mapping=scene / "crop_mapping.csv", **OPTS)
    ref = store_arrays(path)
    got = store_arrays(out)
    for k in ("s2", "label", "parcel_id", "dates", "clear", "split"):
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_foreign_store_path_is_refused_and_untouched(demo_scene, tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="not a crop2seg patch store"):
            build_dataset(demo_scene.items, demo_scene.parcels, out, mapping=demo_scene.mapping, overwrite=overwrite, **OPTS)
    assert (out / "chapter1.tex").read_text() == "precious" and len(list(out.iterdir())) == 1


def test_changed_parameters_need_overwrite(demo_scene, store, tmp_path):
    path, _ = store
    out = tmp_path / "p.zarr"
    shutil.copytree(path, out)
    with pytest.raises(StoreError, match="--overwrite"):
        build_dataset(demo_scene.items, demo_scene.parcels, out, mapping=demo_scene.mapping, **{**OPTS, "seed": 9})
    s = build_dataset(demo_scene.items, demo_scene.parcels, out, mapping=demo_scene.mapping, overwrite=True, **{**OPTS, "seed": 9})
    assert s.n_written == s.n_patches


def test_cli_help():
    res = _cli("build-dataset", "--help")
    assert res.returncode == 0
    for opt in ("--items", "--parcels", "--out", "--cluster", "--memory-limit", "--overwrite", "--min-crop-cover"):
        assert opt in res.stdout


def test_items_in_two_crss_build_with_epsg(small_scene, tmp_path):
    """Two dates reprojected to the neighbouring UTM zone (EPSG:32634) beside six in EPSG:32633:
    refused without a choice of CRS (the message names --epsg), built with --epsg 32633 (those
    two dates read through GDAL's warper, holding data like the others)."""
    import rasterio.warp

    root = tmp_path / "scene"
    shutil.copytree(Path(small_scene.items).parent, root)
    doc = json.loads((root / "items.json").read_text())
    for it in doc["features"][:2]:
        it["properties"]["proj:code"] = "EPSG:32634"
        for a in it["assets"].values():
            if "proj:transform" not in a:
                continue
            path = root / a["href"]
            with rasterio.open(path) as src:
                transform, w, h = rasterio.warp.calculate_default_transform(
                    src.crs, "EPSG:32634", src.width, src.height, *src.bounds, resolution=src.res)
                data = np.zeros((h, w), src.dtypes[0])
                rasterio.warp.reproject(src.read(1), data, src_transform=src.transform, src_crs=src.crs,
                                        dst_transform=transform, dst_crs="EPSG:32634", src_nodata=0, dst_nodata=0)
                profile = {**src.profile, "driver": "GTiff", "crs": "EPSG:32634", "transform": transform,
                           "width": w, "height": h, "tiled": False}
                profile.pop("blockxsize", None), profile.pop("blockysize", None)
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(data, 1)
            a.update({"proj:code": "EPSG:32634", "proj:shape": [h, w], "proj:transform": list(transform)[:6]})
    (root / "items.json").write_text(json.dumps(doc))
    args = ["build-dataset", "--items", str(root / "items.json"), "--parcels", str(root / "parcels.gpkg"),
            "--mapping", str(root / "crop_mapping.csv"), "--patch-size", "64", "--chunksize", "128",
            "--workers", "1", "--min-crop-cover", "0"]
    res = _cli(*args, "--out", str(tmp_path / "refused.zarr"), timeout=DEADLINE_S)
    assert res.returncode == 1 and "--epsg 32633" in res.stderr and "Dask dashboard" not in res.stdout, res.stderr
    assert not (tmp_path / "refused.zarr").exists()
    out = tmp_path / "two-crs.zarr"
    res = _cli(*args, "--out", str(out), "--epsg", "32633", timeout=DEADLINE_S)
    assert res.returncode == 0, res.stdout + res.stderr
    ds = open_store(out)
    assert set(ds["epsg"].values.tolist()) == {32633}
    s2 = ds["s2"].values
    dates = ds["dates"].values[0]
    warped = [k for k, d in enumerate(dates) if str(d)[:10] in {it["properties"]["datetime"][:10] for it in doc["features"][:2]}]
    assert warped, "the reprojected dates were dropped"
    for k in range(len(dates)):
        if np.isnat(dates[k]):
            continue
        share = (s2[:, k] > 0).mean()
        assert share > 0.5, (k, share)  # data, not a silently empty date
