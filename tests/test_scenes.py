"""Tests of crop2seg_pipeline.scenes (several demo scenes as one build input) and crop2seg-merge-scenes."""

from __future__ import annotations

import json
import os

import geopandas as gpd
import pytest
from click.testing import CliRunner

from crop2seg_pipeline.cli.merge_scenes import merge_scenes_cmd
from crop2seg_pipeline.demo import make_demo_scene
from crop2seg_pipeline.scenes import MergeError, merge_scenes


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    a = make_demo_scene(root / "a", size=128, n_dates=3, seed=31, tile="33UVR", year=2019)
    b = make_demo_scene(root / "b", size=128, n_dates=5, seed=32, tile="33UWS", year=2023)
    return a, b


def test_merged_items_and_parcels_build_one_store_of_both_tiles(two, tmp_path):
    from crop2seg_pipeline.build import build_dataset
    from crop2seg_pipeline.store import open_store

    a, b = two
    m = merge_scenes([a.root, b.root], tmp_path / "merged")
    items = json.loads(m.items.read_text())["features"]
    assert m.n_items == len(items) == 3 + 5 and m.tiles == ("33UVR", "33UWS")
    for it in items:  # hrefs absolute and pointing at the scenes' own files
        for asset in it["assets"].values():
            assert os.path.isabs(asset["href"]) and os.path.exists(asset["href"])
    pa, pb, pm = (gpd.read_file(p) for p in (a.parcels, b.parcels, m.parcels))
    assert len(pm) == len(pa) + len(pb) == m.n_parcels and pm.crs == pa.crs
    assert sorted(pm["ID_DPB"]) == sorted([*pa["ID_DPB"], *pb["ID_DPB"]])
    assert m.mapping.read_bytes() == a.mapping.read_bytes()
    # moved elsewhere, the merged input still builds (nothing relative to the merge folder)
    out = tmp_path / "two.zarr"
    s = build_dataset(str(m.items), str(m.parcels), str(out), mapping=str(m.mapping), patch_size=64, chunksize=128,
                      min_crop_cover=0.0, progress=lambda msg: None)
    assert s.tiles == ["33UVR", "33UWS"] and s.n_dates == {"33UVR": 3, "33UWS": 5}
    ds = open_store(out)
    assert {str(t) for t in ds["tile"].values} == {"33UVR", "33UWS"} and ds.sizes["time"] == 5


def test_refusals_write_nothing(two, tmp_path):
    a, b = two
    same_tile = make_demo_scene(tmp_path / "c", size=128, n_dates=2, seed=33, tile="33UVR", year=2020)
    with pytest.raises(MergeError, match="both stand for tile 33UVR"):
        merge_scenes([a.root, same_tile.root], tmp_path / "m1")
    with pytest.raises(MergeError, match="not a demo scene folder"):
        merge_scenes([a.root, tmp_path / "missing"], tmp_path / "m2")
    broken = make_demo_scene(tmp_path / "d", size=128, n_dates=2, seed=34, tile="33UXQ", year=2021)
    next((broken.root / "S2").glob("*/B11.tif")).unlink()  # a band file of one date gone
    with pytest.raises(MergeError, match="incomplete"):
        merge_scenes([a.root, broken.root], tmp_path / "m3")
    assert not any((tmp_path / m).exists() for m in ("m1", "m2", "m3"))
    used = tmp_path / "used"
    used.mkdir()
    (used / "items.json").write_text("mine")
    with pytest.raises(MergeError, match="already holds items.json"):
        merge_scenes([a.root, b.root], used)
    assert (used / "items.json").read_text() == "mine" and sorted(p.name for p in used.iterdir()) == ["items.json"]


def test_merge_scenes_command(two, tmp_path):
    a, b = two
    r = CliRunner().invoke(merge_scenes_cmd, [str(tmp_path / "m"), str(a.root), str(b.root)])
    assert r.exit_code == 0, r.output
    assert "merged 2 scenes (tiles 33UVR, 33UWS): 8 items" in r.output
    r = CliRunner().invoke(merge_scenes_cmd, [str(tmp_path / "m"), str(a.root), str(b.root)])
    assert r.exit_code == 1 and "already holds" in r.output
    r = CliRunner().invoke(merge_scenes_cmd, [str(tmp_path / "m3"), str(a.root), str(a.root)])
    assert r.exit_code == 1 and "both stand for tile" in r.output and not (tmp_path / "m3").exists()
