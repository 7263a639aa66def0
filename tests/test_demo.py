"""Tests of the synthetic Sentinel-2 demo scene generator (crop2seg_pipeline.demo)."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
from rasterio.features import rasterize

from crop2seg_pipeline.demo import DemoScene, _build_landscape, make_demo_scene
from crop2seg_pipeline.errors import Crop2SegError
from crop2seg_pipeline.nomenclature import BANDS, NATIVE_RESOLUTION, SCL

SIZE, N_DATES, SEED = 256, 16, 0
ALL_ASSETS = (*BANDS, SCL)


@pytest.fixture(scope="module")
def scene256(tmp_path_factory) -> DemoScene:
    return make_demo_scene(tmp_path_factory.mktemp("demo") / "scene", size=SIZE, n_dates=N_DATES, seed=SEED)


@pytest.fixture(scope="module")
def items(scene256) -> list[dict]:
    return json.loads(scene256.items.read_text())["features"]


def _read(scene: DemoScene, date: dt.date, band: str) -> np.ndarray:
    with rasterio.open(scene.root / "S2" / date.strftime("%Y%m%d") / f"{band}.tif") as ds:
        return ds.read(1)


def _labels(scene: DemoScene) -> np.ndarray:
    """Class raster made the way the pipeline does it: parcels -> tile CRS -> mapping -> rasterize."""
    parcels = gpd.read_file(scene.parcels, layer="parcels").to_crs(scene.grid.crs)
    with open(scene.mapping, newline="", encoding="utf-8") as f:
        mapping = {r["crop_code"]: int(r["class_id"]) for r in csv.DictReader(f)}
    cls = [mapping.get(c, 14) for c in parcels["KOD_PLODINY"]]
    return rasterize(zip(parcels.geometry, cls), out_shape=scene.grid.shape,
                     transform=scene.grid.transform, fill=0, all_touched=False, dtype="uint8")


def _baseline_offset(date: dt.date) -> int:
    return 1000 if date >= dt.date(2022, 1, 25) else 0


# --- layout, rasters, COGs ----------------------------------------------------------------------
def test_scene_object_and_layout(scene256):
    root = scene256.root
    assert scene256.items == root / "items.json" and scene256.items.is_file()
    assert scene256.parcels == root / "parcels.gpkg" and scene256.parcels.is_file()
    assert scene256.mapping == root / "crop_mapping.csv" and scene256.mapping.is_file()
    assert (root / "scene.json").is_file()
    g = scene256.grid
    assert (g.epsg, g.resolution, g.shape) == (32633, 10.0, (SIZE, SIZE))
    # on the real Sentinel-2 grid of 33UWQ (origin 499980, 5500020), at a multiple of 60 m
    assert (g.x0 - 499980) % 60 == 0 and (5500020 - g.y0) % 60 == 0
    assert 499980 < g.x0 and g.x0 + SIZE * 10 < 499980 + 109800
    assert len(scene256.dates) == N_DATES
    assert list(scene256.dates) == sorted(set(scene256.dates))
    assert dt.date(2021, 9, 15) <= scene256.dates[0] and scene256.dates[-1] <= dt.date(2022, 10, 15)
    gaps = np.diff([d.toordinal() for d in scene256.dates])
    assert gaps.min() != gaps.max()  # irregular
    for d in scene256.dates:
        names = sorted(p.name for p in (root / "S2" / d.strftime("%Y%m%d")).iterdir())
        assert names == sorted(f"{b}.tif" for b in ALL_ASSETS)


def test_rasters_native_resolution_and_cog(scene256):
    g = scene256.grid
    for d in scene256.dates[:3]:
        for band in ALL_ASSETS:
            with rasterio.open(scene256.root / "S2" / d.strftime("%Y%m%d") / f"{band}.tif") as ds:
                res = NATIVE_RESOLUTION[band]
                n = SIZE * 10 // res
                assert ds.crs.to_epsg() == 32633
                assert (ds.height, ds.width, ds.count) == (n, n, 1)
                assert tuple(ds.transform)[:6] == (res, 0, g.x0, 0, -res, g.y0)
                assert ds.dtypes[0] == ("uint8" if band == SCL else "uint16")
                assert ds.nodata == 0
                assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
                assert ds.compression is not None and ds.compression.name.upper() == "DEFLATE"
                assert ds.block_shapes == [(256, 256)]  # square tiles, not strips


def test_overviews_on_larger_scene(tmp_path):
    scene = make_demo_scene(tmp_path / "s", size=640, n_dates=2, seed=1)
    folder = scene.root / "S2" / scene.dates[0].strftime("%Y%m%d")
    with rasterio.open(folder / "B02.tif") as ds:
        assert ds.profile["tiled"] and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.overviews(1)  # 640 px > one 256 tile: the COG carries overviews
    with rasterio.open(folder / "B11.tif") as ds:
        assert (ds.height, ds.width) == (320, 320) and ds.overviews(1)


def test_twenty_metre_bands_are_true_20m_data(scene256):
    """A 20 m band is not a 10 m band in disguise: its 2x2 neighbours are not repeated pixels."""
    d = scene256.dates[0]
    b05 = _read(scene256, d, "B05").astype(float)
    assert b05.shape == (SIZE // 2, SIZE // 2)
    # B8A (20 m) and B08 (10 m) see nearly the same signal: B08 block-averaged to 20 m matches B8A
    b08 = _read(scene256, d, "B08").astype(float)
    b8a = _read(scene256, d, "B8A").astype(float)
    b08_20 = b08.reshape(SIZE // 2, 2, SIZE // 2, 2).mean(axis=(1, 3))
    ok = (b8a > 0) & (b08_20 > 0)
    assert np.corrcoef(b08_20[ok], b8a[ok])[0, 1] > 0.9
    # and it is sharper than B8A upsampled: 10 m detail exists that 20 m data does not carry
    up = np.repeat(np.repeat(b8a, 2, 0), 2, 1)
    assert np.abs(np.diff(b08, axis=1)).mean() > np.abs(np.diff(up, axis=1)).mean()


# --- STAC -----------------------------------------------------------------------------------------
def test_items_load_with_pystac_and_match_files(scene256, items):
    ic = pystac.ItemCollection.from_dict(json.loads(scene256.items.read_text()))
    assert len(ic.items) == N_DATES
    for item, d in zip(ic.items, scene256.dates):
        assert item.datetime.date() == d and item.datetime.hour == 10
        p = item.properties
        assert p["constellation"] == "sentinel-2" and p["platform"] in ("sentinel-2a", "sentinel-2b")
        assert p["proj:code"] == "EPSG:32633" and p["grid:code"] == "MGRS-33UWQ"
        assert p["s2:mgrs_tile"] == "33UWQ"
        baseline = "04.00" if d >= dt.date(2022, 1, 25) else "03.01"
        assert p["s2:processing_baseline"] == baseline
        assert f"_N{baseline.replace('.', '')}_" in item.id and "_T33UWQ_" in item.id
        lon0, lat0, lon1, lat1 = item.bbox
        assert 15.0 < lon0 < lon1 < 15.5 and 49.3 < lat0 < lat1 < 49.6
        assert set(item.assets) == set(ALL_ASSETS)
        for key, asset in item.assets.items():
            href = asset.href
            assert not Path(href).is_absolute() and href == f"S2/{d.strftime('%Y%m%d')}/{key}.tif"
            assert asset.media_type == "image/tiff; application=geotiff; profile=cloud-optimized"
            assert asset.roles == ["data"]
            extra = asset.extra_fields
            with rasterio.open(scene256.root / href) as ds:
                assert extra["proj:shape"] == [ds.height, ds.width]
                assert extra["proj:transform"] == list(ds.transform)[:6]
                assert extra["proj:code"] == "EPSG:32633"
                assert extra["gsd"] == ds.transform.a
            assert extra["bands"][0]["name"] == key
            if key != SCL:
                assert extra["bands"][0]["eo:common_name"]
                assert extra["raster:scale"] == 0.0001
                assert extra["raster:offset"] == (-0.1 if baseline == "04.00" else 0.0)


def test_cloud_cover_is_the_real_scl_percentage(scene256, items):
    covers = []
    for item, d in zip(items, scene256.dates):
        scl = _read(scene256, d, SCL)
        valid = scl != 0
        real = 100.0 * np.isin(scl, (8, 9, 10)).sum() / valid.sum()
        assert item["properties"]["eo:cloud_cover"] == pytest.approx(real, abs=0.01)
        covers.append(real)
    covers = np.array(covers)
    assert covers.max() > 90 and covers[0] < 90  # one almost fully cloudy date, not the first
    assert covers.min() < 5  # and clear ones
    assert np.sum((covers > 5) & (covers < 80)) >= 3  # and partly cloudy ones in between


# --- pixels -----------------------------------------------------------------------------------------
def test_nodata_strip_and_valid_pixels_never_zero(scene256):
    n_strip = 0
    for d in scene256.dates:
        scl = _read(scene256, d, SCL)
        nod20 = scl == 0
        nod10 = np.repeat(np.repeat(nod20, 2, 0), 2, 1)
        if nod20.any():
            n_strip += 1
            assert 0.01 < nod20.mean() < 0.5
            # a strip along one side: whole run from the left or the right edge of every row
            rows = nod20.any(axis=1)
            assert rows.all()
            assert nod20[:, 0].all() or nod20[:, -1].all()
        for band in BANDS:
            a = _read(scene256, d, band)
            nod = nod20 if NATIVE_RESOLUTION[band] == 20 else nod10
            assert np.array_equal(a == 0, nod), (d, band)
    assert 1 <= n_strip <= N_DATES // 3


def test_scl_consistent_with_pixels(scene256):
    checked = 0
    for d in scene256.dates:
        scl = _read(scene256, d, SCL)
        scl10 = np.repeat(np.repeat(scl, 2, 0), 2, 1)
        b02 = _read(scene256, d, "B02").astype(float)
        b08 = _read(scene256, d, "B08").astype(float)
        clear = np.isin(scl10, (4, 5))
        cloud = np.isin(scl10, (8, 9))
        if cloud.sum() > 200 and clear.sum() > 200:
            assert b02[cloud].mean() > b02[clear].mean() + 1500
            assert b02[scl10 == 9].mean() > b02[scl10 == 8].mean()
            shadow = scl10 == 3
            if shadow.sum() > 200:
                assert b08[shadow].mean() < b08[clear].mean()
            checked += 1
        # vegetation flagged where NDVI is high, bare where it is low (clear pixels)
        b04 = _read(scene256, d, "B04").astype(float)
        off = _baseline_offset(d)
        ndvi = (b08 - b04) / np.maximum(b08 + b04 - 2 * off, 1)
        veg, bare = scl10 == 4, scl10 == 5
        if veg.sum() > 200 and bare.sum() > 200:
            assert ndvi[veg].mean() > ndvi[bare].mean() + 0.1
    assert checked >= 2


def test_water_is_dark_in_swir_and_flagged(scene256):
    land = _build_landscape(SIZE, SEED)
    water20 = land.water.reshape(SIZE // 2, 2, SIZE // 2, 2).all(axis=(1, 3))
    d = scene256.dates[0]
    scl = _read(scene256, d, SCL)
    b11 = _read(scene256, d, "B11").astype(float) - _baseline_offset(d)
    ok = water20 & (scl == 6)
    assert ok.sum() > 20
    assert b11[ok].mean() < 400 < b11[scl == 4].mean()


def test_baseline_offset_in_file_values(scene256):
    """A stable surface (evergreen forest) reads ~1000 DN higher on 04.00 dates than on 03.01 dates."""
    land = _build_landscape(SIZE, SEED)
    ever = np.isin(land.unit, land.kinds["forest_evergreen"])
    assert ever.sum() > 100
    means = {}
    for d in scene256.dates:
        scl10 = np.repeat(np.repeat(_read(scene256, d, SCL), 2, 0), 2, 1)
        m = ever & np.isin(scl10, (4, 5))
        if m.sum() > 50:
            means[d] = _read(scene256, d, "B03")[m].mean()
    old = [v for d, v in means.items() if d < dt.date(2022, 1, 25)]
    new = [v for d, v in means.items() if d >= dt.date(2022, 1, 25)]
    assert old and new
    assert np.mean(new) - np.mean(old) == pytest.approx(1000, abs=150)
    assert 200 < np.mean(old) < 1000  # a dark green canopy in reflectance*10000


# --- parcels ------------------------------------------------------------------------------------------
def test_parcels_file(scene256):
    p = gpd.read_file(scene256.parcels, layer="parcels")
    assert p.crs.to_epsg() == 5514
    assert {"ID_DPB", "KOD_PLODINY", "NAZEV_PLODINY", "VYMERA"} <= set(p.columns)
    assert p["ID_DPB"].dtype == np.int64 and p["ID_DPB"].is_unique
    assert (p["VYMERA"] > 0).all()
    assert set(p.geom_type) <= {"Polygon", "MultiPolygon"}
    assert (~p.is_valid).sum() == 1
    bad = p[~p.is_valid].geometry.iloc[0]
    assert "Self-intersection" in __import__("shapely").is_valid_reason(bad)
    with open(scene256.mapping, newline="", encoding="utf-8") as f:
        mapping = {r["crop_code"]: int(r["class_id"]) for r in csv.DictReader(f)}
    codes = set(p["KOD_PLODINY"])
    assert codes - set(mapping) == {"UHOR"}
    n_uhor = (p["KOD_PLODINY"] == "UHOR").sum()
    assert 1 <= n_uhor <= max(2, 0.05 * len(p))
    classes = {mapping[c] for c in codes if c in mapping}
    assert classes == set(range(1, 14))  # every class in a 256 px scene
    # realistic field sizes (ha), a few small ones
    ha = p.to_crs(32633).area / 1e4
    assert 8 < np.median(ha) < 30 and ha.max() < 120 and (ha < 5).any()
    # parcels stay near the scene: clipped to its bounds plus a margin
    minx, miny, maxx, maxy = p.to_crs(32633).total_bounds
    g0 = scene256.grid.bounds
    assert minx >= g0[0] - 500 and maxx <= g0[2] + 500 and miny >= g0[1] - 500 and maxy <= g0[3] + 500


def test_parcel_pixels_carry_the_parcels_signal(scene256):
    """Rasterizing the parcel file (as the pipeline will) gives exactly the generator's fields."""
    land = _build_landscape(SIZE, SEED)
    labels = _labels(scene256)
    truth = np.zeros_like(labels)
    cls = dict(zip(land.parcels["unit"], land.parcels["class_id"]))
    for u, c in cls.items():
        truth[land.unit == u] = c
    agree = (labels == truth).mean()
    assert agree > 0.999
    assert ((labels > 0) & (labels < 14)).mean() > 0.4  # mostly agricultural land
    assert (labels == 0).mean() > 0.15  # with background: forest, water, villages, balks
    # fields are separated by unparcelled balks: neighbouring parcels never touch (4-neighbours)
    pid = rasterize(zip(land.parcels.geometry, land.parcels["unit"]), out_shape=land.unit.shape,
                    transform=land.grid.transform, fill=0, dtype="int32")
    for a, b in ((pid[:, 1:], pid[:, :-1]), (pid[1:], pid[:-1])):
        touch = (a > 0) & (b > 0) & (a != b)
        assert touch.mean() < 0.002


def test_class_temporal_profiles_distinguishable(scene256):
    labels = _labels(scene256)

    def mean_ndvi(d, cls):
        scl10 = np.repeat(np.repeat(_read(scene256, d, SCL), 2, 0), 2, 1)
        off = _baseline_offset(d)
        red = _read(scene256, d, "B04").astype(float) - off
        nir = _read(scene256, d, "B08").astype(float) - off
        m = (labels == cls) & np.isin(scl10, (4, 5))
        if m.sum() < 30:
            return np.nan
        return float(((nir[m] - red[m]) / (nir[m] + red[m])).mean())

    may = [d for d in scene256.dates if dt.date(2022, 5, 1) <= d <= dt.date(2022, 6, 10)]
    aug = [d for d in scene256.dates if dt.date(2022, 7, 25) <= d <= dt.date(2022, 9, 5)]
    autumn = [d for d in scene256.dates if dt.date(2021, 10, 15) <= d <= dt.date(2021, 12, 15)]
    pairs = {"may": [], "aug": [], "autumn": []}
    for key, dates in (("may", may), ("aug", aug), ("autumn", autumn)):
        for d in dates:
            maize, wheat, rape = mean_ndvi(d, 6), mean_ndvi(d, 4), mean_ndvi(d, 5)
            pairs[key].append((maize, wheat, rape))
    may_ok = [(m, w) for m, w, _ in pairs["may"] if np.isfinite(m) and np.isfinite(w)]
    aug_ok = [(m, w) for m, w, _ in pairs["aug"] if np.isfinite(m) and np.isfinite(w)]
    aut_ok = [(w, r) for _, w, r in pairs["autumn"] if np.isfinite(r) and np.isfinite(w)]
    assert may_ok and aug_ok and aut_ok
    assert all(m < w - 0.2 for m, w in may_ok)  # maize still bare when winter cereals peak
    assert all(m > w + 0.2 for m, w in aug_ok)  # maize at its peak, cereals harvested
    assert all(r > w + 0.1 for w, r in aut_ok)  # rapeseed green in autumn, cereals just sown


def test_rapeseed_blooms_yellow():
    """On a date in full bloom, rapeseed has high green/red relative to blue (a yellow canopy)."""
    from crop2seg_pipeline.demo import _GREEN, _FLOWERS, _PROFILES, _day

    t, g, s, y = _PROFILES["rapeseed"]
    bloom = np.interp(_day("2022-05-05"), t, y)
    before = np.interp(_day("2022-04-05"), t, y)
    assert bloom > 0.4 and before == 0
    assert _FLOWERS[0][2] > 3 * _FLOWERS[0][0] and _FLOWERS[0][1] > 3 * _FLOWERS[0][0]
    assert _GREEN[2] < _GREEN[0] * 1.5


# --- determinism, reuse, refusal, validation ---------------------------------------------------------
def _all_arrays(scene: DemoScene) -> dict:
    out = {}
    for d in scene.dates:
        for band in ALL_ASSETS:
            out[(d, band)] = _read(scene, d, band)
    return out


def test_deterministic(tmp_path):
    a = make_demo_scene(tmp_path / "a", size=128, n_dates=4, seed=7)
    b = make_demo_scene(tmp_path / "b", size=128, n_dates=4, seed=7)
    c = make_demo_scene(tmp_path / "c", size=128, n_dates=4, seed=8)
    assert a.dates == b.dates and a.grid == b.grid
    arr_a, arr_b = _all_arrays(a), _all_arrays(b)
    assert arr_a.keys() == arr_b.keys()
    for k in arr_a:
        assert np.array_equal(arr_a[k], arr_b[k]), k
    pa = gpd.read_file(a.parcels, layer="parcels")
    pb = gpd.read_file(b.parcels, layer="parcels")
    assert pa.drop(columns="geometry").equals(pb.drop(columns="geometry"))
    assert pa.geometry.geom_equals_exact(pb.geometry, tolerance=0).all()
    ia = json.loads(a.items.read_text())
    ib = json.loads(b.items.read_text())
    assert ia == ib
    # another seed is another scene
    assert c.dates != a.dates or not np.array_equal(_read(c, c.dates[0], "B04"), arr_a[(a.dates[0], "B04")])


def test_reuse_marker_and_refusals(tmp_path):
    out = tmp_path / "scene"
    messages = []
    s1 = make_demo_scene(out, size=64, n_dates=2, seed=3, progress=messages.append)
    assert messages and any("date" in m for m in messages)
    marker = json.loads((out / "scene.json").read_text())
    assert marker["parameters"]["size"] == 64 and marker["parameters"]["n_dates"] == 2
    f = out / "S2" / s1.dates[1].strftime("%Y%m%d") / "B02.tif"
    mtime = f.stat().st_mtime_ns
    # same parameters: reused, nothing rewritten
    s2 = make_demo_scene(out, size=64, n_dates=2, seed=3)
    assert s2 == s1 and f.stat().st_mtime_ns == mtime
    # other parameters into the same folder: refused unless overwrite
    with pytest.raises(Crop2SegError, match="overwrite"):
        make_demo_scene(out, size=64, n_dates=3, seed=3)
    s3 = make_demo_scene(out, size=64, n_dates=3, seed=3, overwrite=True)
    assert len(s3.dates) == 3 and len(list((out / "S2").iterdir())) == 3
    # an interrupted generation (no scene.json) is never taken as complete: it is regenerated
    (out / "scene.json").unlink()
    f = out / "S2" / s3.dates[0].strftime("%Y%m%d") / "B02.tif"
    f.unlink()
    s4 = make_demo_scene(out, size=64, n_dates=3, seed=3)
    assert f.is_file() and (out / "scene.json").is_file() and s4 == s3
    # a damaged one (a file missing) is not reused either
    f.unlink()
    assert make_demo_scene(out, size=64, n_dates=3, seed=3) == s3 and f.is_file()
    # a foreign non-empty folder is refused
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(Crop2SegError, match="overwrite"):
        make_demo_scene(foreign, size=64, n_dates=2)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    make_demo_scene(foreign, size=64, n_dates=2, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine" and (foreign / "scene.json").is_file()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 63}, "even"),
        ({"size": 66 - 4}, ">= 64"),
        ({"size": 129}, "even"),
        ({"size": 100000}, "inside tile"),
        ({"n_dates": 1}, "n_dates"),
        ({"n_dates": 10000}, "n_dates"),
        ({"seed": -1}, "seed"),
        ({"size": 64.0}, "integer"),
        ({"parcels_crs": 999999}, "parcels_crs"),
    ],
)
def test_invalid_parameters(tmp_path, kwargs, match):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        make_demo_scene(out, **kwargs)
    assert not out.exists()


def test_other_parcels_crs(tmp_path):
    s = make_demo_scene(tmp_path / "s", size=64, n_dates=2, parcels_crs=32633)
    p = gpd.read_file(s.parcels, layer="parcels")
    assert p.crs.to_epsg() == 32633 and (~p.is_valid).sum() == 1


def test_demo_scene_command(tmp_path):
    """The command writes a scene and says where; bad parameters give a clear error, no traceback."""
    from click.testing import CliRunner

    from crop2seg_pipeline.cli.demo import demo_scene_cmd

    res = CliRunner().invoke(demo_scene_cmd, [str(tmp_path / "s"), "--size", "128", "--dates", "3", "--seed", "4", "-q"])
    assert res.exit_code == 0, res.output
    assert "items" in res.output and (tmp_path / "s" / "items.json").exists()
    res = CliRunner().invoke(demo_scene_cmd, [str(tmp_path / "t"), "--size", "127"])
    assert res.exit_code != 0 and "Error" in res.output and "Traceback" not in res.output


# --- tiles, seasons, SAFE ------------------------------------------------------------------------------
def test_scene_on_another_tile_and_season(tmp_path):
    """A scene for 33UVR in 2019: that tile's grid, ids, footprint and a 2018/19 date set."""
    from crop2seg_pipeline.s2tiles import parse_tile

    s = make_demo_scene(tmp_path / "s", size=128, n_dates=5, seed=4, tile="33UVR", year=2019, parcels_crs=32633)
    t = parse_tile("33UVR")
    assert s.tile == "33UVR" and (s.grid.epsg, s.grid.x0, s.grid.y0) == (32633, t.x0 + 12000, t.y0 - 18000)
    assert dt.date(2018, 9, 15) <= s.dates[0] and s.dates[-1] <= dt.date(2019, 10, 15)
    ic = pystac.ItemCollection.from_dict(json.loads(s.items.read_text()))
    lon0, lat0, lon1, lat1 = t.bounds_wgs84()
    for item, d in zip(ic.items, s.dates):
        p = item.properties
        assert p["s2:mgrs_tile"] == "33UVR" and p["grid:code"] == "MGRS-33UVR" and "_T33UVR_" in item.id
        assert p["s2:processing_baseline"] < "04.00"  # every 2019 date is before the offset
        assert all(a.extra_fields["raster:offset"] == 0.0 for k, a in item.assets.items() if k != SCL)
        assert lon0 < item.bbox[0] < item.bbox[2] < lon1 and lat0 < item.bbox[1] < item.bbox[3] < lat1
        with rasterio.open(s.root / item.assets["B02"].href) as ds:
            assert tuple(ds.transform)[:6] == (10, 0, s.grid.x0, 0, -10, s.grid.y0)
    p = gpd.read_file(s.parcels, layer="parcels")
    assert p.crs.to_epsg() == 32633
    minx, miny, maxx, maxy = p.total_bounds
    assert s.grid.x0 - 500 <= minx and maxx <= s.grid.x0 + 128 * 10 + 500


def test_tile_outside_zone_33_and_baselines_follow_dates(tmp_path):
    s = make_demo_scene(tmp_path / "s", size=64, n_dates=6, seed=1, tile="06VVN", year=2023, parcels_crs=32606)
    assert s.grid.epsg == 32606 and (s.grid.x0, s.grid.y0) == (399960 + 12000, 6800040 - 18000)
    items = json.loads(s.items.read_text())["features"]
    for it, d in zip(items, s.dates):
        b = it["properties"]["s2:processing_baseline"]
        assert (b >= "04.00") == (d >= dt.date(2022, 1, 25))  # from 2022-12-06 it is 05.09, then 05.10
        assert it["assets"]["B04"]["raster:offset"] == (-0.1 if b >= "04.00" else 0.0)
        assert it["properties"]["datetime"][11:13] in ("20", "21")  # Alaska: ~10:30 local solar time
    # the DNs carry the offset on the 2022/23 dates after 25 January 2022 (all of them here)
    assert all(d >= dt.date(2022, 9, 15) for d in s.dates)
    assert gpd.read_file(s.parcels).crs.to_epsg() == 32606


def test_seeds_years_and_tiles_give_other_date_sets_and_landscapes(tmp_path):
    a = make_demo_scene(tmp_path / "a", size=64, n_dates=6, seed=1)
    b = make_demo_scene(tmp_path / "b", size=64, n_dates=6, seed=2)
    c = make_demo_scene(tmp_path / "c", size=64, n_dates=6, seed=1, year=2020)
    assert a.dates != b.dates and a.dates != c.dates and len(c.dates) == 6
    la, lb = _build_landscape(64, 1), _build_landscape(64, 2)
    lt = _build_landscape(64, 1, "33UXQ")
    assert not np.array_equal(la.unit, lb.unit) and not np.array_equal(la.unit, lt.unit)
    assert lt.grid.x0 == la.grid.x0 + 100020  # 33UXQ starts at 600000, 33UWQ at 499980


@pytest.mark.parametrize("kwargs, match", [
    ({"tile": "33UWI"}, "not a Sentinel-2 tile id"),
    ({"year": 1999}, "year"),
    ({"format": "tiff"}, "format must be one of"),
    ({"year": 2019.0}, "integer"),
])
def test_invalid_tile_year_format(tmp_path, kwargs, match):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        make_demo_scene(out, size=64, n_dates=2, **kwargs)
    assert not out.exists()


def test_safe_scene_layout_and_metadata(tmp_path):
    """--format safe: real SAFE names and layout, lossless JP2s equal to the COG scene's pixels."""
    import xml.etree.ElementTree as ET

    cog = make_demo_scene(tmp_path / "cog", size=128, n_dates=3, seed=5, year=2022)
    safe = make_demo_scene(tmp_path / "safe", size=128, n_dates=3, seed=5, year=2022, format="safe")
    assert safe.dates == cog.dates and safe.grid == cog.grid
    products = sorted((safe.root / "S2").iterdir())
    assert len(products) == 3
    for prod, d in zip(products, safe.dates):
        assert prod.suffix == ".SAFE" and f"_MSIL2A_{d:%Y%m%d}T" in prod.name and "_T33UWQ_" in prod.name
        granule = next((prod / "GRANULE").iterdir())
        assert granule.name.startswith("L2A_T33UWQ_A")
        mtd = ET.parse(prod / "MTD_MSIL2A.xml").getroot()
        baseline = mtd.find(".//PROCESSING_BASELINE").text
        offsets = mtd.findall(".//BOA_ADD_OFFSET_VALUES_LIST/BOA_ADD_OFFSET")
        assert (len(offsets) == 13) == (baseline >= "04.00")
        assert all(o.text == "-1000" for o in offsets)
        for band in ALL_ASSETS:
            res = NATIVE_RESOLUTION[band]
            jp2 = granule / "IMG_DATA" / f"R{res}m" / f"T33UWQ_{prod.name.split('_')[2]}_{band}_{res}m.jp2"
            with rasterio.open(jp2) as ds:
                assert ds.driver == "JP2OpenJPEG" and ds.crs.to_epsg() == 32633
                assert np.array_equal(ds.read(1), _read(cog, d, band)), (d, band)
    # the items were indexed from the products
    items = json.loads(safe.items.read_text())["features"]
    assert [it["properties"]["datetime"] for it in items] == \
        [it["properties"]["datetime"] for it in json.loads(cog.items.read_text())["features"]]
    assert all(a["href"].endswith(".jp2") and not a["href"].startswith("/") for it in items for a in it["assets"].values())


def test_demo_scene_command_tile_year_format(tmp_path):
    from click.testing import CliRunner

    from crop2seg_pipeline.cli.demo import demo_scene_cmd

    res = CliRunner().invoke(demo_scene_cmd, [str(tmp_path / "s"), "--size", "128", "--dates", "3", "--tile", "33UYR",
                                              "--year", "2019", "--format", "safe-zip", "-q"])
    assert res.exit_code == 0, res.output
    assert "tile 33UYR" in res.output and "2018-" in res.output
    assert len(list((tmp_path / "s" / "S2").glob("*.zip"))) == 3
    res = CliRunner().invoke(demo_scene_cmd, [str(tmp_path / "t"), "--tile", "33UXP1"])
    assert res.exit_code != 0 and "not a Sentinel-2 tile id" in res.output and not (tmp_path / "t").exists()


@pytest.mark.slow
def test_store_from_two_tiles_with_different_date_counts(tmp_path):
    """Two demo scenes standing for two tiles build one store: patches of both, own dates, NaT padding."""
    import pandas as pd

    from crop2seg_pipeline.build import build_dataset
    from crop2seg_pipeline.store import open_store

    a = make_demo_scene(tmp_path / "a", size=256, n_dates=4, seed=3, tile="33UVR", year=2019)
    b = make_demo_scene(tmp_path / "b", size=256, n_dates=6, seed=4, tile="33UWQ", year=2022)
    pa, pb = (gpd.read_file(s.parcels, layer="parcels") for s in (a, b))
    pb["ID_DPB"] += 10_000_000  # one LPIS file for both tiles, ids unique
    parcels = tmp_path / "parcels.gpkg"
    gpd.GeoDataFrame(pd.concat([pa, pb], ignore_index=True), crs=pa.crs).to_file(parcels, layer="parcels")
    out = tmp_path / "two.zarr"
    summary = build_dataset([str(a.items), str(b.items)], parcels, out, mapping=a.mapping, patch_size=64,
                            chunksize=128, min_crop_cover=0.3, split_block=2)
    assert summary.tiles == ["33UVR", "33UWQ"]
    ds = open_store(out)
    tiles = np.array([str(t) for t in ds["tile"].values])
    assert set(tiles) == {"33UVR", "33UWQ"}
    assert ds.sizes["time"] == 6
    for tile, scene in (("33UVR", a), ("33UWQ", b)):
        k = int(np.flatnonzero(tiles == tile)[0])
        dates = ds["dates"].values[k]
        valid = dates[~np.isnat(dates)]
        assert len(valid) == summary.n_dates[tile] <= len(scene.dates)
        assert {str(d)[:10] for d in valid} <= {d.isoformat() for d in scene.dates}
        assert np.isnat(dates[len(valid):]).all()  # padding at the end
        assert int(ds["epsg"].values[k]) == 32633
        x0 = float(ds["x0"].values[k])
        assert scene.grid.x0 <= x0 < scene.grid.x0 + 256 * 10
        assert not ds["s2"].values[k, len(valid):].any()  # padded dates hold no data
    assert summary.n_dates["33UVR"] < summary.n_dates["33UWQ"]
