"""STAC item normalization: real provider fixtures, provider-shaped demo items, bad items."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from crop2seg_pipeline.cube import load_cube
from crop2seg_pipeline.errors import CRSError, EmptySelectionError, ItemError, MissingBandError, ReadError
from crop2seg_pipeline.items import normalize_item, normalize_items, read_items, select_items
from crop2seg_pipeline.nomenclature import BANDS

FIXTURES = Path(__file__).resolve().parent / "data" / "stac"  # copies of shared/fixtures/stac
ES_V0 = FIXTURES / "earth-search-v0_S2A_28QCH_20200714_0_L2A.json"
PC = FIXTURES / "planetary-computer_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"

# Asset keys of Earth Search v1 ("element84/earth-search" collection sentinel-2-l2a).
ES_V1_KEYS = {
    "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2", "B07": "rededge3",
    "B08": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22", "SCL": "scl",
}


def _fixture(path: Path) -> dict:
    if not path.exists():
        pytest.fail(f"shared STAC fixture missing: {path}")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- raw provider fixtures


@pytest.mark.parametrize(
    "path, epsg, tile, baseline, x0, y0",
    [(ES_V0, 32628, "28QCH", "02.14", 300000.0, 2300040.0), (PC, 32606, "06VVN", "02.12", 399960.0, 6800040.0)],
)
def test_real_fixture_normalizes(path, epsg, tile, baseline, x0, y0):
    it = normalize_item(_fixture(path), check_files=False)
    assert set(it["assets"]) == set(BANDS) | {"SCL"}
    p = it["properties"]
    assert (p["proj:epsg"], p["crop2seg:tile"], p["crop2seg:baseline"], p["crop2seg:dn_offset"]) == (epsg, tile, baseline, 0)
    for band, a in it["assets"].items():
        res = 10 if band in ("B02", "B03", "B04", "B08") else 20
        assert a["proj:transform"] == [res, 0.0, x0, 0.0, -res, y0]
        assert a["proj:shape"] == [10980 * 10 // res] * 2
        assert a["proj:epsg"] == epsg


@pytest.mark.parametrize("path", [ES_V0, PC])
def test_fixture_grid_is_the_tile_grid_even_with_proj_code_only(path):
    """stackstac ignores proj:code: a CDSE/pystac-style item must still give the true 10980 px grid."""
    raw = _fixture(path)
    epsg = raw["properties"].pop("proj:epsg")
    for a in raw["assets"].values():
        a.pop("proj:epsg", None)
        a["proj:code"] = f"EPSG:{epsg}"
    cube = load_cube([raw], check_files=False)  # lazy: nothing is read
    assert cube["s2"].shape == (1, 10, 10980, 10980)
    t = _fixture(path)["assets"]["B02"]["proj:transform"]
    assert cube["x"].values[0] == t[2] + 5 and cube["y"].values[0] == t[5] - 5
    assert cube.attrs["epsg"] == epsg


# ----------------------------------------------------------------------------- provider-shaped demo items


def _demo_items(scene) -> list[dict]:
    return read_items(scene.items)


def _baseline_tag(item: dict) -> str:
    return item["properties"]["s2:processing_baseline"]


def as_earth_search_v0(item: dict) -> dict:
    """The demo item in Earth Search v0's shape (keys, 9-element transforms, product id)."""
    tmpl = _fixture(ES_V0)
    base = Path(item["crop2seg:base_href"]).parent
    date = item["properties"]["datetime"][:10].replace("-", "")
    n = _baseline_tag(item).replace(".", "")
    out = {k: copy.deepcopy(v) for k, v in tmpl.items() if k not in ("assets", "properties")}
    out["id"] = f"S2B_33UWQ_{date}_0_L2A"
    out["bbox"], out["geometry"] = item["bbox"], item["geometry"]
    out["properties"] = {
        **{k: v for k, v in tmpl["properties"].items() if not k.startswith("sentinel:")},
        "datetime": item["properties"]["datetime"],
        "proj:epsg": 32633,
        "eo:cloud_cover": item["properties"]["eo:cloud_cover"],
        "sentinel:utm_zone": 33, "sentinel:latitude_band": "U", "sentinel:grid_square": "WQ",
        "sentinel:product_id": f"S2B_MSIL2A_{date}T100029_N{n}_R122_T33UWQ_{date}T120000",
    }
    out["assets"] = {}
    for key, a in tmpl["assets"].items():
        if key in item["assets"]:
            src = item["assets"][key]
            out["assets"][key] = {**a, "href": str(base / src["href"]),
                                  "proj:shape": src["proj:shape"], "proj:transform": src["proj:transform"] + [0.0, 0.0, 1.0]}
        else:
            out["assets"][key] = a  # B01, B09, AOT... still point at the cloud: never read
    return out


def as_planetary_computer(item: dict) -> dict:
    tmpl = _fixture(PC)
    base = Path(item["crop2seg:base_href"]).parent
    date = item["properties"]["datetime"][:10].replace("-", "")
    out = {k: copy.deepcopy(v) for k, v in tmpl.items() if k not in ("assets", "properties")}
    out["id"] = f"S2B_MSIL2A_{date}T100029_R122_T33UWQ_synthetic"
    out["bbox"], out["geometry"] = item["bbox"], item["geometry"]
    out["properties"] = {
        **tmpl["properties"],
        "datetime": item["properties"]["datetime"], "proj:epsg": 32633, "s2:mgrs_tile": "33UWQ",
        "eo:cloud_cover": item["properties"]["eo:cloud_cover"],
        "s2:processing_baseline": _baseline_tag(item),
    }
    out["assets"] = {}
    for key, a in tmpl["assets"].items():
        if key in item["assets"]:
            src = item["assets"][key]
            out["assets"][key] = {**a, "href": str(base / src["href"]), "proj:shape": src["proj:shape"],
                                  "proj:transform": src["proj:transform"], "proj:bbox": None}
            out["assets"][key].pop("proj:bbox")
        else:
            out["assets"][key] = a
    return out


def as_cdse(item: dict) -> dict:
    """CDSE STAC 1.1 shape: resolution-suffixed keys, proj:code, bands, raster:scale/offset.

    Resampled copies (``B02_20m``...) point at files that do not exist: the normalizer must pick
    the native-resolution asset and never touch them.
    """
    base = Path(item["crop2seg:base_href"]).parent
    out = copy.deepcopy(item)
    out.pop("crop2seg:base_href")
    out["stac_version"] = "1.1.0"
    out["properties"] = {k: v for k, v in item["properties"].items() if k not in ("proj:code", "proj:epsg")}
    offset = -0.1 if _baseline_tag(item) >= "04.00" else 0.0
    out["assets"] = {}
    for band, a in item["assets"].items():
        res = int(round(a["proj:transform"][0]))
        entry = {"href": str(base / a["href"]), "type": "image/jp2", "roles": ["data"], "proj:code": "EPSG:32633",
                 "proj:shape": a["proj:shape"], "proj:transform": a["proj:transform"], "gsd": res,
                 "bands": [{"name": band}]}
        if band != "SCL":
            entry.update({"raster:scale": 0.0001, "raster:offset": offset})
        out["assets"][f"{band}_{res}m"] = entry
        coarse = 60 if res == 20 else 20
        out["assets"][f"{band}_{coarse}m"] = {**entry, "href": str(base / "missing" / f"{band}_{coarse}m.jp2"),
                                              "gsd": coarse, "proj:transform": [coarse, 0.0, a["proj:transform"][2], 0.0, -coarse, a["proj:transform"][5]],
                                              "proj:shape": [s * res // coarse for s in a["proj:shape"]]}
    return out


def as_earth_search_v1(item: dict) -> dict:
    base = Path(item["crop2seg:base_href"]).parent
    out = copy.deepcopy(item)
    out.pop("crop2seg:base_href")
    offset = -0.1 if _baseline_tag(item) >= "04.00" else 0.0
    out["assets"] = {}
    for band, a in item["assets"].items():
        entry = {"href": str(base / a["href"]), "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                 "roles": ["data"], "proj:shape": a["proj:shape"], "proj:transform": a["proj:transform"]}
        if band != "SCL":
            entry["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": offset}]
        out["assets"][ES_V1_KEYS[band]] = entry
    out["properties"] = {**out["properties"], "proj:epsg": 32633}
    out["properties"].pop("proj:code", None)
    out["properties"].pop("s2:processing_baseline")
    return out


PROVIDERS = {
    "earth-search-v0": as_earth_search_v0,
    "planetary-computer": as_planetary_computer,
    "cdse": as_cdse,
    "earth-search-v1": as_earth_search_v1,
}


@pytest.fixture(scope="module")
def reference_cube(small_scene):
    cube = load_cube(small_scene.items, bbox=_bbox(small_scene), bbox_crs=32633, chunksize=64)
    return cube.compute()


def _bbox(scene, n=96):
    g = scene.grid
    return (g.x0 + 320, g.y0 - 320 - n * 10, g.x0 + 320 + n * 10, g.y0 - 320)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_provider_shapes_give_the_same_cube(small_scene, reference_cube, provider):
    items = [PROVIDERS[provider](it) for it in _demo_items(small_scene)]
    cube = load_cube(items, bbox=_bbox(small_scene), bbox_crs=32633, chunksize=64).compute()
    np.testing.assert_array_equal(cube["s2"].values, reference_cube["s2"].values)
    np.testing.assert_array_equal(cube["scl"].values, reference_cube["scl"].values)
    np.testing.assert_array_equal(cube["time"].values, reference_cube["time"].values)
    assert list(cube["dn_offset"].values) == list(reference_cube["dn_offset"].values)
    assert set(cube["tile"].values) == {"33UWQ"}


def _earth_search_v1_offset_applied(item: dict, folder: Path) -> dict:
    """An Earth Search v1 item whose COGs already had the BOA offset removed (``boa_offset_applied``).

    As Element84 publishes them for baseline >= 04.00 scenes: ``raster:bands`` still declare
    ``offset: -0.1`` (Element84/earth-search#71), ``earthsearch:boa_offset_applied: true``, and the
    files hold ``DN - 1000``. The files are rewritten that way here.
    """
    import rasterio

    out = as_earth_search_v1(item)
    applied = _baseline_tag(item) >= "04.00"
    out["properties"].update({"earthsearch:boa_offset_applied": applied, "s2:processing_baseline": _baseline_tag(item),
                              "earthsearch:payload_id": "roda-sentinel2/workflow-sentinel2-to-stac/synthetic"})
    for key, a in out["assets"].items():
        if not applied or key == "scl":
            continue
        src = Path(a["href"])
        dst = folder / item["id"] / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(src) as ds:
            data, profile = ds.read(1), ds.profile
        harmonized = np.where(data > 0, np.maximum(data.astype(np.int32) - 1000, 1), 0).astype(np.uint16)
        with rasterio.open(dst, "w", **profile) as ds:
            ds.write(harmonized, 1)
        a["href"] = str(dst)
        assert a["raster:bands"][0]["offset"] == -0.1  # declared, yet already applied
    return out


def test_earth_search_boa_offset_applied_is_not_subtracted_twice(small_scene, reference_cube, tmp_path):
    items = [_earth_search_v1_offset_applied(it, tmp_path) for it in _demo_items(small_scene)]
    norm = normalize_items(items)
    for it in norm:
        p = it["properties"]
        if p["crop2seg:baseline"] >= "04.00":
            assert p["crop2seg:dn_offset"] == 0 and "boa_offset_applied" in p["crop2seg:dn_offset_from"]
    cube = load_cube(items, bbox=_bbox(small_scene), bbox_crs=32633, chunksize=64).compute()
    np.testing.assert_array_equal(cube["s2"].values, reference_cube["s2"].values)  # same harmonized DNs
    # trusting raster:offset instead would have subtracted the offset a second time
    flagless = copy.deepcopy(items)
    for it in flagless:
        it["properties"].pop("earthsearch:boa_offset_applied")
    wrong = load_cube(flagless, bbox=_bbox(small_scene), bbox_crs=32633, chunksize=64).compute()
    assert not np.array_equal(wrong["s2"].values, reference_cube["s2"].values)


def test_demo_mixes_baselines(small_scene):
    items = normalize_items(small_scene.items)
    offsets = {it["properties"]["crop2seg:baseline"]: it["properties"]["crop2seg:dn_offset"] for it in items}
    assert offsets == {"03.01": 0, "04.00": -1000}


# ----------------------------------------------------------------------------- bad items


def test_missing_band_is_named(small_scene):
    raw = _demo_items(small_scene)
    del raw[2]["assets"]["B8A"]
    with pytest.raises(MissingBandError, match=r"no asset for band\(s\) B8A"):
        normalize_items(raw)


def test_missing_file_is_named(small_scene, tmp_path):
    raw = _demo_items(small_scene)
    raw[1]["assets"]["B11"]["href"] = str(tmp_path / "gone.tif")
    with pytest.raises(ReadError, match="gone.tif"):
        normalize_items(raw)


def test_no_projection_is_an_item_error(small_scene):
    raw = _demo_items(small_scene)
    for a in raw[0]["assets"].values():
        a.pop("proj:code", None)
        a.pop("proj:epsg", None)
    raw[0]["properties"].pop("proj:code", None)
    with pytest.raises(ItemError, match="projection"):
        normalize_items(raw)


def test_items_in_two_crs_need_a_target(small_scene):
    raw = _demo_items(small_scene)
    for a in raw[0]["assets"].values():
        a["proj:code"] = "EPSG:32634"
    with pytest.raises(CRSError, match="EPSG:32633 and EPSG:32634|EPSG:32633, EPSG:32634"):
        load_cube(raw)
    cube = load_cube(raw, epsg=32633)  # with a target CRS it builds
    assert cube.attrs["epsg"] == 32633


def test_no_item_in_bbox_or_dates(small_scene):
    items = normalize_items(small_scene.items)
    with pytest.raises(EmptySelectionError, match="no item intersects"):
        select_items(items, bbox=(2.0, 48.0, 2.1, 48.1))
    with pytest.raises(EmptySelectionError, match="no item between"):
        select_items(items, start="2015-01-01", end="2015-12-31")
    with pytest.raises(EmptySelectionError, match="cloud_cover"):
        select_items(items, max_cloud=-1)


def test_unreadable_items_file(tmp_path):
    bad = tmp_path / "items.json"
    bad.write_text("{not json")
    with pytest.raises(ReadError, match="not valid JSON"):
        read_items(bad)
    with pytest.raises(ReadError, match="cannot read STAC items"):
        read_items(tmp_path / "nope.json")
    bad.write_text(json.dumps({"type": "Catalog"}))
    with pytest.raises(ItemError, match="FeatureCollection"):
        read_items(bad)
