"""crop2seg-search: pystac-client against a real STAC API on loopback (paging, query, collections)."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from crop2seg_pipeline.cli.search import search_cmd
from crop2seg_pipeline.errors import EmptySelectionError
from crop2seg_pipeline.search import PROVIDERS, SearchError, Window, monthly_windows, search_windows, summarize
from stacapi import serve


def _provider_items(scene, tile_rename: str | None = None) -> list[dict]:
    """Demo items as a STAC API returns them (absolute hrefs, a collection), optionally renamed to another tile."""
    doc = json.loads(Path(scene.items).read_text())
    root = Path(scene.items).parent
    out = []
    for it in doc["features"]:
        it = copy.deepcopy(it)
        it["collection"] = "sentinel-2-l2a"
        for a in it["assets"].values():
            a["href"] = str(root / a["href"])
        if tile_rename:
            it["id"] = it["id"].replace("T33UWQ", f"T{tile_rename}")
            it["properties"]["s2:mgrs_tile"] = tile_rename
            it["properties"]["grid:code"] = f"MGRS-{tile_rename}"
        out.append(it)
    return out


@pytest.fixture(scope="module")
def api_items(small_scene):
    return _provider_items(small_scene) + _provider_items(small_scene, "33UVQ")


def test_monthly_windows_are_crop2segs_recipe():
    limits = [65, 65, 65, 65, 65, 35, 65, 20, 55, 15, 25, 55, 45, 35]
    ws = monthly_windows(dt.date(2018, 9, 1), dt.date(2019, 10, 31), limits)
    assert [w.label for w in ws][:3] == ["2018-09", "2018-10", "2018-11"] and ws[-1].label == "2019-10"
    assert [w.max_cloud for w in ws] == limits and ws[5].end == dt.date(2019, 2, 28)
    cut = monthly_windows(dt.date(2021, 9, 15), dt.date(2021, 10, 10))
    assert (cut[0].start, cut[-1].end) == (dt.date(2021, 9, 15), dt.date(2021, 10, 10))
    with pytest.raises(ValueError, match="2 cloud limits for 14 months"):
        monthly_windows(dt.date(2018, 9, 1), dt.date(2019, 10, 31), [1, 2])


def test_search_pages_filters_tiles_and_keeps_n_per_month(small_scene, api_items):
    provider = PROVIDERS["earth-search"]
    with serve(api_items) as api:
        windows = monthly_windows(dt.date(2021, 9, 1), dt.date(2022, 10, 31), 60)
        got = search_windows(api.url, "sentinel-2-l2a", windows=windows, tiles=["33UWQ"], max_per_window=1,
                             provider=provider, limit=1)
        bodies = list(api.bodies)
    with serve(api_items) as api:  # one window, pages of 2 items: pystac-client follows the next links
        whole = search_windows(api.url, "sentinel-2-l2a", windows=[Window(dt.date(2021, 9, 1), dt.date(2022, 10, 31))],
                               bbox=[10, 45, 20, 55], limit=2)
        assert len(api.bodies) == (len(api_items) + 1) // 2 and api.bodies[1]["token"] == 2
    assert sorted(it["id"] for it in whole) == sorted(it["id"] for it in api_items)
    assert bodies[0]["query"]["grid:code"] == {"in": ["MGRS-33UWQ"]}  # server-side tile filter
    assert bodies[0]["query"]["eo:cloud_cover"] == {"lte": 60.0}
    assert all("_T33UWQ_" in it["id"] for it in got)
    expected: dict[str, dict] = {}
    for it in _provider_items(small_scene):
        cc = it["properties"]["eo:cloud_cover"]
        month = it["properties"]["datetime"][:7]
        if cc <= 60 and (month not in expected or cc < expected[month]["properties"]["eo:cloud_cover"]):
            expected[month] = it
    assert sorted(it["id"] for it in got) == sorted(it["id"] for it in expected.values())
    rows = summarize(got)
    assert all(r["items"] == 1 and r["tile"] == "33UWQ" for r in rows)


def test_tiles_alone_give_the_area_and_filter_on_the_client(api_items):
    """No provider (no server-side tile query): the tile's footprint is the area, other tiles are dropped."""
    with serve(api_items) as api:
        got = search_windows(api.url, "sentinel-2-l2a", windows=[Window(dt.date(2021, 9, 1), dt.date(2022, 10, 31))],
                             tiles=["T33UWQ"])
        body = api.bodies[0]
    assert "query" not in body
    assert got and all("_T33UWQ_" in it["id"] for it in got) and len(got) == len(api_items) // 2
    lon0, lat0, lon1, lat1 = body["bbox"]
    assert round(lon0, 3) == 15.0 and 16.5 < lon1 < 16.6 and 48.6 < lat0 < 48.7 and 49.6 < lat1 < 49.7  # 33UWQ


def test_search_command_writes_items_and_summary(small_scene, api_items, tmp_path):
    out = tmp_path / "items.json"
    with serve(api_items) as api:
        res = CliRunner().invoke(search_cmd, [
            "--url", api.url, "--collection", "sentinel-2-l2a", "--tiles", "33UWQ,33UVQ", "--start", "2021-09-01",
            "--end", "2022-10-31", "--max-cloud", "80", "--per-month", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "33UVQ" in res.output and "33UWQ" in res.output and "cloud mean" in res.output
    feats = json.loads(out.read_text())["features"]
    assert {it["properties"]["s2:mgrs_tile"] for it in feats} == {"33UWQ", "33UVQ"}
    assert all(it["properties"]["eo:cloud_cover"] <= 80 for it in feats)
    months = [(it["properties"]["s2:mgrs_tile"], it["properties"]["datetime"][:7]) for it in feats]
    assert max(months.count(m) for m in months) <= 2
    from crop2seg_pipeline.cube import load_cube  # the file is items every command takes

    cube = load_cube(str(out), bbox=(small_scene.grid.x0, small_scene.grid.y0 - 640, small_scene.grid.x0 + 640,
                                     small_scene.grid.y0), bbox_crs=32633)
    assert cube.sizes["time"] >= 1
    # the same file is not overwritten without --overwrite
    res = CliRunner().invoke(search_cmd, ["--url", api.url, "--collection", "x", "--tiles", "33UWQ", "--start",
                                          "2021-09-01", "--end", "2021-10-01", "--out", str(out)])
    assert res.exit_code != 0 and "--overwrite" in res.output


def test_area_file(api_items, tmp_path, small_scene):
    import geopandas as gpd
    from shapely.geometry import box

    g = small_scene.grid
    area = tmp_path / "area.geojson"
    gpd.GeoDataFrame(geometry=[box(g.x0 + 100, g.y0 - 500, g.x0 + 500, g.y0 - 100)], crs=32633).to_file(area)
    out = tmp_path / "i.json"
    with serve(api_items) as api:
        res = CliRunner().invoke(search_cmd, ["--url", api.url, "--collection", "sentinel-2-l2a", "--area", str(area),
                                              "--start", "2021-09-01", "--end", "2022-10-31", "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert api.bodies[0]["intersects"]["type"] == "Polygon"
    assert len(json.loads(out.read_text())["features"]) == len(api_items)  # both "tiles" cover the area


def test_bad_inputs_are_named(api_items, tmp_path):
    out = tmp_path / "never.json"
    with serve(api_items) as api:
        # unknown collection: the API's own list is shown
        with pytest.raises(SearchError, match="no collection 'sentinel-2-l1c'.*sentinel-2-l2a"):
            search_windows(api.url, "sentinel-2-l1c", windows=[Window(dt.date(2022, 1, 1), dt.date(2022, 2, 1))],
                           tiles=["33UWQ"])
        # zero results
        with pytest.raises(EmptySelectionError, match="found no item in tiles 33UWQ"):
            search_windows(api.url, "sentinel-2-l2a", windows=[Window(dt.date(2015, 1, 1), dt.date(2015, 2, 1))],
                           tiles=["33UWQ"])
        res = CliRunner().invoke(search_cmd, ["--url", api.url, "--collection", "sentinel-2-l2a", "--tiles", "33UWQ",
                                              "--start", "2015-01-01", "--end", "2015-02-01", "--out", str(out)])
        assert res.exit_code == 1 and "found no item" in res.output and "Traceback" not in res.output
        for args, msg in [
            (["--tiles", "33UWI"], "not a Sentinel-2 tile id"),
            (["--tiles", "33UWQ", "--max-cloud", "10,20"], "2 cloud limits for"),
            (["--tiles", "33UWQ", "--max-cloud", "120"], "0..100"),
            (["--bbox", "1,2,3"], "4 comma-separated"),
            ([], "give an area"),
        ]:
            res = CliRunner().invoke(search_cmd, ["--url", api.url, "--collection", "sentinel-2-l2a", "--start",
                                                  "2022-01-01", "--end", "2022-03-31", "--out", str(out), *args])
            assert res.exit_code == 2 and msg in res.output, (args, res.output)
    # an API that is not there
    res = CliRunner().invoke(search_cmd, ["--url", "http://127.0.0.1:9", "--collection", "c", "--tiles", "33UWQ",
                                          "--start", "2022-01-01", "--end", "2022-01-31", "--out", str(out)])
    assert res.exit_code == 1 and "cannot open the STAC API at http://127.0.0.1:9" in res.output
    assert not out.exists()


def test_providers_are_data():
    assert {p.collection for p in PROVIDERS.values()} == {"sentinel-2-l2a"}
    assert PROVIDERS["planetary-computer"].signing == "planetary-computer"
    assert PROVIDERS["earth-search"].url.endswith("/v1") and PROVIDERS["cdse"].url.startswith("https://stac.dataspace")
    res = CliRunner().invoke(search_cmd, ["--list-providers"])
    assert res.exit_code == 0 and "boa_offset_applied" in res.output and "AWS_S3_ENDPOINT" in res.output
