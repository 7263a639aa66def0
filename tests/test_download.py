"""crop2seg-download: mirrors from loopback HTTP servers, interrupted and resumed, verified, cut to a bbox."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from assetserver import remote_items, serve_assets, serve_tokens
from crop2seg_pipeline.cli.download import download_cmd
from crop2seg_pipeline.cube import load_cube
from crop2seg_pipeline.download import DownloadError, RetryPolicy, mirror, verify_multihash

FAST = RetryPolicy(attempts=5, backoff_s=0.01, timeout_s=20)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in (".tif", ".jp2")}


def _cube(items, **kw):
    return load_cube(items, chunksize=64, **kw).compute()


def test_multihash_checksums_of_the_demo(small_scene):
    it = json.loads(small_scene.items.read_text())["features"][0]
    a = it["assets"]["B02"]
    assert a["file:checksum"].startswith("1220") and a["file:size"] == (small_scene.root / a["href"]).stat().st_size
    assert verify_multihash(small_scene.root / a["href"], a["file:checksum"]) is True
    assert verify_multihash(small_scene.root / a["href"], "1220" + "00" * 32) is False


def test_mirror_with_transient_errors_equals_the_originals(small_scene, tmp_path):
    with serve_assets(small_scene.root, "scene") as srv:
        items = remote_items(small_scene, srv.url)
        flaky = items[0]["assets"]["B04"]["href"].split("/scene/", 1)[1]
        srv.failures[flaky] = 2  # HTTP 503 twice, then fine
        summary = mirror(items, tmp_path / "m", policy=FAST)
        assert len(srv.gets(flaky)) == 3
    assert summary.fetched == summary.n_files == len(items) * 11 and summary.present == 0
    out = json.loads((tmp_path / "m" / "items.json").read_text())["features"]
    assert all(not a["href"].startswith(("/", "http")) for it in out for a in it["assets"].values())
    assert set(out[0]["assets"]) == set(items[0]["assets"])
    for it_src, it_out in zip(json.loads(small_scene.items.read_text())["features"], out):
        for key, a in it_out["assets"].items():
            assert (tmp_path / "m" / a["href"]).read_bytes() == (small_scene.root / it_src["assets"][key]["href"]).read_bytes()
    ref = _cube(small_scene.items)
    got = _cube(tmp_path / "m" / "items.json")
    np.testing.assert_array_equal(got["s2"].values, ref["s2"].values)
    np.testing.assert_array_equal(got["scl"].values, ref["scl"].values)


@pytest.mark.slow
def test_interrupted_download_resumes_and_builds_the_same_store(demo_scene, tmp_path):
    """A run cut by dropped connections keeps what it got; the re-run fetches only the rest (Range resume)."""
    from crop2seg_pipeline.build import build_dataset
    from crop2seg_pipeline.store import open_store

    with serve_assets(demo_scene.root, "scene") as srv:
        items = remote_items(demo_scene, srv.url)
        rels = [a["href"].split("/scene/", 1)[1] for it in items for a in it["assets"].values()]
        cut = [rel for rel in rels[3::5] if (demo_scene.root / rel).stat().st_size > 300_000]
        assert len(cut) >= 5
        for rel in cut:
            srv.truncate[rel] = 200_000  # the connection drops after 200 kB
        with pytest.raises(DownloadError, match=f"{len(cut)} of {len(rels)} files could not be mirrored"):
            mirror(items, tmp_path / "m", policy=RetryPolicy(attempts=1, backoff_s=0))
        assert not (tmp_path / "m" / "items.json").exists()
        parts = {p.relative_to(tmp_path / "m").as_posix(): p.stat().st_size for p in (tmp_path / "m").rglob("*.part")}
        assert len(parts) == len(cut) and all(0 < n <= 200_000 for n in parts.values())
        n_before = {rel: len(srv.gets(rel)) for rel in rels}
        summary = mirror(items, tmp_path / "m", policy=FAST)
        assert summary.present == len(rels) - len(cut) and summary.fetched == len(cut)
        for rel in rels:
            again = srv.gets(rel)[n_before[rel]:]
            if rel in cut:
                got = next(n for k, n in parts.items() if k.endswith(Path(rel).name + ".part") and Path(rel).parent.name in k)
                assert len(again) == 1 and again[0]["range"] == f"bytes={got}-"  # resumed, not restarted
            else:
                assert again == []  # complete files are not fetched again
        with serve_assets(demo_scene.root, "scene") as srv2:  # an uninterrupted mirror, for comparison
            mirror(remote_items(demo_scene, srv2.url), tmp_path / "clean", policy=FAST)
    assert _files(tmp_path / "m") == _files(tmp_path / "clean")
    assert not list((tmp_path / "m").rglob("*.part"))
    opts = dict(mapping=demo_scene.mapping, patch_size=64, chunksize=128, min_crop_cover=0.3, split_block=2)
    build_dataset(str(tmp_path / "m" / "items.json"), demo_scene.parcels, tmp_path / "mirror.zarr", **opts)
    build_dataset(demo_scene.items, demo_scene.parcels, tmp_path / "orig.zarr", **opts)
    a, b = open_store(tmp_path / "mirror.zarr"), open_store(tmp_path / "orig.zarr")
    for var in ("s2", "label", "parcel_id", "clear"):
        np.testing.assert_array_equal(a[var].values, b[var].values)
    np.testing.assert_array_equal(a["dates"].values, b["dates"].values)


def test_checksum_mismatch_and_permanent_errors_are_named(small_scene, tmp_path):
    with serve_assets(small_scene.root, "scene") as srv:
        items = remote_items(small_scene, srv.url)[:2]
        items[1]["assets"]["B03"]["file:checksum"] = "1220" + "ab" * 32
        with pytest.raises(DownloadError, match=r"checksum mismatch for http://127\.0\.0\.1.*B03\.tif"):
            mirror(items, tmp_path / "m", policy=FAST)
        bad = tmp_path / "m" / items[1]["id"]
        assert not list(bad.glob("B03.tif*")) and (bad / "B02.tif").is_file()  # no bad file left, not even partly
        assert not (tmp_path / "m" / "items.json").exists()
        items = remote_items(small_scene, srv.url)[:1]
        items[0]["assets"]["B05"]["href"] += ".missing"
        with pytest.raises(DownloadError, match="HTTP 404"):
            mirror(items, tmp_path / "m2", policy=FAST)
        assert len(srv.gets(items[0]["assets"]["B05"]["href"].split("/scene/", 1)[1])) == 1  # not retried


def test_signed_download_keeps_no_token(small_scene, tmp_path, monkeypatch):
    with serve_tokens("s3cret") as tokens, serve_assets(small_scene.root, "scene", secret="s3cret") as srv:
        monkeypatch.setenv("PC_SDK_SAS_URL", tokens.url)
        monkeypatch.setenv("CROP2SEG_SIGN_HOSTS", srv.host)
        items = remote_items(small_scene, srv.url)[:2]
        mirror(items, tmp_path / "m", policy=FAST)
        assert all(r["token"] for r in srv.requests) and len(tokens.requests) == 1
    text = "".join(p.read_text() for p in (tmp_path / "m").rglob("*.json"))
    assert "sig=" not in text and "se=" not in text


def test_bbox_cut_gives_the_same_pixels(small_scene, tmp_path):
    g = small_scene.grid
    bbox = (g.x0 + 330, g.y0 - 1290, g.x0 + 1010, g.y0 - 650)  # not on the 60 m lattice
    summary = mirror(small_scene.items, tmp_path / "m", bbox=bbox, bbox_crs=32633, policy=FAST)
    assert summary.fetched == summary.n_files
    out = json.loads((tmp_path / "m" / "items.json").read_text())["features"][0]
    b02 = out["assets"]["B02"]
    assert b02["proj:shape"][0] < g.height and b02["href"].endswith(".tif")
    assert (b02["proj:transform"][2] - g.x0) % 60 == 0 and (g.y0 - b02["proj:transform"][5]) % 60 == 0
    ref = _cube(small_scene.items, bbox=bbox, bbox_crs=32633)
    got = _cube(tmp_path / "m" / "items.json", bbox=bbox, bbox_crs=32633)
    np.testing.assert_array_equal(got["s2"].values, ref["s2"].values)
    np.testing.assert_array_equal(got["scl"].values, ref["scl"].values)
    np.testing.assert_array_equal(got["x"].values, ref["x"].values)


def test_safe_zip_products_are_mirrored(tmp_path):
    from crop2seg_pipeline.demo import make_demo_scene

    s = make_demo_scene(tmp_path / "s", size=128, n_dates=2, seed=3, format="safe-zip")
    mirror(s.root / "S2", tmp_path / "m", policy=FAST)
    files = sorted(p.name for p in (tmp_path / "m").rglob("*.jp2"))
    assert len(files) == 22
    np.testing.assert_array_equal(_cube(tmp_path / "m" / "items.json")["s2"].values, _cube(s.items)["s2"].values)


@pytest.mark.slow
def test_download_command_on_a_cluster(small_scene, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    res = CliRunner().invoke(download_cmd, [str(small_scene.items), "--out", str(foreign), "--workers", "1"])
    assert res.exit_code == 1 and "not a crop2seg mirror" in res.output
    assert sorted(p.name for p in foreign.iterdir()) == ["mine.txt"]
    res = CliRunner().invoke(download_cmd, [str(small_scene.items), "--out", str(tmp_path / "x"), "--bands", "B02,B99"])
    assert res.exit_code == 2 and "B99" in res.output and not (tmp_path / "x").exists()
    with serve_assets(small_scene.root, "scene") as srv:
        items = tmp_path / "remote.json"
        items.write_text(json.dumps({"type": "FeatureCollection", "features": remote_items(small_scene, srv.url)}))
        res = CliRunner().invoke(download_cmd, [str(items), "--out", str(tmp_path / "m"), "--workers", "2",
                                                "--bands", "B04,B08"])
        assert res.exit_code == 0, res.output
        assert "Dask dashboard" in res.output and "fetched" in res.output
        out = json.loads((tmp_path / "m" / "items.json").read_text())["features"]
        assert set(out[0]["assets"]) == {"B04", "B08", "SCL"}
        res = CliRunner().invoke(download_cmd, [str(items), "--out", str(tmp_path / "m"), "--workers", "1",
                                                "--bands", "B04,B08"])
        assert res.exit_code == 0 and f"0 fetched (0.0 MB), {3 * len(out)} already there" in res.output
