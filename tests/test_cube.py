"""The lazy cube equals direct rasterio reads of the same COG windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
from rasterio.enums import Resampling

from crop2seg_pipeline.cube import clear_sky, load_cube
from crop2seg_pipeline.errors import ReadError
from crop2seg_pipeline.nomenclature import BANDS, DEFAULT_UNCLEAR_SCL


def _raw_items(scene) -> list[dict]:
    return json.loads(Path(scene.items).read_text())["features"]


def _href(scene, item, band) -> Path:
    return Path(scene.items).parent / item["assets"][band]["href"]


def _offset_dn(item, band) -> int:
    """Independent reading of the item metadata: raster:offset / raster:scale in DN."""
    a = item["assets"][band]
    return int(round(a.get("raster:offset", 0.0) / a.get("raster:scale", 1e-4)))


def _direct(scene, item, band, row, col, n, resampling=None):
    """Read an n x n window at 10 m pixel (row, col) straight from the band's COG."""
    path = _href(scene, item, band)
    with rasterio.open(path) as ds:
        res = ds.transform.a
        if res == 10:
            return ds.read(1, window=((row, row + n), (col, col + n)))
        if resampling is None:  # nearest: each 20 m pixel covers 2 x 2 output pixels
            w = ds.read(1, window=((row // 2, (row + n + 1) // 2), (col // 2, (col + n + 1) // 2)))
            up = np.repeat(np.repeat(w, 2, axis=0), 2, axis=1)
            return up[row % 2 : row % 2 + n, col % 2 : col % 2 + n]
        g = scene.grid
        dst = np.zeros((n, n), dtype=ds.dtypes[0])
        rasterio.warp.reproject(
            rasterio.band(ds, 1), dst, src_nodata=0, dst_nodata=0,
            dst_transform=g.transform * rasterio.Affine.translation(col, row), dst_crs=ds.crs,
            resampling=resampling,
        )
        return dst


def _harmonize(a: np.ndarray, offset: int) -> np.ndarray:
    out = np.where(a > 0, np.maximum(a.astype(np.int64) + offset, 1), 0)
    return out.astype(np.uint16)


@pytest.mark.parametrize("chunks", [64, 100])
def test_cube_equals_direct_reads(small_scene, chunks):
    """Whole scene, two chunkings: 10 m bands exact, 20 m bands = 2 x 2 repeat, offsets harmonized."""
    cube = load_cube(small_scene.items, chunksize=chunks)
    assert cube["s2"].dims == ("time", "band", "y", "x") and cube["s2"].dtype == np.uint16
    assert cube["s2"].data.chunks[0] == (cube.sizes["time"],) and cube["s2"].data.chunks[1] == (10,)
    assert list(cube["band"].values) == list(BANDS)
    g = small_scene.grid
    assert cube.attrs["transform"] == list(g.transform)[:6]
    assert cube.sizes["y"] == g.height and cube.sizes["x"] == g.width
    s2 = cube["s2"].values
    scl = cube["scl"].values
    items = _raw_items(small_scene)
    assert len(items) == s2.shape[0]
    for t, item in enumerate(items):
        for b, band in enumerate(BANDS):
            expected = _harmonize(_direct(small_scene, item, band, 0, 0, g.height), _offset_dn(item, band))
            np.testing.assert_array_equal(s2[t, b], expected, err_msg=f"date {t} band {band}")
        np.testing.assert_array_equal(scl[t], _direct(small_scene, item, "SCL", 0, 0, g.height))


def test_bbox_subset_on_odd_20m_phase(small_scene):
    """A bbox starting mid-way in a 20 m pixel is snapped so 10 m pixels never straddle 20 m ones."""
    g = small_scene.grid
    bbox = (g.x0 + 330, g.y0 - 900, g.x0 + 910, g.y0 - 210)  # 33 px / 21 px: odd offsets
    cube = load_cube(small_scene.items, bbox=bbox, bbox_crs=32633, chunksize=32)
    row = int(round((g.y0 - (cube["y"].values[0] + 5)) / 10))
    col = int(round((cube["x"].values[0] - 5 - g.x0) / 10))
    assert row % 2 == 0 and col % 2 == 0  # snapped to the 20 m grid
    assert cube["x"].values[0] - 5 <= bbox[0] and cube["x"].values[-1] + 5 >= bbox[2]
    n = cube.sizes["y"]
    item = _raw_items(small_scene)[3]
    for band in ("B04", "B11"):
        got = cube["s2"].sel(band=band).isel(time=3).values
        exp = _harmonize(_direct(small_scene, item, band, row, col, n)[:, : cube.sizes["x"]], _offset_dn(item, band))
        np.testing.assert_array_equal(got, exp[: got.shape[0], : got.shape[1]])


def test_bilinear_20m_matches_gdal_warp(small_scene):
    """``resampling_20m='bilinear'`` equals GDAL's bilinear warp of the 20 m band onto the 10 m grid."""
    cube = load_cube(small_scene.items, resampling_20m="bilinear", chunksize=128)
    item = _raw_items(small_scene)[0]
    got = cube["s2"].sel(band="B05").isel(time=0).values.astype(int)
    exp = _harmonize(_direct(small_scene, item, "B05", 0, 0, small_scene.grid.height, Resampling.bilinear),
                     _offset_dn(item, "B05")).astype(int)
    inner = (slice(2, -2), slice(2, -2))  # edge pixels depend on GDAL's border handling
    assert np.abs(got[inner] - exp[inner]).max() <= 1
    nearest = load_cube(small_scene.items, chunksize=128)["s2"].sel(band="B05").isel(time=0).values.astype(int)
    assert np.abs(got - nearest).mean() > 0  # it really resampled differently


def test_clear_sky_mask_follows_scl(small_scene):
    cube = load_cube(small_scene.items, chunksize=128)
    clear = clear_sky(cube).values
    scl = cube["scl"].values
    assert clear.dtype == bool and clear.shape == scl.shape
    np.testing.assert_array_equal(clear, ~np.isin(scl, DEFAULT_UNCLEAR_SCL))
    only_nodata = clear_sky(cube, unclear_scl=[0]).values
    np.testing.assert_array_equal(only_nodata, scl != 0)
    # the demo has a nearly all-cloudy date: its clear share is far below the scene's median
    share = clear.mean(axis=(1, 2))
    assert share.min() < 0.1 < np.median(share)


def test_same_day_items_are_merged(small_scene, tmp_path):
    """Two items of one date (e.g. two halves of a datatake) become one date, first valid wins."""
    items = _raw_items(small_scene)
    base = Path(small_scene.items).parent
    first = items[0]
    half = {}
    for band, a in first["assets"].items():
        src = base / a["href"]
        dst = tmp_path / f"half_{band}.tif"
        with rasterio.open(src) as ds:
            prof, arr = ds.profile, ds.read(1)
        arr = arr.copy()
        arr[:, : arr.shape[1] // 2] = 0  # the copy only covers the east half
        prof.update(driver="GTiff")
        with rasterio.open(dst, "w", **prof) as out:
            out.write(arr, 1)
        half[band] = {**a, "href": str(dst)}
    dup = json.loads(json.dumps(first))
    dup["id"] = first["id"] + "-east"
    dup["assets"] = half
    for it in items:
        for a in it["assets"].values():
            a["href"] = str(base / a["href"])
    merged = load_cube([dup] + items, chunksize=128)
    plain = load_cube(items, chunksize=128)
    assert merged.sizes["time"] == plain.sizes["time"]
    assert "+" in str(merged["item_id"].values[0])
    np.testing.assert_array_equal(merged["s2"].values, plain["s2"].values)
    np.testing.assert_array_equal(merged["scl"].values, plain["scl"].values)


def test_corrupt_cog_names_the_file(small_scene, tmp_path):
    items = _raw_items(small_scene)
    base = Path(small_scene.items).parent
    for it in items:
        for a in it["assets"].values():
            a["href"] = str(base / a["href"])
    bad = tmp_path / "B03.tif"
    good = Path(items[1]["assets"]["B03"]["href"])
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 3] + b"\0garbage" * 100)  # truncated + junk
    items[1]["assets"]["B03"]["href"] = str(bad)
    cube = load_cube(items, chunksize=128)
    with pytest.raises(ReadError, match="B03.tif"):
        cube["s2"].isel(time=1).sel(band="B03").values


def _served_items(scene, url):
    items = _raw_items(scene)
    for it in items:
        for a in it["assets"].values():
            a["href"] = f"{url}/{a['href']}"
    return items


def test_remote_cogs_transient_errors_are_retried(small_scene):
    """COGs served over HTTP (loopback): a file that answers 503 twice is read all the same."""
    from httpserver import serve

    with serve(Path(small_scene.items).parent) as srv:
        items = _served_items(small_scene, srv.url)
        flaky = items[0]["assets"]["B02"]["href"].split(srv.url + "/")[1]
        srv.failures[flaky] = 2
        cube = load_cube(items, chunksize=256, check_files=False)
        got = cube["s2"].isel(time=0).sel(band="B02").values
        exp = _harmonize(_direct(small_scene, _raw_items(small_scene)[0], "B02", 0, 0, small_scene.grid.height),
                         _offset_dn(items[0], "B02"))
        np.testing.assert_array_equal(got, exp)
        assert srv.requests[flaky] > 2 and srv.failures[flaky] == 0


def test_remote_cog_that_keeps_failing_is_named(small_scene):
    from httpserver import serve

    with serve(Path(small_scene.items).parent) as srv:  # a new port: nothing cached by GDAL
        items = _served_items(small_scene, srv.url)
        broken = items[1]["assets"]["B03"]["href"].split(srv.url + "/")[1]
        srv.failures[broken] = 10**6
        with pytest.raises(ReadError, match=broken.replace(".", r"\.")):
            load_cube(items, chunksize=256, check_files=False)["s2"].values
        assert srv.requests[broken] >= 4  # GDAL and the reader retried before giving up
