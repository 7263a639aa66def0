"""Items, patch stores and outputs on object storage, on a real S3 server on loopback (moto).

The demo scene is uploaded to a bucket; builds read ``s3://`` items (whose COGs GDAL reads through
``/vsis3/``) and parcels, and their Dask workers write the store straight to the bucket. Every store
written there must equal the local build of the same inputs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from distributed import Client, LocalCluster
from processes import DEADLINE_S, start_command

from crop2seg_pipeline import storage
from crop2seg_pipeline.__main__ import main
from crop2seg_pipeline.build import build_dataset
from crop2seg_pipeline.interrupts import HOLD_ENV, RESUME_ENV
from crop2seg_pipeline.store import MARKER_DIR, open_store, read_attrs, store_state

pytestmark = [
    pytest.mark.slow,
    # an interrupted store has no consolidated metadata yet (written last): expected here
    pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated metadata:RuntimeWarning"),
]

PATCH = 64
OPTS = dict(patch_size=PATCH, chunksize=2 * PATCH, min_crop_cover=0.3, split_block=2, seed=3)
#: attributes that name where the inputs were (a path here, a URL there)
LOCATION_ATTRS = ("fingerprint",)


@pytest.fixture(scope="module")
def scene_urls(s3, small_scene):
    """The small demo scene uploaded to the bucket: (items URL, parcels URL)."""
    base = s3.upload_tree(small_scene.root, "scene")
    return f"{base}/items.json", f"{base}/parcels.gpkg"


@pytest.fixture(scope="module")
def local_build(small_scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("objstore-ref") / "patches.zarr"
    build_dataset(small_scene.items, small_scene.parcels, out, mapping=small_scene.mapping, **OPTS)
    return out


@pytest.fixture(scope="module")
def cluster(s3):
    """Worker processes started after the S3 environment is set (they read the keys themselves)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc:
        with Client(lc) as client:
            yield client


def store_content(location) -> dict:
    ds = open_store(location)
    out = {k: ds[k].values for k in list(ds.data_vars) + list(ds.coords)}
    attrs = json.loads(json.dumps(dict(ds.attrs), sort_keys=True))
    for k in LOCATION_ATTRS:
        attrs.pop(k)
    for k in ("items", "parcels"):
        attrs["build_parameters"].pop(k)
    out["attrs"] = attrs
    return out


def assert_same_store(a, b) -> None:
    a, b = store_content(a), store_content(b)
    assert sorted(a) == sorted(b)
    for k in a:
        if k == "attrs":
            assert a[k] == b[k]
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _cli_args(items, parcels, mapping, out) -> list[str]:
    return ["build-dataset", "--items", str(items), "--parcels", str(parcels), "--out", str(out),
            "--mapping", str(mapping), "--patch-size", str(PATCH), "--chunksize", str(OPTS["chunksize"]),
            "--min-crop-cover", str(OPTS["min_crop_cover"]), "--split-block", str(OPTS["split_block"]),
            "--seed", str(OPTS["seed"]), "--workers", "2"]


def _n_markers(s3, prefix: str) -> int:
    return sum(1 for k in s3.keys_under(f"{prefix}/{MARKER_DIR}/") if k.endswith(".json"))


# ----------------------------------------------------------------------------- build


def test_build_from_s3_items_into_s3_store_equals_local_build(s3, scene_urls, small_scene, local_build, cluster):
    items, parcels = scene_urls
    out = f"s3://{s3.bucket}/stores/clean.zarr"
    summary = build_dataset(items, parcels, out, mapping=small_scene.mapping, client=cluster, **OPTS)
    assert summary.n_patches > 0 and summary.n_written == summary.n_patches
    keys = s3.keys_under("stores/clean.zarr/")
    assert "stores/clean.zarr/zarr.json" in keys and "stores/clean.zarr/patches.gpkg" in keys
    assert any(k.startswith("stores/clean.zarr/s2/c/") for k in keys)  # chunks written by the workers
    assert not any(k.endswith("lock.json") for k in keys)  # the lock is released
    assert store_state(out) == "ours" and read_attrs(out)["complete"] is True
    assert_same_store(local_build, out)
    # the assets were read from the bucket, not from the local scene: the items name s3:// hrefs
    ds = open_store(out)
    assert ds.attrs["build_parameters"]["items"] == items
    # no secret anywhere in what was written
    secret = s3.keys["writer"][1]
    for k in keys:
        if k.endswith(".json"):
            body = s3.client().get_object(Bucket=s3.bucket, Key=k)["Body"].read().decode()
            assert secret not in body, k


def test_interrupted_s3_build_resumes_and_equals_clean_build(s3, scene_urls, small_scene, local_build, tmp_path):
    """SIGKILL of the whole build (client and its worker processes: nothing cleans up, the lock
    stays behind) once exactly two chunks are done (the hold hook stops each worker after one
    pass-2 task); the same command again takes over the dead lock, resumes and equals a clean build."""
    items, parcels = scene_urls
    prefix = "stores/interrupted.zarr"
    out = f"s3://{s3.bucket}/{prefix}"
    args = _cli_args(items, parcels, small_scene.mapping, out)
    cmd = start_command(args, tmp_path, "build", env={HOLD_ENV: "pass2:1", RESUME_ENV: str(tmp_path / "never")})
    try:
        deadline = time.monotonic() + DEADLINE_S
        while _n_markers(s3, prefix) < 2:
            assert cmd.proc.poll() is None, cmd.stdout() + cmd.stderr()
            assert time.monotonic() < deadline, "no 2 markers"
            time.sleep(0.1)
        cmd.signal(signal.SIGKILL, group=True)
    finally:
        cmd.wait()
    assert _n_markers(s3, prefix) == 2
    assert any(k.endswith(".crop2seg/lock.json") for k in s3.keys_under(prefix + "/"))  # left by the dead build
    assert read_attrs(out)["complete"] is False

    res = subprocess.run([sys.executable, "-m", "crop2seg_pipeline", *args], capture_output=True, text=True,
                         timeout=DEADLINE_S)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "taking over the lock" in res.stderr
    assert int(re.search(r"(\d+) already done", res.stdout).group(1)) > 0 and "resuming" in res.stderr
    assert_same_store(local_build, out)
