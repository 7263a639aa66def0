"""crop2seg-report: the numbers against independent numpy/pandas computations, the page in headless
Chromium, the one-patch-per-task reduction, and bad inputs.

The store is a real build of the 512 px demo scene (64 px patches: 57 patches, 10 dates); the
prediction is a real crop2seg-predict run of the shipped demo weights on the 256 px demo scene,
with a crop mapping that declares two crops as the wrong class (confident disagreements).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
import zarr
from click.testing import CliRunner
from dask.core import get_dependencies
from PIL import Image

from browser import inspect_page
from crop2seg_pipeline.build import build_dataset
from crop2seg_pipeline.cli.report import report_cmd
from crop2seg_pipeline.errors import ReportError
from crop2seg_pipeline.nomenclature import CLASS_COLORS, CLASS_NAMES
from crop2seg_pipeline.predict import default_demo_weights, predict
from crop2seg_pipeline.report import make_report
from crop2seg_pipeline.report.prediction import parcel_window, read_prediction, read_window
from crop2seg_pipeline.report.store_stats import store_statistics, store_statistics_graph

MIN_CLEAR = 0.9


@pytest.fixture(scope="module")
def store(demo_scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-store") / "patches.zarr"
    build_dataset(demo_scene.items, demo_scene.parcels, out, mapping=demo_scene.mapping, patch_size=64,
                  min_crop_cover=0.3, split_block=2, seed=3, progress=lambda m: None)
    return out


@pytest.fixture(scope="module")
def store_report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-of-store") / "report"
    summary = make_report(store, out, min_clear=MIN_CLEAR, progress=lambda m: None)
    return out, summary


@pytest.fixture(scope="module")
def prediction(small_scene, tmp_path_factory):
    base = tmp_path_factory.mktemp("report-pred")
    mapping = base / "wrong_mapping.csv"
    rows = list(csv.DictReader(open(small_scene.mapping, newline="")))
    for r in rows:  # grassland declared as Other crops, winter wheat as Maize: confident disagreements
        if r["crop_code"] == "TTP":
            r["class_id"] = "13"
        if r["crop_code"] == "PSE_O":
            r["class_id"] = "6"
    with open(mapping, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = base / "prediction"
    predict(small_scene.items, default_demo_weights(), out, parcels=small_scene.parcels, mapping=mapping,
            chunksize=128, progress=lambda m: None)
    return out


@pytest.fixture(scope="module")
def prediction_report(prediction, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-of-pred") / "report"
    summary = make_report(prediction, out, top=5, progress=lambda m: None)
    return out, summary


# ----------------------------------------------------------------------------- independent references


def numpy_profiles(store, patches, feature, min_clear=MIN_CLEAR) -> dict[tuple[int, str], tuple[int, float, float]]:
    """(class, date) -> (n, mean, std) of a feature with plain numpy, patch by patch, date by date."""
    g = zarr.open_group(str(store), mode="r")
    bands = list(json.loads((Path(store) / "zarr.json").read_text())["attributes"]["bands"])
    ds = xr.open_zarr(store)
    dates = ds["dates"].values.astype("datetime64[D]")
    clear = ds["clear"].values
    acc = defaultdict(list)
    for p in patches:
        x = g["s2"][p]
        lab = g["label"][p]
        for t in range(x.shape[0]):
            if np.isnat(dates[p, t]) or not clear[p, t] >= min_clear:
                continue
            if feature == "NDVI":
                red, nir = x[t, bands.index("B04")].astype(float), x[t, bands.index("B08")].astype(float)
                ok = (red > 0) & (nir > 0)
                v = (nir - red) / np.where(ok, nir + red, 1)
            else:
                dn = x[t, bands.index(feature)]
                ok = dn > 0
                v = dn / 10000.0
            for k in np.unique(lab):
                m = ok & (lab == k)
                if m.any():
                    acc[(int(k), str(dates[p, t]))].append(v[m])
    return {key: (sum(a.size for a in vs), float(np.concatenate(vs).mean()), float(np.concatenate(vs).std()))
            for key, vs in acc.items()}


def assert_profiles_equal(table: pd.DataFrame, ref: dict) -> None:
    got = table[table["n_pixels"] > 0]
    assert len(got) == len(ref) > 20
    for r in got.itertuples():
        n, mean, std = ref[(r.class_id, r.date)]
        assert r.n_pixels == n
        assert r.mean == pytest.approx(mean, rel=1e-9, abs=1e-12)
        assert r.std == pytest.approx(std, rel=1e-6, abs=1e-9)


# ----------------------------------------------------------------------------- store report: numbers


def test_ndvi_profiles_match_numpy_on_a_few_patches(store):
    patches = [0, 7, 21, 40]
    st = store_statistics(store, patches=patches, min_clear=MIN_CLEAR, progress=lambda m: None)
    assert_profiles_equal(st.profile("NDVI"), numpy_profiles(store, patches, "NDVI"))
    assert_profiles_equal(st.profile("B08"), numpy_profiles(store, patches, "B08"))


def test_report_profiles_of_the_whole_store_match_numpy(store, store_report):
    out, _ = store_report
    n = xr.open_zarr(store).sizes["patch"]
    table = pd.read_csv(out / "profile_NDVI.csv", dtype={"date": str})
    assert_profiles_equal(table, numpy_profiles(store, range(n), "NDVI"))
    # the threshold matters: with no clear-sky rule more pixels enter
    loose = store_statistics(store, min_clear=0.0, progress=lambda m: None).profile("NDVI")
    assert loose["n_pixels"].sum() > table["n_pixels"].sum()


def test_class_distribution_is_pixels_and_distinct_parcels_per_split(store, store_report):
    out, _ = store_report
    ds = xr.open_zarr(store)
    table = pd.read_csv(out / "class_distribution.csv")
    counts = ds.attrs["class_pixel_counts"]  # the build's own per-split counts
    for split in ("train", "val", "test"):
        assert table[f"pixels_{split}"].tolist() == counts[split]
    labels, pids, splits = ds["label"].values, ds["parcel_id"].values, np.array([str(s) for s in ds["split"].values])
    for split in ("train", "val", "test"):
        sel = splits == split
        pairs = {(int(c), int(p)) for c, p in zip(labels[sel].ravel(), pids[sel].ravel()) if p > 0}
        expected = np.bincount([c for c, _ in pairs], minlength=15)
        assert table[f"parcels_{split}"].tolist() == expected.tolist()
    assert table["parcels_train"].sum() > 20


def test_clear_sky_per_date(store, store_report):
    out, _ = store_report
    ds = xr.open_zarr(store)
    dates = ds["dates"].values.astype("datetime64[D]").astype(str)
    clear = ds["clear"].values
    table = pd.read_csv(out / "clear_sky.csv", dtype={"date": str})
    assert list(table["date"]) == sorted(set(dates.ravel()) - {"NaT"})
    for r in table.itertuples():
        m = dates == r.date
        assert r.patches == m.sum()
        assert r.mean_clear == pytest.approx(clear[m].mean(), rel=1e-6)
        assert r.patches_usable == (clear[m] >= MIN_CLEAR).sum()
    # the threshold is inclusive: fully clear patch-dates are used with min_clear 1
    st = store_statistics(store, min_clear=1.0, progress=lambda m: None)
    assert st.patches_usable.sum() == (clear == 1.0).sum() > 0


def test_reduction_reads_one_patch_per_task_and_adds_few_results_at_a_time(store):
    """Peak memory by construction: a task holds one patch's chunks, or <= split_every small summaries."""
    total, ds, _, _ = store_statistics_graph(store, split_every=4)
    graph = dict(total.__dask_graph__())
    s2 = ds["s2"].data.name
    n = ds.sizes["patch"]
    assert ds["s2"].data.chunks[0] == (1,) * n  # one patch per chunk
    patch_tasks = [k for k in graph if str(k).startswith("report-patch-")]
    assert len(patch_tasks) == n
    seen = []
    for k in patch_tasks:
        deps = get_dependencies(graph, k)
        s2_deps = [d for d in deps if isinstance(d, tuple) and d[0] == s2]
        assert len(s2_deps) == 1 and len(deps) == 3, (k, deps)
        seen += s2_deps
    assert len(set(seen)) == n
    for k in graph:
        if str(k).startswith("report-combine-"):
            deps = get_dependencies(graph, k)
            assert 1 <= len(deps) <= 4 and all(str(d).startswith("report-") for d in deps)
    # and nothing else in the graph reads s2 chunks
    readers = [k for k in graph if any(isinstance(d, tuple) and d[0] == s2 for d in get_dependencies(graph, k))]
    assert sorted(map(str, readers)) == sorted(map(str, patch_tasks))


def test_store_report_on_a_real_cluster_equals_the_local_one(store, store_report, tmp_path):
    from distributed import Client, LocalCluster

    out, _ = store_report
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, Client(lc) as c:
        make_report(store, tmp_path / "r", min_clear=MIN_CLEAR, client=c, progress=lambda m: None)
    for name in ("profile_NDVI.csv", "profile_B11.csv", "class_distribution.csv", "clear_sky.csv"):
        assert (tmp_path / "r" / name).read_bytes() == (out / name).read_bytes(), name


# ----------------------------------------------------------------------------- the page in a browser


def check_page(html: Path, tmp_path: Path, min_images: int) -> dict:
    seen = inspect_page(html, tmp_path / "chromium-profile")
    assert seen["errors"] == []
    assert all(u.startswith(("file://", "data:")) for u in seen["requests"]), seen["requests"]
    imgs = seen["images"]
    assert len(imgs) >= min_images
    for im in imgs:
        assert im["w"] > 0 and im["h"] > 0, im
        assert im["variance"] > 5.0 and im["distinct"] >= 4, im  # not a blank canvas
    return seen


def test_store_report_opens_in_chromium_with_every_figure_drawn(store_report, tmp_path):
    out, summary = store_report
    seen = check_page(out / "index.html", tmp_path, min_images=8)
    files = {im["file"] for im in seen["images"]}
    assert {"class_distribution.png", "profile_NDVI.png", "profile_B04.png", "clear_sky.png", "patch_map.png",
            "normalization.png"} <= files
    assert seen["title"].startswith("Patch store report")
    for name in files:  # the PNGs beside the page are the embedded ones
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "report.json").read_text())
    assert manifest["kind"] == "store" and set(manifest["files"]) == {p.name for p in out.iterdir()}


def test_prediction_report_opens_in_chromium_with_every_figure_drawn(prediction_report, tmp_path):
    out, _ = prediction_report
    seen = check_page(out / "index.html", tmp_path, min_images=5 + 4)
    files = [im["file"] for im in seen["images"]]
    assert {"quicklook.png", "class_area.png", "agreement.png", "parcel_confusion.png"} <= set(files)
    assert len([f for f in files if f.startswith("parcel_0")]) == 5


def test_the_page_check_catches_blank_figures_and_broken_images(store_report, tmp_path):
    """The browser check can fail: a blank figure and a missing image are caught."""
    out, _ = store_report
    buf = tmp_path / "blank.png"
    Image.new("RGB", (300, 200), "white").save(buf)
    import base64

    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>t</title></head><body>"
        f"<img data-file='blank' src='data:image/png;base64,{base64.b64encode(buf.read_bytes()).decode()}'>"
        "<img data-file='missing' src='missing.png'></body></html>"
    )
    seen = inspect_page(page, tmp_path / "profile")
    by = {im["file"]: im for im in seen["images"]}
    assert by["blank"]["variance"] == 0 and by["missing"]["w"] == 0
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in seen["errors"]), seen["errors"]


# ----------------------------------------------------------------------------- prediction report: numbers


def test_prediction_report_numbers(prediction, prediction_report):
    out, _ = prediction_report
    parcels = gpd.read_file(prediction / "parcels.gpkg")
    flag = parcels["agreement"].astype("boolean")
    agree = pd.read_csv(out / "agreement.csv")
    for r in agree.itertuples():
        sel = parcels["declared_class"] == r.declared_class
        assert r.n_parcels == sel.sum()
        assert r.n_compared == flag[sel].notna().sum()
        assert r.n_agree == flag[sel].fillna(False).sum()
    top = pd.read_csv(out / "top_disagreements.csv")
    dis = parcels[flag.fillna(True) == False]  # noqa: E712
    assert len(dis) >= 5 and len(top) == 5
    expected = dis.sort_values(["mean_confidence", "predicted_share", "parcel_id"], ascending=[False, False, True])
    assert top["parcel_id"].tolist() == expected["parcel_id"].head(5).tolist()
    assert (top["declared_name"] != top["predicted_name"]).all()
    summary = json.loads((prediction / "summary.json").read_text())
    area = pd.read_csv(out / "class_area.csv")
    assert area["area_ha"].tolist() == pytest.approx([summary["area_ha"][n] for n in CLASS_NAMES])


def test_prediction_figures_use_the_cog_colour_table(prediction, prediction_report):
    out, _ = prediction_report
    pred = read_prediction(prediction)
    with rasterio.open(prediction / "classes.tif") as ds:
        cmap = ds.colormap(1)
    assert pred.colors == [tuple(cmap[k][:3]) for k in range(15)] == list(CLASS_COLORS)
    img = np.asarray(Image.open(out / "class_area.png").convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(img, axis=0)}
    for k in np.flatnonzero(pred.area_ha > 0.03 * pred.area_ha.max()):  # bars wide enough to have a fill
        assert CLASS_COLORS[k] in colours, CLASS_NAMES[k]


def test_thumbnails_are_read_by_small_windows(prediction):
    pred = read_prediction(prediction)
    with rasterio.open(pred.classes_tif) as ds:
        transform, full = ds.transform, ds.read(1)
    with rasterio.open(pred.classes_tif) as ds:
        b = ds.bounds
    bx = pred.parcels.geometry.bounds
    inside = pred.parcels[(bx.minx > b.left + 100) & (bx.maxx < b.right - 100) & (bx.miny > b.bottom + 100)
                          & (bx.maxy < b.top - 100)]
    row = inside.loc[inside.geometry.area.idxmax()]  # the largest parcel well inside the raster
    win = parcel_window(row.geometry.bounds, transform, pred.shape)
    assert 0 < win.width < pred.shape[1] and 0 < win.height < pred.shape[0]
    minx, miny, maxx, maxy = row.geometry.bounds
    left, top = transform * (win.col_off, win.row_off)
    right, bottom = transform * (win.col_off + win.width, win.row_off + win.height)
    assert left <= minx and right >= maxx and bottom <= miny and top >= maxy  # the parcel is inside
    crop = read_window(pred.classes_tif, win)
    r0, c0 = int(win.row_off), int(win.col_off)
    assert np.array_equal(crop, full[r0 : r0 + int(win.height), c0 : c0 + int(win.width)])
    small = read_window(pred.classes_tif, win, max_side=8)
    assert max(small.shape) <= 8
    with pytest.raises(ReportError, match="outside"):
        parcel_window((0, 0, 10, 10), transform, pred.shape)


# ----------------------------------------------------------------------------- re-runs, CLI, bad inputs


def test_rerun_replaces_its_own_report_and_keeps_other_files(prediction, tmp_path):
    out = tmp_path / "r"
    make_report(prediction, out, top=4, progress=lambda m: None)
    first = {p.name for p in out.iterdir()}
    (out / "my-notes.txt").write_text("mine")
    make_report(prediction, out, top=2, progress=lambda m: None)
    second = {p.name for p in out.iterdir()}
    assert len([n for n in first if n.startswith("parcel_0")]) == 4
    assert len([n for n in second if n.startswith("parcel_0")]) == 2  # stale thumbnails removed
    assert "my-notes.txt" in second and (out / "my-notes.txt").read_text() == "mine"
    assert not [n for n in second if n.startswith(".")]


def test_cli_reports_a_store_on_a_local_cluster_and_a_prediction_without_one(store, prediction, tmp_path):
    res = CliRunner().invoke(report_cmd, [str(store), "--out", str(tmp_path / "s"), "--workers", "1",
                                          "--bands", "B02,B12", "-q"])
    assert res.exit_code == 0, res.output
    assert "Dask dashboard" in res.output and (tmp_path / "s" / "profile_B12.png").is_file()
    assert not (tmp_path / "s" / "profile_B11.png").exists()
    res = CliRunner().invoke(report_cmd, [str(prediction), "--out", str(tmp_path / "p"), "-q"])
    assert res.exit_code == 0, res.output
    assert "Dask dashboard" not in res.output and (tmp_path / "p" / "index.html").is_file()


def _nothing_written(out: Path, before: set[str] | None = None) -> bool:
    if before is None:
        return not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return {p.name for p in out.iterdir()} == before


def _fails(args: list[str], match: str) -> None:
    res = CliRunner().invoke(report_cmd, args)
    assert res.exit_code != 0
    assert match in res.output, res.output


def test_bad_sources(tmp_path, store, prediction):
    out = tmp_path / "out"
    _fails([str(tmp_path / "nope"), "--out", str(out)], "does not exist")
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("a,b\n")
    _fails([str(other), "--out", str(out)], "neither a crop2seg patch store")
    # an incomplete store (an interrupted build)
    bad = tmp_path / "incomplete.zarr"
    shutil.copytree(store, bad)
    meta = json.loads((bad / "zarr.json").read_text())
    meta["attributes"]["complete"] = False
    (bad / "zarr.json").write_text(json.dumps(meta))
    _fails([str(bad), "--out", str(out)], "incomplete patch store")
    # an unfinished prediction (summary.json is written last)
    half = tmp_path / "half"
    shutil.copytree(prediction, half)
    (half / "summary.json").unlink()
    _fails([str(half), "--out", str(out)], "incomplete prediction folder")
    _fails([str(store), "--out", str(out), "--bands", "B04,B99"], "no band(s) ['B99']")
    _fails([str(store), "--out", str(out), "--min-clear", "1.5"], "--min-clear must be in [0, 1]")
    _fails([str(prediction), "--out", str(out), "--top", "-1"], "--top must be >= 0")
    assert _nothing_written(out)
    assert (other / "data.csv").read_text() == "a,b\n"


def test_bad_output_folders(tmp_path, store, prediction):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    _fails([str(prediction), "--out", str(foreign)], "not a crop2seg report (thesis.tex)")
    assert _nothing_written(foreign, {"thesis.tex"}) and (foreign / "thesis.tex").read_text() == "keep me"
    afile = tmp_path / "a-file"
    afile.write_text("x")
    _fails([str(prediction), "--out", str(afile)], "is a file")
    _fails([str(prediction), "--out", str(prediction)], "inside the report's source")
    _fails([str(store), "--out", str(store / "report")], "inside the report's source")
    assert not (store / "report").exists()
    before = {p.name for p in prediction.iterdir()}
    _fails([str(prediction), "--out", str(prediction.parent)], "not a crop2seg report")
    assert {p.name for p in prediction.iterdir()} == before
    # a file named like a report's manifest is not enough
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "report.json").write_text('{"format": "something-else", "files": ["report.json"]}')
    _fails([str(prediction), "--out", str(fake)], "not a crop2seg report")
    assert (fake / "report.json").read_text().startswith('{"format": "something-else"')


def test_moment_kernel_on_a_hand_computed_patch():
    from crop2seg_pipeline.kernels.profiles import class_date_moments, moments_to_mean_std

    bands = {"B04": 0, "B08": 1}
    s2 = np.zeros((3, 2, 2, 2), np.uint16)
    s2[:, 0] = 100  # red
    s2[:, 1] = [[300, 100], [0, 900]]  # nir; (1, 0) is nodata
    label = np.array([[1, 1], [1, 2]], np.uint8)
    m = class_date_moments(s2, label, np.array([0, -1, 1]), n_dates=2, n_classes=3, band_index=bands,
                           features=("NDVI", "B08"))
    n, mean, std = moments_to_mean_std(m)
    # class 1: NDVI 0.5 and 0.0 (the nodata pixel left out) on dates 0 and 1 (the middle date is dropped)
    assert n[1, :, 0].tolist() == [2, 2] and mean[1, :, 0] == pytest.approx([0.25, 0.25])
    assert std[1, 0, 0] == pytest.approx(0.25)
    assert n[2, 0, 0] == 1 and mean[2, 0, 0] == pytest.approx(0.8) and std[2, 0, 0] == 0
    assert mean[2, 0, 1] == pytest.approx(0.09)  # B08 reflectance = DN / 10000
    assert n[0].sum() == 0 and np.isnan(mean[0]).all()
