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
from processes import DEADLINE_S, start_command, start_scheduler, stop_processes

from crop2seg_pipeline import storage
from crop2seg_pipeline.__main__ import main
from crop2seg_pipeline.build import build_dataset
from crop2seg_pipeline.items import normalize_items
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
    hrefs = [a["href"] for it in normalize_items(items) for a in it["assets"].values()]
    assert hrefs and all(h.startswith(f"s3://{s3.bucket}/scene/S2/") for h in hrefs)
    # no secret anywhere in what was written
    secret = s3.keys["writer"][1]
    for k in keys:
        if k.endswith(".json"):
            body = s3.client().get_object(Bucket=s3.bucket, Key=k)["Body"].read().decode()
            assert secret not in body, k


def test_interrupted_s3_build_resumes_and_equals_clean_build(s3, scene_urls, small_scene, local_build, cluster,
                                                             tmp_path, caplog):
    """SIGKILL of the whole build command (client and its worker processes: nothing cleans up,
    the lock stays behind) once exactly two chunks are done (the hold hook stops each worker
    after one pass-2 task); the same build again takes over the dead lock, resumes and equals a
    clean build."""
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

    with caplog.at_level("INFO", logger="crop2seg_pipeline"):
        summary = build_dataset(items, parcels, out, mapping=small_scene.mapping, client=cluster, **OPTS)
    assert "taking over the lock" in caplog.text and "resuming" in caplog.text
    assert 0 < summary.n_resumed < summary.n_patches
    assert_same_store(local_build, out)


# ----------------------------------------------------------------------------- no shared filesystem


@pytest.fixture
def remote_workers(s3, tmp_path):
    """A real ``dask scheduler`` and two ``dask worker`` processes that do not share the client's
    filesystem where the client writes: each worker runs in a mount namespace of its own
    (``unshare -m``) with an empty tmpfs mounted over the client's ``client-side`` folder, in a
    working directory, HOME and TMPDIR of its own. Like a worker on another machine, it finds a
    folder at that path, with other contents. Yields (scheduler address, client-side folder)."""
    client_side = tmp_path / "client-side"
    client_side.mkdir()
    (client_side / "notes.txt").write_text("the client's own file\n")
    scheduler, address = start_scheduler(tmp_path / "scheduler.json")
    procs = [scheduler]
    try:
        for k in range(2):
            home = tmp_path / f"worker-{k}"
            (home / "tmp").mkdir(parents=True)
            worker = (f"mount -t tmpfs none {client_side} && cd {home} && exec {sys.executable} -m "
                      f"distributed.cli.dask_worker {address} --nworkers 1 --nthreads 1 --memory-limit 2GB "
                      f"--no-dashboard --local-directory {home / 'tmp'}")
            procs.append(subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", worker], cwd=home,
                env={**os.environ, **s3.env("writer"), "HOME": str(home), "TMPDIR": str(home / "tmp")},
                stdout=(home / "worker.log").open("w"), stderr=subprocess.STDOUT))
        with Client(address) as c:
            c.wait_for_workers(2, timeout=DEADLINE_S)
            # the workers really do not see the client's folder (what the probe must find out)
            assert list(c.run(os.listdir, str(client_side)).values()) == [[], []]
        yield address, client_side
    finally:
        stop_processes(procs)  # the workers, then the scheduler


def _cli(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_workers_without_the_clients_filesystem_refuse_a_local_out_and_write_an_s3_one(
        s3, scene_urls, small_scene, local_build, remote_workers):
    address, client_side = remote_workers
    items, parcels = scene_urls
    before = sorted(p.name for p in client_side.iterdir())
    local_out = client_side / "store.zarr"
    res = _cli([*_cli_args(items, parcels, small_scene.mapping, local_out)[:-2], "--cluster", address])
    assert res.exit_code == 1, res.output
    assert "do not see this machine's" in res.output and "object-store URL" in res.output, res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in client_side.iterdir()) == before  # nothing left: no store, no lock, no probe

    out = f"s3://{s3.bucket}/stores/remote-workers.zarr"
    res = _cli([*_cli_args(items, parcels, small_scene.mapping, out)[:-2], "--cluster", address])
    assert res.exit_code == 0, res.output
    assert_same_store(local_build, out)


# ----------------------------------------------------------------------------- bad object-store locations


@pytest.mark.parametrize("case", ["wrong-credentials", "missing-bucket", "read-only"])
def test_bad_s3_out_is_refused_before_anything_starts(s3, scene_urls, small_scene, case, monkeypatch):
    items, parcels = scene_urls
    bucket = "no-such-bucket" if case == "missing-bucket" else s3.bucket
    out = f"s3://{bucket}/stores/{case}.zarr"
    user = {"wrong-credentials": "nobody", "read-only": "reader"}.get(case, "writer")
    for k, v in s3.env(user).items():
        monkeypatch.setenv(k, v)
    before = s3.keys_under("")
    res = _cli(_cli_args(items, parcels, small_scene.mapping, out))
    assert res.exit_code == 1, res.output
    assert out in res.output and "Traceback" not in res.output, res.output
    assert "local Dask cluster" not in res.output and "Dask dashboard" not in res.output
    expected = {"wrong-credentials": "refused the credentials", "missing-bucket": "does not exist: create it",
                "read-only": "no permission to write"}[case]
    assert expected in res.output, res.output
    assert s3.keys[user][1] not in res.output  # never a secret in a message
    assert s3.keys_under("") == before  # nothing written anywhere


# ----------------------------------------------------------------------------- predict


def test_predict_to_s3_uploads_valid_cogs_and_parcels_equal_to_a_local_prediction(s3, scene_urls, small_scene,
                                                                                     cluster, tmp_path):
    import geopandas as gpd
    import rasterio

    from crop2seg_pipeline.manifest import MANIFEST
    from rio_cogeo.cogeo import cog_validate

    from crop2seg_pipeline.predict import default_demo_weights, predict

    items, parcels = scene_urls
    opts = dict(mapping=small_scene.mapping, overlap=16, batch_size=4, chunksize=128, progress=lambda m: None)
    local = predict(small_scene.items, default_demo_weights(), tmp_path / "local", parcels=small_scene.parcels, **opts)
    out = f"s3://{s3.bucket}/predictions/demo"
    summary = predict(items, default_demo_weights(), out, parcels=parcels, client=cluster, **opts)
    assert summary.out_dir == out and summary.files["classes"] == f"{out}/classes.tif"
    keys = {k.rpartition("/")[2] for k in s3.keys_under("predictions/demo/")}
    assert set(local.files.values()) and keys == {Path(p).name for p in local.files.values()} | {"classes.tif.aux.xml"}
    assert not any(k.startswith(".") for k in keys)  # no temporary names, no lock left
    manifest = json.loads(s3.client().get_object(Bucket=s3.bucket, Key=f"predictions/demo/{MANIFEST}")["Body"].read())
    assert manifest["complete"] is True and set(manifest["files"]) == keys - {MANIFEST}
    with rasterio.Env(**storage.gdal_s3_options()):  # read back through GDAL's /vsis3/
        for name in ("classes.tif", "confidence.tif"):
            remote = f"/vsis3/{s3.bucket}/predictions/demo/{name}"
            valid, errors, _ = cog_validate(remote, strict=True)  # rio-cogeo, reading over HTTP from the bucket
            assert valid and not errors, (name, errors)
            with rasterio.open(remote) as r, rasterio.open(tmp_path / "local" / name) as l:
                assert r.profile == l.profile
                np.testing.assert_array_equal(r.read(), l.read(), err_msg=name)
    with storage.local_copy(f"{out}/parcels.gpkg") as copy:
        remote_parcels = gpd.read_file(copy, layer="parcels")
    local_parcels = gpd.read_file(tmp_path / "local" / "parcels.gpkg", layer="parcels")
    assert len(remote_parcels) == len(local_parcels) > 0
    assert remote_parcels.drop(columns="geometry").equals(local_parcels.drop(columns="geometry"))
    assert remote_parcels.geometry.geom_equals(local_parcels.geometry).all()


def test_predict_to_s3_refuses_objects_it_did_not_write(s3, scene_urls, small_scene):
    from crop2seg_pipeline.manifest import OutputConflict
    from crop2seg_pipeline.predict import default_demo_weights, predict

    items, _ = scene_urls
    s3.client().put_object(Bucket=s3.bucket, Key="predictions/theirs/classes.tif", Body=b"the user's own file")
    before = s3.keys_under("predictions/theirs/")
    with pytest.raises(OutputConflict, match="classes.tif .not written by crop2seg"):
        predict(items, default_demo_weights(), f"s3://{s3.bucket}/predictions/theirs", chunksize=128,
                progress=lambda m: None)
    assert s3.keys_under("predictions/theirs/") == before
    body = s3.client().get_object(Bucket=s3.bucket, Key="predictions/theirs/classes.tif")["Body"].read()
    assert body == b"the user's own file"


# ----------------------------------------------------------------------------- train and evaluate


def test_train_and_evaluate_on_an_s3_store_equal_the_local_runs(s3, tmp_path, monkeypatch):
    """The same seeded CPU run on a store in the bucket (read over fsspec, with a local chunk
    cache) and on its local original: the same weights; evaluation from the bucket with weights
    from the bucket (downloaded once): the same metrics, through the command line too."""
    import torch
    from patchstores import KW, make_store

    from crop2seg_pipeline.evaluate import evaluate
    from crop2seg_pipeline.train import train

    local = make_store(tmp_path / "patches.zarr")
    url = s3.upload_tree(local, "training/patches.zarr")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order in both runs
    try:
        a = train(local, tmp_path / "run-local", epochs=1, **KW)
        b = train(url, tmp_path / "run-s3", epochs=1, dataset_cache=tmp_path / "cache", **KW)
    finally:
        torch.set_num_threads(threads)
    assert a["history"][0]["loss"] == b["history"][0]["loss"]
    wa = torch.load(tmp_path / "run-local" / "weights.pt", weights_only=True)
    wb = torch.load(tmp_path / "run-s3" / "weights.pt", weights_only=True)
    assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any((tmp_path / "cache").iterdir())  # chunks were cached locally
    meta = json.loads((tmp_path / "run-s3" / "model.json").read_text())
    assert meta["training"]["store"] == url

    weights_url = s3.upload_tree(tmp_path / "run-local", "training/weights")
    cache = tmp_path / "xdg"
    m_local = evaluate(local, tmp_path / "run-local", split="test", device="cpu")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    m_s3 = evaluate(url, weights_url, split="test", device="cpu")
    res = _cli(["evaluate", "--dataset", url, "--weights", weights_url, "--split", "test", "--device", "cpu",
                "--out", tmp_path / "eval"])
    assert res.exit_code == 0, res.output
    assert len(list((cache / "crop2seg" / "downloads").iterdir())) == 1  # downloaded once, reused
    for k in ("overall_accuracy", "miou", "macro_f1", "confusion_matrix", "per_class"):
        assert m_s3[k] == m_local[k], k
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["miou"] == m_local["miou"]


def test_bad_s3_items_and_parcels_name_the_url(s3, scene_urls):
    from crop2seg_pipeline.errors import Crop2SegError
    from crop2seg_pipeline.items import read_items
    from crop2seg_pipeline.parcels import read_parcels

    _, parcels = scene_urls
    with pytest.raises(Crop2SegError, match="KOD_NOPE") as e:
        read_parcels(parcels, crop_column="KOD_NOPE")
    assert parcels in str(e.value) and "crop2seg-copy" not in str(e.value)
    missing = f"s3://{s3.bucket}/scene/no-such-items.json"
    with pytest.raises(Crop2SegError, match=re.escape(missing)):
        read_items(missing)


# ----------------------------------------------------------------------------- the lock on the object store


def test_s3_lock_is_a_conditional_put_and_a_live_holder_refuses_a_second_writer(s3):
    """Create-only on the server (``If-None-Match: *``): a second create fails, whoever asks;
    a lock held by a live process (here: the moto server's, on this host) refuses a writer and
    is left as it was."""
    import psutil

    from crop2seg_pipeline.locks import LOCK_NAME, LockHeld, LockInfo, WriterLock

    url = f"s3://{s3.bucket}/locks/a.json"
    assert storage.create_exclusive(url, b"first") is True
    assert storage.create_exclusive(url, b"second") is False
    assert storage.read_bytes(url) == b"first"

    folder = f"s3://{s3.bucket}/locks/store.zarr"
    pid = s3.proc.pid
    other = LockInfo(holder="crop2seg-build-dataset", host=LockInfo.mine("x").host, pid=pid,
                     pid_started=psutil.Process(pid).create_time(), started="2026-12-01T08:40:00+00:00",
                     token="0" * 32)
    assert storage.create_exclusive(f"{folder}/{LOCK_NAME}", other.to_bytes())
    with pytest.raises(LockHeld, match=f"being written by crop2seg-build-dataset .pid {pid}"):
        WriterLock(folder, "crop2seg-build-dataset", "patch store").acquire()
    assert storage.read_bytes(f"{folder}/{LOCK_NAME}") == other.to_bytes()
    # released by its holder: a new writer gets it, and releases it again
    storage.delete(f"{folder}/{LOCK_NAME}")
    lock = WriterLock(folder, "crop2seg-build-dataset", "patch store").acquire()
    assert LockInfo.parse(storage.read_bytes(f"{folder}/{LOCK_NAME}")).token == lock.info.token
    lock.release()
    assert storage.read_bytes(f"{folder}/{LOCK_NAME}") is None
