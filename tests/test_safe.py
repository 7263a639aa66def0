"""SAFE products as input: indexing MTD_MSIL2A.xml/MTD_TL.xml, folders and zips, bad products, same store."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from crop2seg_pipeline.cli.safe import index_safe_cmd
from crop2seg_pipeline.demo import make_demo_scene
from crop2seg_pipeline.errors import ReadError
from crop2seg_pipeline.items import normalize_items
from crop2seg_pipeline.safe import index_safe


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe")
    kw = dict(size=256, n_dates=5, seed=6, year=2022)
    return (make_demo_scene(root / "cog", **kw), make_demo_scene(root / "safe", format="safe", **kw),
            make_demo_scene(root / "zip", format="safe-zip", **kw))


def test_index_reads_the_product_metadata(scenes):
    cog, safe, zipped = scenes
    cog_items = json.loads(cog.items.read_text())["features"]
    for source in (safe.root / "S2", zipped.root / "S2"):
        items = index_safe(source)
        assert len(items) == len(cog_items)
        for it, ref in zip(items, cog_items):
            p, r = it["properties"], ref["properties"]
            assert p["datetime"] == r["datetime"] and p["s2:processing_baseline"] == r["s2:processing_baseline"]
            assert p["eo:cloud_cover"] == pytest.approx(r["eo:cloud_cover"]) and p["s2:mgrs_tile"] == "33UWQ"
            assert p["platform"] == r["platform"] and p["sat:relative_orbit"] == r["sat:relative_orbit"]
            assert it["id"].startswith(ref["id"].rsplit("_", 1)[0])  # same name up to the discriminator
            for band, a in it["assets"].items():
                assert a["proj:transform"] == ref["assets"][band]["proj:transform"]
                assert a["proj:shape"] == ref["assets"][band]["proj:shape"]
                if band != "SCL":  # BOA_ADD_OFFSET / BOA_QUANTIFICATION_VALUE -> raster:offset/scale
                    assert a["raster:offset"] == pytest.approx(ref["assets"][band]["raster:offset"])
                    assert a["raster:scale"] == pytest.approx(1e-4)
        if source.parent == zipped.root:
            assert all(a["href"].startswith("/vsizip//") for it in items for a in it["assets"].values())
    offsets = {it["properties"]["crop2seg:baseline"]: it["properties"]["crop2seg:dn_offset"]
               for it in normalize_items(str(safe.root / "S2"))}
    assert offsets == {"03.01": 0, "04.00": -1000}


@pytest.mark.slow
def test_safe_scene_builds_the_same_store_as_the_cog_scene(scenes, tmp_path):
    from crop2seg_pipeline.build import build_dataset
    from crop2seg_pipeline.store import open_store

    cog, safe, zipped = scenes
    opts = dict(mapping=cog.mapping, patch_size=64, chunksize=128, min_crop_cover=0.3, split_block=2)
    build_dataset(cog.items, cog.parcels, tmp_path / "cog.zarr", **opts)
    build_dataset(str(safe.root / "S2"), safe.parcels, tmp_path / "safe.zarr", **opts)  # products as --items
    build_dataset(zipped.items, zipped.parcels, tmp_path / "zip.zarr", **opts)  # zips, through items.json
    ref = open_store(tmp_path / "cog.zarr")
    for name in ("safe.zarr", "zip.zarr"):
        got = open_store(tmp_path / name)
        for var in ("s2", "label", "parcel_id", "clear", "dates"):
            np.testing.assert_array_equal(got[var].values, ref[var].values)
        assert got.attrs["normalization"] == ref.attrs["normalization"]


def test_bad_products_are_named(scenes, tmp_path):
    _, safe, zipped = scenes
    good = sorted((zipped.root / "S2").glob("*.zip"))[0]
    cut = tmp_path / good.name
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # an interrupted download
    with pytest.raises(ReadError, match="not a readable zip archive.*download the product again"):
        index_safe(cut)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("README.txt", "not a product")
    with pytest.raises(ReadError, match="no MTD_MSIL2A.xml"):
        index_safe(other)
    prod = tmp_path / "p" / sorted((safe.root / "S2").iterdir())[0].name
    shutil.copytree(sorted((safe.root / "S2").iterdir())[0], prod)
    next(prod.rglob("*_B8A_20m.jp2")).unlink()
    with pytest.raises(ReadError, match="B8A_20m.jp2 is listed but missing; the product is incomplete"):
        index_safe(prod)
    (prod / "MTD_MSIL2A.xml").write_text("<broken")
    with pytest.raises(ReadError, match="MTD_MSIL2A.xml is not valid XML"):
        index_safe(prod)
    with pytest.raises(ReadError, match="holds no .SAFE folder or .zip product"):
        index_safe(tmp_path / "p" / prod.name / "GRANULE")
    with pytest.raises(ReadError, match="does not exist"):
        index_safe(tmp_path / "nothing.SAFE")


def test_index_safe_command_writes_relative_items(scenes, tmp_path):
    _, safe, _ = scenes
    out = tmp_path / "items.json"
    res = CliRunner().invoke(index_safe_cmd, [str(safe.root / "S2"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "33UWQ" in res.output and "wrote 5 item(s)" in res.output
    items = json.loads(out.read_text())["features"]
    assert all(not a["href"].startswith("/") for it in items for a in it["assets"].values())
    assert len(normalize_items(str(out))) == 5  # relative hrefs resolve against the file
    res = CliRunner().invoke(index_safe_cmd, [str(safe.root / "S2"), "--out", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.output
