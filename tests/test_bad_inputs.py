"""Bad input to every command: a clear message naming what to change, the right exit code, and
nothing half-written left that a later run would trust.

Most cases run the command in-process (click's runner) and must fail before any cluster starts:
the output has no dashboard line and no "local Dask cluster" line. The cases that need a cluster
or another process (a refused scheduler port, a COG that disagrees with its item) run the real
command as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from click.testing import CliRunner

from crop2seg_pipeline.__main__ import main
from crop2seg_pipeline.predict import default_demo_weights
from crop2seg_pipeline.store import create_skeleton, open_store, store_state

DEADLINE_S = 600  # generous: the suite must pass on a loaded machine


def _cli(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _assert_refused_before_cluster(res, code: int, match: str) -> None:
    out = res.output
    assert res.exit_code == code, out
    assert match.lower() in out.lower(), out
    assert "Traceback" not in out, out
    assert "Dask dashboard" not in out and "local Dask cluster" not in out, out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _snapshot(path: Path) -> dict:
    """Every file under ``path`` with its bytes (to prove nothing was touched)."""
    if not path.exists():
        return {}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scene(small_scene):
    return small_scene


def _build_args(scene, out, *extra) -> list:
    return ["build-dataset", "--items", scene.items, "--parcels", scene.parcels, "--mapping", scene.mapping,
            "--out", out, "--patch-size", 64, "--chunksize", 128, "--workers", 1, *extra]


def _predict_args(scene, out, *extra, weights=None) -> list:
    return ["predict", "--items", scene.items, "--weights", weights or default_demo_weights(), "--out", out,
            "--workers", 1, *extra]


# ----------------------------------------------------------------------------- build-dataset

BUILD_CASES = {
    "bbox_miny_above_maxy": (["--bbox", "15.17,49.49,15.19,49.47"], 1, "miny 49.49 is not below maxy 49.47"),
    "bbox_minx_above_maxx_is_not_an_antimeridian_crossing": (
        ["--bbox", "15.19,49.47,15.17,49.49"], 1, "minx 15.19 is not below maxx 15.17; the order is minx,miny,maxx,maxy. "
                                                 "A box crossing the 180th meridian needs --antimeridian"),
    "antimeridian_flag_without_crossing": (["--bbox", "15.17,49.47,15.19,49.49", "--antimeridian"], 1,
                                           "does not cross the 180th meridian"),
    "bbox_latitude_out_of_range": (["--bbox", "15,-95,16,49"], 1, "latitudes must be within -90..90"),
    "unknown_bbox_crs": (["--bbox", "1,2,3,4", "--bbox-crs", "EPSG:999999"], 1,
                         "--bbox-crs: unknown coordinate reference system 'EPSG:999999'"),
    "lonlat_bbox_in_a_utm_crs": (["--bbox", "15.17,49.47,15.19,49.49", "--bbox-crs", "EPSG:32633"], 1,
                                 "looks like lon/lat degrees"),
    "bbox_not_four_numbers": (["--bbox", "15.17,49.47,15.19"], 2, "expected 4 comma-separated numbers"),
    "malformed_start_date": (["--start", "2022-13-01"], 1, "--start: expected a date YYYY-MM-DD, got '2022-13-01'"),
    "malformed_end_date": (["--end", "yesterday"], 1, "--end: expected a date YYYY-MM-DD, got 'yesterday'"),
    "end_before_start": (["--start", "2022-06-01", "--end", "2022-01-01"], 1, "--end 2022-01-01 is before --start 2022-06-01"),
    "patch_size_not_a_multiple_of_8": (["--patch-size", 100, "--chunksize", 200], 1,
                                       "--patch-size 100: the models need a multiple of 8 px"),
    "split_not_summing_to_one": (["--split", "0.8,0.3,0.1"], 1, "--split shares must sum to 1, got 0.8 + 0.3 + 0.1 = 1.2"),
    "split_share_out_of_range": (["--split", "1.5,-0.25,-0.25"], 1, "--split shares are each in 0..1"),
    "split_without_train": (["--split", "0,1,0"], 1, "leaves the train split empty"),
    "max_cloud_above_100": (["--max-cloud", 150], 1, "--max-cloud is a percentage in 0..100, got 150"),
    "min_crop_cover_above_1": (["--min-crop-cover", 2], 1, "--min-crop-cover is a fraction in 0..1, got 2"),
    "chunksize_not_a_multiple_of_patch": (["--chunksize", 100], 1, "--chunksize must be a multiple of --patch-size (64)"),
    "epsg_geographic": (["--epsg", "4326"], 1, "--epsg '4326': the output grid needs a projected CRS in metres"),
    "epsg_unknown": (["--epsg", "999999"], 1, "--epsg: unknown coordinate reference system"),
    "zero_workers": (["--workers", 0], 1, "the number of workers (--workers)"),
    "bad_memory_limit": (["--memory-limit", "lots"], 1, "memory limit 'lots' is not a size like 4GB"),
    "unknown_cluster_spec": (["--cluster", "nosuch"], 1, "--cluster 'nosuch' is neither a scheduler address"),
    "bbox_outside_the_items": (["--bbox", "10,40,10.1,40.1"], 1, "no item intersects the bbox"),
    "dates_without_items": (["--start", "2030-01-01", "--end", "2030-12-31"], 1, "no item between 2030-01-01 and 2030-12-31"),
}


@pytest.mark.parametrize("case", sorted(BUILD_CASES))
def test_build_refuses_before_anything(case, scene, tmp_path):
    extra, code, match = BUILD_CASES[case]
    out = tmp_path / "store.zarr"
    res = _cli(_build_args(scene, out, *extra))
    _assert_refused_before_cluster(res, code, match)
    assert not out.exists()  # not even the folder of the lock is left


def test_the_patch_multiple_is_the_models_own():
    """--patch-size is checked against every architecture's real divisor (read without torch)."""
    from crop2seg_pipeline.models import MODEL_NAMES, build_model, downscale_of, patch_multiple

    for name in MODEL_NAMES:
        assert build_model(name, n_classes=15).downscale == downscale_of(name), name
    assert patch_multiple() == 8


def test_build_unwritable_out_is_refused_before_pass_1(scene, tmp_path):
    # /sys refuses mkdir even to root (tests may run as root, for whom permission bits do not count)
    res = _cli(_build_args(scene, "/sys/crop2seg-test.zarr"))
    _assert_refused_before_cluster(res, 1, "cannot write patch store /sys/crop2seg-test.zarr")
    (tmp_path / "a-file").write_text("x")
    res = _cli(_build_args(scene, tmp_path / "a-file"))
    _assert_refused_before_cluster(res, 1, "exists and is not a folder")
    assert (tmp_path / "a-file").read_text() == "x"


def test_build_into_a_folder_of_other_files_touches_nothing(scene, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    before = _snapshot(out)
    for extra in ([], ["--overwrite"]):
        res = _cli(_build_args(scene, out, *extra))
        _assert_refused_before_cluster(res, 1, "is not a crop2seg patch store (it holds other files)")
        assert _snapshot(out) == before


def test_build_csv_as_parcels(scene, tmp_path):
    csv = tmp_path / "parcels.csv"
    csv.write_text("ID_DPB,KOD_PLODINY\n1,OZP\n2,KLC\n")
    out = tmp_path / "store.zarr"
    args = _build_args(scene, out)
    args[args.index("--parcels") + 1] = csv
    res = _cli(args)
    _assert_refused_before_cluster(res, 1, "is not a vector file with geometry")
    assert "no coordinate reference system" not in res.output
    assert not out.exists()


def test_build_items_in_two_crss_name_an_option_that_exists(scene, tmp_path):
    doc = json.loads(Path(scene.items).read_text())
    for it in doc["features"][: len(doc["features"]) // 2]:  # as if half were the 34U tile's
        for d in (it["properties"], *it["assets"].values()):
            for key in ("proj:code", "proj:epsg"):
                if key in d:
                    d[key] = "EPSG:32634" if key == "proj:code" else 32634
    items = Path(scene.items).parent / "two-crs-items.json"
    items.write_text(json.dumps(doc))
    try:
        out = tmp_path / "store.zarr"
        args = _build_args(scene, out)
        args[args.index("--items") + 1] = items
        res = _cli(args)
        _assert_refused_before_cluster(res, 1, "in 2 different CRSs (EPSG:32633, EPSG:32634)")
        assert "--epsg 32633" in res.output
        assert "--epsg" in {o for p in main.commands["build-dataset"].params for o in p.opts}
        assert not out.exists()
    finally:
        items.unlink()


def test_build_both_items_and_parcels_or_neither(scene, tmp_path):
    res = _cli(["build-dataset", "--items", scene.items, "--out", tmp_path / "o.zarr"])
    _assert_refused_before_cluster(res, 2, "give both --items and --parcels, or neither")
    assert not (tmp_path / "o.zarr").exists()


def test_build_refused_scheduler_port_is_reported_at_once(scene, tmp_path):
    """A real process (the connection attempt is the point): refused at once, not after the 30 s
    connection timeout, and before anything is read or written."""
    port = _free_port()
    out = tmp_path / "store.zarr"
    args = [sys.executable, "-m", "crop2seg_pipeline", *map(str, _build_args(scene, out))]
    args[args.index("--workers"):args.index("--workers") + 2] = []
    args += ["--cluster", f"tcp://127.0.0.1:{port}"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=DEADLINE_S)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"nothing listens at the Dask scheduler address tcp://127.0.0.1:{port} (connection refused)" in res.stderr
    assert "Traceback" not in res.stderr and "Dask dashboard" not in res.stdout
    assert not out.exists()


def test_build_cog_disagreeing_with_its_item_is_a_clear_error(scene, tmp_path):
    """A COG moved 1 km east (its item still says the old place): the build stops with an error
    naming the item, the asset and both transforms, one clean message (no remote traceback), and
    the store is left incomplete: nothing a later run (or training) would trust."""
    root = tmp_path / "scene"
    shutil.copytree(Path(scene.items).parent, root)
    items = json.loads((root / "items.json").read_text())["features"]
    victim = items[3]
    href = victim["assets"]["B03"]["href"]
    with rasterio.open(root / href, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
        t = ds.transform
        ds.transform = rasterio.Affine(t.a, t.b, t.c + 1000.0, t.d, t.e, t.f)
    out = tmp_path / "store.zarr"
    args = [sys.executable, "-m", "crop2seg_pipeline", "build-dataset", "--items", str(root / "items.json"),
            "--parcels", str(root / "parcels.gpkg"), "--mapping", str(root / "crop_mapping.csv"), "--out", str(out),
            "--patch-size", "64", "--chunksize", "128", "--workers", "1", "--min-date-clear", "0"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=DEADLINE_S)
    err = res.stderr
    assert res.returncode == 1, res.stdout + err
    assert f"item {victim['id']!r}, asset B03" in err and "disagrees with its item's projection metadata" in err, err
    assert f"{t.c + 1000.0:g}" in err and f"{t.c:g}" in err  # both values
    assert "pass 2 failed: " in err and "is incomplete" in err and "run the same command again to resume" in err
    assert "Traceback" not in err and "Compute Failed" not in err
    with pytest.raises(Exception, match="incomplete"):
        open_store(out)


# ----------------------------------------------------------------------------- predict


@pytest.fixture
def bad_weights(tmp_path):
    w = tmp_path / "weights"
    shutil.copytree(default_demo_weights(), w)
    (w / "weights.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    return w


PREDICT_CASES = {
    "overlap_not_below_the_window": (["--overlap", 128], 1, "--overlap must be in [0, 127] px"),
    "malformed_start_date": (["--start", "01/02/2022"], 1, "--start: expected a date YYYY-MM-DD, got '01/02/2022'"),
    "bbox_minx_above_maxx": (["--bbox", "15.19,49.47,15.17,49.49"], 1, "minx 15.19 is not below maxx 15.17"),
    "unknown_bbox_crs": (["--bbox", "1,2,3,4", "--bbox-crs", "nonsense"], 1, "--bbox-crs: unknown coordinate reference system"),
    "epsg_not_projected": (["--epsg", "4326"], 1, "needs a projected CRS in metres"),
    "missing_weights_folder": (["--weights", "/nonexistent/weights"], 1, "does not exist"),
    "refused_cluster_spec": (["--cluster", "nowhere/spec.yaml"], 1, "cluster spec file nowhere/spec.yaml does not exist"),
}


@pytest.mark.parametrize("case", sorted(PREDICT_CASES))
def test_predict_refuses_before_anything(case, scene, tmp_path):
    extra, code, match = PREDICT_CASES[case]
    out = tmp_path / "maps"
    args = _predict_args(scene, out, *extra)
    if "--weights" in extra:  # the case's own weights
        i = args.index("--weights")
        del args[i:i + 2]
    res = _cli(args)
    _assert_refused_before_cluster(res, code, match)
    assert not out.exists()


def test_predict_random_bytes_as_weights(scene, tmp_path, bad_weights):
    res = _cli(_predict_args(scene, tmp_path / "maps", weights=bad_weights))
    _assert_refused_before_cluster(res, 1, "weights.pt is not a PyTorch weights file")
    assert "pickled" not in res.output
    assert not (tmp_path / "maps").exists()


def test_predict_never_replaces_a_users_file(scene, tmp_path):
    out = tmp_path / "maps"
    out.mkdir()
    (out / "summary.json").write_text('{"my": "notes"}')
    (out / "other.txt").write_text("mine")
    before = _snapshot(out)
    res = _cli(_predict_args(scene, out))
    _assert_refused_before_cluster(res, 1, "summary.json (not written by crop2seg: no manifest lists it)")
    assert _snapshot(out) == before


def test_predict_out_is_a_file(scene, tmp_path):
    (tmp_path / "f").write_text("x")
    res = _cli(_predict_args(scene, tmp_path / "f"))
    _assert_refused_before_cluster(res, 2, "Invalid value for '--out'")
    assert "is a file" in res.output
    assert (tmp_path / "f").read_text() == "x"


# ----------------------------------------------------------------------------- train / evaluate


@pytest.fixture(scope="module")
def incomplete_store(tmp_path_factory):
    """A store whose build stopped after the skeleton (``complete`` false, no consolidated metadata)."""
    path = tmp_path_factory.mktemp("incomplete") / "patches.zarr"
    n, t = 4, 3
    patches = pd.DataFrame({"tile": ["33UWQ"] * n, "row": range(n), "col": [0] * n, "split": ["train"] * n,
                            "epsg": [32633] * n, "x0": [0.0] * n, "y0": [0.0] * n})
    dates = np.array([["2022-05-01", "2022-06-01", "2022-07-01"]] * n, dtype="datetime64[ns]")
    create_skeleton(path, patches, dates, np.ones((n, t), np.float32), ["B02"], 32, {"fingerprint": "x"})
    assert store_state(path) == "ours"
    return path


def test_train_refuses_an_incomplete_store_quietly(incomplete_store, tmp_path):
    with _no_warnings():
        res = _cli(["train", "--dataset", incomplete_store, "--out", tmp_path / "run", "--epochs", 1])
    _assert_refused_before_cluster(res, 1, "is an incomplete patch store (its build was interrupted or failed)")
    assert "RuntimeWarning" not in res.output and "consolidated" not in res.output
    assert not (tmp_path / "run").exists()


def test_train_on_a_folder_that_is_no_store(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("x")
    res = _cli(["train", "--dataset", tmp_path / "d", "--out", tmp_path / "run"])
    _assert_refused_before_cluster(res, 1, "is not a crop2seg patch store (foreign)")
    assert not (tmp_path / "run").exists()


def test_evaluate_refuses_an_incomplete_store_quietly(incomplete_store, tmp_path):
    with _no_warnings():
        res = _cli(["evaluate", "--dataset", incomplete_store, "--weights", default_demo_weights(),
                    "--out", tmp_path / "ev"])
    _assert_refused_before_cluster(res, 1, "is an incomplete patch store")
    assert not (tmp_path / "ev").exists()


def test_evaluate_random_bytes_as_weights(incomplete_store, tmp_path, bad_weights):
    res = _cli(["evaluate", "--dataset", incomplete_store, "--weights", bad_weights, "--out", tmp_path / "ev"])
    assert res.exit_code == 1, res.output
    assert ("not a PyTorch weights file" in res.output) or ("incomplete patch store" in res.output), res.output
    assert "pickled" not in res.output and "Traceback" not in res.output
    assert not (tmp_path / "ev").exists()


class _no_warnings:
    """No warning of any kind escapes the block (zarr's consolidated-metadata RuntimeWarning)."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self.caught = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        relevant = [w for w in self.caught if issubclass(w.category, RuntimeWarning) or "onsolidated" in str(w.message)]
        assert not relevant, [str(w.message) for w in relevant]


# ----------------------------------------------------------------------------- demo-scene, search, download, index-safe, cluster


def test_demo_scene_bad_parameters_name_the_options(tmp_path):
    res = _cli(["demo-scene", tmp_path / "s", "--size", 63])
    _assert_refused_before_cluster(res, 1, "--size must be an even number")
    res = _cli(["demo-scene", tmp_path / "s", "--dates", 1])
    _assert_refused_before_cluster(res, 1, "--dates must be between 2 and")
    res = _cli(["demo-scene", tmp_path / "s", "--tile", "99ZZZ"])
    assert res.exit_code == 1 and "99ZZZ" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "s").exists()


def test_demo_scene_into_a_folder_of_other_files(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "mine.txt").write_text("x")
    res = _cli(["demo-scene", tmp_path / "s", "--size", 64, "--dates", 2])
    _assert_refused_before_cluster(res, 1, "is not empty (it holds files that are not a demo scene)")
    assert _snapshot(tmp_path / "s") == {"mine.txt": b"x"}


@pytest.mark.parametrize("extra, match", [
    (["--start", "2022-02-30", "--end", "2022-03-01"], "expected a date YYYY-MM-DD, got '2022-02-30'"),
    (["--start", "2022-05-01", "--end", "2022-03-01"], "is before --start"),
    (["--start", "2022-01-01", "--end", "2022-03-01", "--max-cloud", "150"], "cloud limits are percentages 0..100"),
    (["--start", "2022-01-01", "--end", "2022-03-01", "--bbox", "15,50,14,51"], "minx 15 is not below maxx 14"),
])
def test_search_bad_arguments(extra, match, tmp_path):
    args = ["search", "--out", tmp_path / "items.json", "--url", "http://127.0.0.1:9/stac", "--collection", "c"]
    if "--bbox" not in extra:
        args += ["--bbox", "14,49,15,50"]
    res = _cli(args + extra)
    assert res.exit_code in (1, 2), res.output
    assert match in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "items.json").exists()


def test_download_into_a_foreign_folder_and_bad_bbox(scene, tmp_path):
    out = tmp_path / "mirror"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    res = _cli(["download", scene.items, "--out", out, "--workers", 1])
    assert res.exit_code == 1 and "is not empty and is not a crop2seg mirror" in res.output, res.output
    assert _snapshot(out) == {"mine.txt": b"x"}
    res = _cli(["download", scene.items, "--out", tmp_path / "m2", "--bbox", "15.2,49.5,15.1,49.4"])
    _assert_refused_before_cluster(res, 1, "miny 49.5 is not below maxy 49.4")
    assert not (tmp_path / "m2").exists()


def test_index_safe_of_something_that_is_no_product(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    res = _cli(["index-safe", tmp_path / "x.zip", "--out", tmp_path / "items.json"])
    assert res.exit_code == 1 and "x.zip" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "items.json").exists()


def test_cluster_bad_spec_and_options(tmp_path):
    res = _cli(["cluster", "nosuch", "--dry-run"])
    _assert_refused_before_cluster(res, 1, "'nosuch' is neither a scheduler address")
    res = _cli(["cluster", "local", "--workers", 0])
    _assert_refused_before_cluster(res, 2, "--workers")
    res = _cli(["cluster", "slurm", "--workers", 2, "--dry-run"])
    _assert_refused_before_cluster(res, 1, "--workers (n_workers): only for a local cluster")


# ----------------------------------------------------------------------------- advice names options that exist


def test_every_option_named_in_a_message_exists():
    """Every ``--option`` written in the package's source (error messages, advice) is an option of
    some command: no advice to pass an option nobody has (such as the old "pass --epsg")."""
    import re

    import crop2seg_pipeline

    known = {o for cmd in main.commands.values() for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    known |= {"--help", "--workflow"}
    # options of other programs named in advice and specs (dask scheduler --port, dask worker
    # --lifetime), not ours
    foreign = {"--port", "--lifetime", "--lifetime-stagger"}
    root = Path(crop2seg_pipeline.__file__).parent
    named: dict[str, set[str]] = {}
    for f in root.rglob("*.py"):
        for opt in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)(?!\w)", f.read_text()):
            named.setdefault(opt, set()).add(f.relative_to(root).as_posix())
    unknown = {o: sorted(fs) for o, fs in named.items() if o not in known | foreign}
    assert not unknown, unknown
