"""The block reader: equal to the lazy cube pixel for pixel, SCL-only reads, checks against items."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crop2seg_pipeline.blocks import cube_source, read_block, read_file_window, read_scl
from crop2seg_pipeline.cube import cube_grid_of, load_cube
from crop2seg_pipeline.errors import ReadError
from crop2seg_pipeline.items import normalize_items
from crop2seg_pipeline.nomenclature import BANDS

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _absolute_items(scene) -> list[dict]:
    items = json.loads(Path(scene.items).read_text())["features"]
    base = Path(scene.items).parent
    for it in items:
        for a in it["assets"].values():
            a["href"] = str(base / a["href"])
    return items


@pytest.fixture(scope="module")
def cube_and_source(small_scene):
    cube = load_cube(small_scene.items, chunksize=96)
    norm = normalize_items(small_scene.items)
    return cube["s2"].values, cube["scl"].values, cube_source(norm, cube_grid_of(cube))


def _expected(full: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """The window of a (..., H, W) array, 0 outside it."""
    h, w = full.shape[-2:]
    out = np.zeros(full.shape[:-2] + (r1 - r0, c1 - c0), full.dtype)
    ra, rb, ca, cb = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    if rb > ra and cb > ca:
        out[..., ra - r0 : rb - r0, ca - c0 : cb - c0] = full[..., ra:rb, ca:cb]
    return out


windows = st.tuples(st.integers(-40, 250), st.integers(-40, 250), st.integers(1, 140), st.integers(1, 140))


@PROPERTY
@given(win=windows, dates=st.lists(st.integers(0, 7), min_size=1, max_size=5), flip=st.booleans())
def test_block_equals_the_lazy_cube(cube_and_source, win, dates, flip):
    s2, scl, src = cube_and_source
    r0, c0, h, w = win
    bands = list(BANDS[::-1]) if flip else None
    block, block_scl = read_block(src, (r0, r0 + h, c0, c0 + w), dates, bands, scl=True)
    exp = _expected(s2, r0, r0 + h, c0, c0 + w)[dates]
    if flip:
        exp = exp[:, ::-1]
    np.testing.assert_array_equal(block, exp)
    np.testing.assert_array_equal(block_scl, _expected(scl, r0, r0 + h, c0, c0 + w)[dates])
    np.testing.assert_array_equal(read_scl(src, (r0, r0 + h, c0, c0 + w), dates), block_scl)


@PROPERTY
@given(win=windows)
def test_20m_file_window_is_the_2x2_repeat(small_scene, win):
    """Any 10 m window of a 20 m file, odd offsets and edges included, is the exact 2 x 2 repeat."""
    r0, c0, h, w = win
    path = Path(small_scene.items).parent / json.loads(Path(small_scene.items).read_text())["features"][0]["assets"]["B11"]["href"]
    with rasterio.open(path) as ds:
        full = ds.read(1)
    up = np.repeat(np.repeat(full, 2, 0), 2, 1)
    got = read_file_window(str(path), small_scene.grid.window(r0, c0, h, w))
    np.testing.assert_array_equal(got, _expected(up, r0, r0 + h, c0, c0 + w))


def test_bilinear_20m_equals_the_lazy_cube(small_scene):
    cube = load_cube(small_scene.items, chunksize=128, resampling_20m="bilinear")
    src = cube_source(normalize_items(small_scene.items), cube_grid_of(cube), resampling_20m="bilinear")
    np.testing.assert_array_equal(read_block(src, (37, 201, 11, 150), [0, 3]),
                                  cube["s2"].values[[0, 3], :, 37:201, 11:150])


def test_same_day_items_merge_as_in_the_cube(small_scene, tmp_path):
    """A second item of the first day covering only the east half: read_block and read_scl merge
    it first-valid exactly as the cube does."""
    items = _absolute_items(small_scene)
    first = items[0]
    half = {}
    for band, a in first["assets"].items():
        with rasterio.open(a["href"]) as ds:
            prof, arr = ds.profile, ds.read(1)
        arr[:, : arr.shape[1] // 2] = 0
        prof.update(driver="GTiff")
        dst = tmp_path / f"east_{band}.tif"
        with rasterio.open(dst, "w", **prof) as out:
            out.write(arr, 1)
        half[band] = {**a, "href": str(dst)}
    east = json.loads(json.dumps(first))
    east["id"] = first["id"] + "-east"
    east["assets"] = half
    mixed = [east] + items  # the east half has priority on that day
    cube = load_cube(mixed, chunksize=100)
    src = cube_source(normalize_items(mixed), cube_grid_of(cube))
    assert len(src.groups[0]) == 2
    block, scl = read_block(src, (0, 256, 0, 256), [0, 1], scl=True)
    np.testing.assert_array_equal(block, cube["s2"].values[:2])
    np.testing.assert_array_equal(scl, cube["scl"].values[:2])
    np.testing.assert_array_equal(read_scl(src, (0, 256, 0, 256), [0, 1]), scl)


def test_scl_reads_never_touch_reflectance(small_scene, tmp_path):
    """With every reflectance file gone, SCL still reads (same pixels) and reflectance fails."""
    items = _absolute_items(small_scene)
    norm = normalize_items(items)
    grid = cube_grid_of(load_cube(items, chunksize=256))
    expected = read_scl(cube_source(norm, grid), (0, 64, 0, 64))
    for it in norm:
        for band in BANDS:
            it["assets"][band]["href"] = str(tmp_path / "gone" / f"{it['id']}_{band}.tif")
    src = cube_source(norm, grid)
    result = {}
    # a fresh thread: nothing open in its file cache
    t = threading.Thread(target=lambda: result.update(scl=read_scl(src, (0, 64, 0, 64))))
    t.start()
    t.join()
    np.testing.assert_array_equal(result["scl"], expected)
    with pytest.raises(ReadError, match="gone"):
        read_block(src, (0, 64, 0, 64), [0])


@pytest.mark.parametrize("what", ["transform", "epsg", "shape"])
def test_file_disagreeing_with_its_item_is_named(small_scene, what):
    items = normalize_items(small_scene.items)
    grid = small_scene.grid
    asset = items[2]["assets"]["B04"]
    if what == "transform":
        t = list(asset["proj:transform"])
        t[2] += 100.0
        asset["proj:transform"] = t
    elif what == "epsg":
        asset["proj:epsg"] = 32634
    else:
        asset["proj:shape"] = [asset["proj:shape"][0] + 2, asset["proj:shape"][1]]
    src = cube_source(items, grid)
    result = {}

    def run():
        try:
            read_block(src, (0, 64, 0, 64), [2], ["B04"])
        except ReadError as e:
            result["error"] = str(e)

    t = threading.Thread(target=run)  # a fresh file cache: the file is checked on first open
    t.start()
    t.join()
    msg = result["error"]
    assert items[2]["id"] in msg and "B04" in msg and "disagrees with its item" in msg
    assert {"transform": "transform", "epsg": "EPSG:32634", "shape": "shape"}[what] in msg


def test_missing_file_is_permanent_and_named(small_scene, tmp_path):
    items = normalize_items(small_scene.items)
    items[1]["assets"]["B03"]["href"] = str(tmp_path / "nope.tif")
    src = cube_source(items, small_scene.grid)
    with pytest.raises(ReadError, match="nope.tif") as e:
        read_block(src, (0, 32, 0, 32), [1], ["B03"])
    assert "attempts" not in str(e.value)  # not retried
    assert items[1]["id"] in str(e.value)
