"""The web app's parts without a browser: area and cells, the cache, jobs (one run per request),
the true-colour background and parcel NDVI against independent numpy computations, results,
and the command's checks of bad arguments (before anything starts).

The browser tests are in ``test_app_browser.py``.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.features
import shapely.geometry
from click.testing import CliRunner

from crop2seg_pipeline.app.area import (
    CROP2SEG_CELL_PX, Area, Tile, cell_grid, check_area, default_cell_size, open_area, parse_bbox,
)
from crop2seg_pipeline.app.cache import MARKER, AppCache, CacheError
from crop2seg_pipeline.app.composite import composite_resolution, median_composite, true_colour
from crop2seg_pipeline.app.jobs import JobRunner, PredictRequest
from crop2seg_pipeline.app.ndvi import parcel_ndvi
from crop2seg_pipeline.app.results import class_rgba, disagreeing, load_result
from crop2seg_pipeline.cli.app import app_cmd
from crop2seg_pipeline.errors import Crop2SegError, EmptySelectionError
from crop2seg_pipeline.grid import Grid
from crop2seg_pipeline.items import normalize_items
from crop2seg_pipeline.nomenclature import CLASS_COLORS, DEFAULT_UNCLEAR_SCL
from crop2seg_pipeline.outputs import validate_cog
from crop2seg_pipeline.predict import default_demo_weights


# ----------------------------------------------------------------------------- area and cells


def _tile_area(size_px: int) -> Area:
    grid = Grid(32633, 499980.0, 5500020.0, 10.0, size_px, size_px)
    return Area("x", "0" * 64, 32633, grid, (Tile("33UWQ", grid.bounds),), ("2022-01-01",), (None,))


def test_a_whole_tile_gets_crop2segs_10_x_10_cells_of_1098_px():
    area = _tile_area(10980)
    assert default_cell_size(area) == CROP2SEG_CELL_PX
    cells = cell_grid(area, CROP2SEG_CELL_PX)
    assert len(cells) == 100
    assert {(c.row, c.col) for c in cells} == {(r, c) for r in range(10) for c in range(10)}
    assert all(np.isclose(c.bounds[2] - c.bounds[0], 10980.0) and np.isclose(c.bounds[3] - c.bounds[1], 10980.0)
               for c in cells)
    union = shapely.union_all([shapely.geometry.box(*c.bounds) for c in cells])
    assert np.isclose(union.area, (10980 * 10.0) ** 2)


def test_a_small_area_gets_several_cells_that_cover_it(small_scene):
    area = open_area(str(small_scene.items))
    assert area.grid == small_scene.grid
    assert area.dates == tuple(d.isoformat() for d in small_scene.dates)
    size = default_cell_size(area)
    assert size == 128
    cells = cell_grid(area, size)
    assert len(cells) == 4
    union = shapely.union_all([shapely.geometry.box(*c.bounds) for c in cells])
    assert union.equals(shapely.geometry.box(*area.bounds))
    assert cell_grid(area, 100)[-1].bounds[0] == area.bounds[0] + 200 * 10  # edge cells clipped to the tile
    assert len(cell_grid(area, 100)) == 9


def test_bad_items_and_areas_say_what_to_change(small_scene, tmp_path):
    with pytest.raises(EmptySelectionError, match="no items file given"):
        open_area("  ")
    with pytest.raises(Crop2SegError, match="cannot read STAC items"):
        open_area(str(tmp_path / "missing.json"))
    (tmp_path / "empty.json").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(EmptySelectionError, match="no STAC items"):
        open_area(str(tmp_path / "empty.json"))
    area = open_area(str(small_scene.items))
    with pytest.raises(EmptySelectionError, match="no item intersects"):
        check_area(area, (0, 0, 1000, 1000), None, None)
    with pytest.raises(EmptySelectionError, match="no item between"):
        check_area(area, area.bounds, "2030-01-01", "2030-02-01")
    assert check_area(area, area.bounds, None, None) == area.grid
    with pytest.raises(ValueError, match="4 numbers"):
        parse_bbox("1,2,3")
    with pytest.raises(ValueError, match="minx < maxx"):
        parse_bbox("3,2,1,4")


# ----------------------------------------------------------------------------- the cache


def test_cache_lists_and_deletes_only_its_own_entries(tmp_path):
    cache = AppCache(tmp_path / "c").ensure()
    cache.write_marker("predictions", "a" * 24, status="complete", description="mine")
    (cache.path("predictions", "a" * 24) / "classes.tif").write_bytes(b"x" * 1000)
    foreign = cache.root / "predictions" / ("b" * 24)
    foreign.mkdir()
    (foreign / "data.txt").write_text("someone else's")
    (cache.root / "notes.txt").write_text("also not the app's")
    entries = cache.entries()
    assert [(e.kind, e.key) for e in entries] == [("predictions", "a" * 24)]
    assert entries[0].size_bytes > 1000 and entries[0].n_files == 2
    with pytest.raises(CacheError, match="not written by the app"):
        cache.delete("predictions", "b" * 24)
    with pytest.raises(CacheError, match="bad cache key"):
        cache.delete("predictions", "../../etc")
    assert [p.name for p in cache.files("predictions", "a" * 24)] == ["classes.tif"]
    assert cache.delete("predictions", "a" * 24) > 1000
    assert not cache.path("predictions", "a" * 24).exists()
    assert (foreign / "data.txt").exists() and (cache.root / "notes.txt").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(CacheError, match="not a folder"):
        AppCache(tmp_path / "file")


def test_an_entry_being_written_is_locked_for_other_processes_and_not_deleted(tmp_path):
    cache = AppCache(tmp_path / "c").ensure()
    key = "c" * 24
    cache.write_marker("predictions", key, status="running")
    probe = ("import fcntl, sys; fh = open(sys.argv[1], 'a+')\n"
             "try:\n    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)\n")
    lock_file = str(cache.root / "predictions" / f"{key}.lock")
    with cache.lock("predictions", key):
        assert subprocess.run([sys.executable, "-c", probe, lock_file]).returncode == 3
        assert cache.is_locked("predictions", key)
        with pytest.raises(CacheError, match="being written"):
            cache.delete("predictions", key)
    assert subprocess.run([sys.executable, "-c", probe, lock_file]).returncode == 0
    assert not cache.is_locked("predictions", key)


# ----------------------------------------------------------------------------- jobs


def _request(scene, area: Area, bbox, **kw) -> PredictRequest:
    return PredictRequest(items=str(scene.items), items_digest=area.digest, weights=str(default_demo_weights()),
                          bbox=bbox, epsg=area.epsg, parcels=str(scene.parcels), mapping=str(scene.mapping), **kw)


def test_identical_requests_run_once_and_share_one_entry(small_scene, tmp_path):
    area = open_area(str(small_scene.items))
    cache = AppCache(tmp_path / "cache").ensure()
    runner = JobRunner(cache, client=None, parallel=2)
    cell = cell_grid(area, 128)[1]
    request = _request(small_scene, area, cell.bounds)
    with cache.lock("predictions", request.key()):  # as if another tab's job were writing the entry
        first = runner.submit(request)
        second = runner.submit(_request(small_scene, area, cell.bounds))
        assert second is first and not first.done and first.state == "queued"
    assert first.wait(300) and first.state == "done", first.error
    assert runner.runs == 1 and not first.from_cache
    # every chunk reported (how many depends on the weights' window: a cell is cut to one window per chunk)
    assert any(re.match(r"predict: (\d+)/\1 chunks", line) for line in first.lines) and first.percent == 100.0
    assert runner.submit(_request(small_scene, area, cell.bounds)) is first and runner.runs == 1
    restarted = JobRunner(cache, client=None)  # another app process on the same cache
    third = restarted.submit(_request(small_scene, area, cell.bounds))
    assert third.done and third.from_cache and restarted.runs == 0
    with rasterio.open(first.folder / "classes.tif") as ds:
        assert tuple(ds.bounds) == cell.bounds
    assert validate_cog(first.folder / "classes.tif") == []
    assert json.loads((first.folder / MARKER).read_text())["status"] == "complete"
    other = runner.submit(_request(small_scene, area, cell.bounds, overlap=16))  # another request, another folder
    assert other.key != first.key
    assert other.wait(300) and other.state == "done"
    assert sorted(p.name for p in (cache.root / "predictions").iterdir() if p.is_dir()) == sorted([first.key, other.key])


def test_a_failed_prediction_is_a_message_and_leaves_no_entry(small_scene, tmp_path):
    area = open_area(str(small_scene.items))
    cache = AppCache(tmp_path / "cache").ensure()
    runner = JobRunner(cache, client=None)
    job = runner.submit(_request(small_scene, area, area.bounds, start="2030-01-01", end="2030-12-31"))
    assert job.wait(120) and job.state == "failed"
    assert "no item between" in job.error and "Traceback" not in job.error
    assert not job.folder.exists()


# ----------------------------------------------------------------------------- background and NDVI


def _independent_reads(scene, bands):
    """Per date: the COG pixels read with rasterio, offsets harmonized, SCL repeated 2 x 2."""
    norm = normalize_items(str(scene.items))
    out = []
    for it in norm:
        off = it["properties"]["crop2seg:dn_offset"]
        arrs = []
        for b in bands:
            with rasterio.open(it["assets"][b]["href"]) as ds:
                a = ds.read(1).astype(np.int32)
            arrs.append(np.where(a > 0, np.maximum(a + off, 1), 0))
        with rasterio.open(it["assets"]["SCL"]["href"]) as ds:
            scl = np.repeat(np.repeat(ds.read(1), 2, axis=0), 2, axis=1)
        out.append((np.stack(arrs), scl))
    return norm, out


def test_background_is_the_median_of_clear_dates(small_scene, tmp_path):
    area = open_area(str(small_scene.items))
    med, grid, n = median_composite(area)
    assert grid == small_scene.grid and n == len(small_scene.dates)
    _, reads = _independent_reads(small_scene, ("B04", "B03", "B02"))
    s2 = np.stack([r[0] for r in reads]).astype(np.float32)  # (t, 3, y, x)
    scl = np.stack([r[1] for r in reads])
    valid = (s2 > 0).all(axis=1)
    clear = ~np.isin(scl, DEFAULT_UNCLEAR_SCL) & valid
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)
        want = np.nanmedian(np.where(clear[:, None], s2, np.nan), axis=0)
        fallback = np.nanmedian(np.where(valid[:, None], s2, np.nan), axis=0)
    want = np.where(np.isnan(want), fallback, want)
    np.testing.assert_allclose(med, want, rtol=0, atol=1e-3)
    assert np.isfinite(med).all()
    cache = AppCache(tmp_path / "c").ensure()
    comp = true_colour(area, cache)
    assert comp.rgba.shape == (256, 256, 4) and (comp.rgba[..., 3] == 255).all()
    again = true_colour(area, cache)  # from the cache, same pixels
    assert np.array_equal(again.rgba, comp.rgba) and again.grid == comp.grid
    assert [e.kind for e in cache.entries()] == ["backgrounds"]


def test_reduced_resolution_for_large_areas():
    assert composite_resolution(_tile_area(512), 1024) == 10.0
    assert composite_resolution(_tile_area(10980), 1024) == 120.0
    assert 10980 * 10 / composite_resolution(_tile_area(10980), 1024) <= 1024


def test_parcel_ndvi_matches_an_independent_computation(small_scene, tmp_path):
    import geopandas as gpd

    area = open_area(str(small_scene.items))
    parcels = gpd.read_file(small_scene.parcels).to_crs(area.epsg)
    geom = parcels.geometry.iloc[int(np.argmax(parcels.geometry.area.to_numpy()))]
    geom = geom.intersection(shapely.geometry.box(*area.bounds))
    cache = AppCache(tmp_path / "c").ensure()
    doc = parcel_ndvi(area, cache, geom, 7)
    _, reads = _independent_reads(small_scene, ("B04", "B08"))
    inside = rasterio.features.geometry_mask([geom], small_scene.grid.shape, small_scene.grid.transform, invert=True)
    want, counts = [], []
    for (s2, scl) in reads:
        red, nir = s2[0].astype(float), s2[1].astype(float)
        use = inside & ~np.isin(scl, DEFAULT_UNCLEAR_SCL) & (red > 0) & (nir > 0)
        counts.append(int(use.sum()))
        want.append(float(np.mean((nir[use] - red[use]) / (nir[use] + red[use]))) if use.any() else None)
    assert doc["n_pixels"] == int(inside.sum())
    assert doc["clear_pixels"] == counts
    assert doc["dates"] == [d.isoformat() for d in small_scene.dates]
    for got, exp in zip(doc["ndvi"], want):
        assert (got is None) == (exp is None)
        if exp is not None:
            assert abs(got - exp) < 1e-4
    assert parcel_ndvi(area, cache, geom, 7)["cached"] is True


# ----------------------------------------------------------------------------- results


def test_class_image_uses_the_cog_colour_table_and_background_shows_through():
    classes = np.array([[0, 1], [6, 13]], np.uint8)
    cmap = {k: (*c, 255) for k, c in enumerate(CLASS_COLORS)}
    rgba = class_rgba(classes, cmap)
    assert rgba[0, 0, 3] == 0
    for (r, c) in [(0, 1), (1, 0), (1, 1)]:
        assert tuple(rgba[r, c, :3]) == CLASS_COLORS[classes[r, c]] and rgba[r, c, 3] == 255


def test_disagreeing_parcels_most_confident_first_or_by_a_rank_column():
    df = pd.DataFrame({"parcel_id": [1, 2, 3, 4], "agreement": [True, False, None, False],
                       "mean_confidence": [0.9, 0.4, 0.8, 0.7], "geometry": [None] * 4})
    assert list(disagreeing(df)["parcel_id"]) == [4, 2]
    df["disagreement_rank"] = [None, 1, None, 2]
    assert list(disagreeing(df)["parcel_id"]) == [2, 4]


def test_load_result_reads_what_predict_wrote(small_scene, tmp_path):
    from crop2seg_pipeline.predict import predict

    area = open_area(str(small_scene.items))
    out = tmp_path / "pred"
    predict(str(small_scene.items), default_demo_weights(), out, parcels=small_scene.parcels,
            mapping=small_scene.mapping, bbox=cell_grid(area, 128)[0].bounds, bbox_crs=area.epsg)
    res = load_result(out)
    with rasterio.open(out / "classes.tif") as ds:
        classes = ds.read(1)
        assert res.bounds == tuple(ds.bounds)
    assert np.array_equal(res.classes, classes)
    present = {e.class_id for e in res.legend if e.area_ha > 0}
    assert present == set(np.unique(classes).tolist())
    assert all(e.rgb == CLASS_COLORS[e.class_id] for e in res.legend)
    assert len(res.parcels) > 0 and {p.name for p in res.files} >= {"classes.tif", "confidence.tif", "parcels.gpkg"}


# ----------------------------------------------------------------------------- the command


def test_cli_port_in_use_fails_before_anything_starts(small_scene, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = CliRunner().invoke(app_cmd, ["--items", str(small_scene.items), "--cache-dir", str(tmp_path / "c"),
                                         "--port", str(port)])
    assert r.exit_code == 1, r.output
    assert f"port {port} on 127.0.0.1 is already in use" in r.output and "--port" in r.output
    assert "Dask dashboard" not in r.output and "Traceback" not in r.output
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("args, message", [
    (["--items", "/nonexistent/items.json"], "cannot read STAC items"),
    (["--weights", "/nonexistent/weights"], "--weights"),
    (["--parcels", "/nonexistent/parcels.gpkg"], "does not exist"),
])
def test_cli_bad_arguments_fail_with_a_message(small_scene, tmp_path, args, message):
    base = ["--cache-dir", str(tmp_path / "c"), "--port", "0"]
    if "--items" not in args:
        base += ["--items", str(small_scene.items)]
    r = CliRunner().invoke(app_cmd, base + args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "c").exists()


def test_cli_cache_dir_that_is_a_file(small_scene, tmp_path):
    (tmp_path / "c").write_text("mine")
    r = CliRunner().invoke(app_cmd, ["--items", str(small_scene.items), "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code == 2 and "is a file" in r.output
    assert (tmp_path / "c").read_text() == "mine"


def test_app_command_is_registered():
    from crop2seg_pipeline.__main__ import main
    from crop2seg_pipeline.workflow import COMMANDS

    assert "app" in main.commands and "app" in COMMANDS
    r = CliRunner().invoke(main, ["app", "--help"])
    assert r.exit_code == 0 and "--cache-dir" in r.output and "loopback" in r.output
    assert Path(default_demo_weights(), "model.json").exists()


def test_nanmedian_kernel_equals_numpys():
    import warnings

    from crop2seg_pipeline.app.composite import nanmedian_last

    rng = np.random.default_rng(3)
    v = rng.normal(size=(50, 7)).astype(np.float32) * 1000
    v[rng.random(v.shape) < 0.4] = np.nan
    v[3] = np.nan  # a pixel with no valid date
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nanmedian(v, axis=-1)
    np.testing.assert_allclose(nanmedian_last(v), want, rtol=1e-6, equal_nan=True)
    assert np.isnan(nanmedian_last(v)[3])


def test_a_workflow_gives_the_app_its_defaults(tmp_path):
    from crop2seg_pipeline.workflow import defaults_for, load

    wf = tmp_path / "wf.yaml"
    wf.write_text("items: items.json\nparcels: p.gpkg\ntrain: {out: w}\napp: {cache_dir: cache, port: 8080}\n")
    names = {p.name for p in app_cmd.params}
    d = defaults_for(load(wf), "app", names)
    assert d == {"items": "items.json", "parcels": "p.gpkg", "weights": "w", "cache_dir": "cache", "port": 8080}
