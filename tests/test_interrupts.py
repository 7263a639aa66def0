"""SIGINT (Ctrl-C) and SIGTERM at every phase of build-dataset and predict, on real processes.

Each command is paused at a phase by the test hook (``CROP2SEG_TEST_PAUSE_AT``: the command prints
``CROP2SEG_TEST_PAUSED <phase>`` and waits), signalled, and then: exit 130 / 143 with the
command's message, no traceback (no worker's either), every worker process gone, nothing left
that a later run would trust, and a re-run that ends equal to a clean run. Nothing here waits
on a guessed duration: the tests wait for the marker line and for the process to end.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from processes import DEADLINE_S, sigint_blocked, start_command, worker_processes
from test_build import assert_same_store

from crop2seg_pipeline.build import build_dataset
from crop2seg_pipeline.interrupts import Interrupted, deferred, signals_as_exceptions
from crop2seg_pipeline.manifest import read_manifest
from crop2seg_pipeline.predict import default_demo_weights
from crop2seg_pipeline.store import open_store, store_state

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated metadata:RuntimeWarning"),
]

PATCH = 64
OPTS = dict(patch_size=PATCH, chunksize=2 * PATCH, min_crop_cover=0.3, split_block=2, seed=3)
NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


def _build_args(scene, out) -> list:
    return ["build-dataset", "--items", scene.items, "--parcels", scene.parcels, "--out", out,
            "--mapping", scene.mapping, "--patch-size", PATCH, "--chunksize", OPTS["chunksize"],
            "--min-crop-cover", OPTS["min_crop_cover"], "--split-block", OPTS["split_block"],
            "--seed", OPTS["seed"], "--workers", 2]


def _predict_args(scene, out) -> list:
    return ["predict", "--items", scene.items, "--weights", default_demo_weights(), "--out", out,
            "--parcels", scene.parcels, "--mapping", scene.mapping, "--chunksize", 128, "--workers", 2]


def _interrupt(args, tmp_path, name, phase, sig, group=False):
    """Run the command until it pauses at ``phase``, send ``sig``; the finished command."""
    cmd = start_command(args, tmp_path, name, env={"CROP2SEG_TEST_PAUSE_AT": phase})
    cmd.wait_paused(phase)
    workers = worker_processes(cmd)
    cmd.signal(sig, group=group)
    cmd.wait()
    return cmd, workers


def _assert_clean_interrupt(cmd, sig, message: str) -> None:
    err = cmd.stderr()
    assert cmd.proc.returncode == 128 + sig, cmd.stdout() + err
    assert f"interrupted ({NAMES[sig]}): {message}" in err, err
    for bad in ("Traceback", "KeyboardInterrupt", "Exception", "heartbeat"):
        assert bad not in err, err
    assert not cmd.leftover_processes(), "worker processes left behind"


@pytest.fixture(scope="module")
def reference(small_scene, tmp_path_factory):
    """The clean build every interrupted-and-resumed one must equal."""
    out = tmp_path_factory.mktemp("ref") / "patches.zarr"
    build_dataset(small_scene.items, small_scene.parcels, out, mapping=small_scene.mapping, **OPTS)
    return out


# ----------------------------------------------------------------------------- build-dataset


@pytest.mark.parametrize("phase, sig", [
    ("args", signal.SIGTERM),
    ("cluster", signal.SIGINT),
    ("pass1", signal.SIGTERM),
])
def test_build_interrupted_before_the_store_leaves_nothing(small_scene, tmp_path, phase, sig):
    out = tmp_path / "patches.zarr"
    cmd, workers = _interrupt(_build_args(small_scene, out), tmp_path, "build", phase, sig)
    _assert_clean_interrupt(cmd, sig, "patches written so far are kept")
    assert not out.exists()  # nothing was written: not even the lock's folder is left
    if phase != "args":
        assert len(workers) == 2


def test_ctrl_c_during_the_cluster_start_is_not_lost_and_workers_never_see_it(small_scene, tmp_path):
    """The local cluster's workers start with SIGINT blocked (a terminal's Ctrl-C reaches the
    whole group); a Ctrl-C to the group while the cluster starts is held back, then stops the
    command as soon as the cluster is up (it used to be ignored, and the build ran to the end)."""
    out = tmp_path / "patches.zarr"
    cmd = start_command(_build_args(small_scene, out), tmp_path, "build", env={"CROP2SEG_TEST_PAUSE_AT": "cluster"})
    cmd.wait_paused("cluster")
    workers = worker_processes(cmd)
    assert len(workers) == 2 and all(sigint_blocked(p.pid) for p in workers)
    cmd.signal(signal.SIGINT, group=True)
    cmd.wait()
    _assert_clean_interrupt(cmd, signal.SIGINT, "patches written so far are kept")
    assert not out.exists()


@pytest.mark.parametrize("phase, sig, group", [
    ("skeleton", signal.SIGINT, False),
    ("pass2", signal.SIGINT, True),
    ("pass2", signal.SIGTERM, False),
    ("finalize", signal.SIGTERM, False),
])
def test_build_interrupted_then_resumed_equals_a_clean_build(small_scene, reference, tmp_path, phase, sig, group):
    out = tmp_path / "patches.zarr"
    cmd, _ = _interrupt(_build_args(small_scene, out), tmp_path, "build", phase, sig, group=group)
    _assert_clean_interrupt(cmd, sig, "patches written so far are kept")
    assert store_state(out) == "ours"
    with pytest.raises(Exception, match="incomplete"):
        open_store(out)  # nothing trusts it yet
    assert not (out / ".crop2seg" / "lock.json").exists()  # released
    res = subprocess.run([sys.executable, "-m", "crop2seg_pipeline", *map(str, _build_args(small_scene, out))],
                         capture_output=True, text=True, timeout=DEADLINE_S)
    assert res.returncode == 0, res.stdout + res.stderr
    if phase != "skeleton":
        assert "resuming" in res.stderr or "already done" in res.stdout
    assert_same_store(reference, out)


# ----------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def clean_prediction(small_scene, tmp_path_factory):
    """An uninterrupted run of the same command (same cluster layout: the same floating-point sums)."""
    out = tmp_path_factory.mktemp("pred-ref") / "maps"
    res = subprocess.run([sys.executable, "-m", "crop2seg_pipeline", *map(str, _predict_args(small_scene, out))],
                         capture_output=True, text=True, timeout=DEADLINE_S)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def _raster(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.mark.parametrize("phase, sig", [
    ("args", signal.SIGINT),
    ("cluster", signal.SIGTERM),
    ("datecheck", signal.SIGINT),
    ("predict", signal.SIGTERM),
    ("finalize", signal.SIGINT),
])
def test_predict_interrupted_writes_nothing_final_and_rerun_equals_a_clean_run(small_scene, clean_prediction,
                                                                               tmp_path, phase, sig):
    out = tmp_path / "maps"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    cmd, _ = _interrupt(_predict_args(small_scene, out), tmp_path, "predict", phase, sig)
    _assert_clean_interrupt(cmd, sig, "nothing final was written")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no output, no temporary, no lock
    if phase not in ("predict", "finalize"):
        return  # the same state as those: one re-run each is enough (test time)
    res = subprocess.run([sys.executable, "-m", "crop2seg_pipeline", *map(str, _predict_args(small_scene, out))],
                         capture_output=True, text=True, timeout=DEADLINE_S)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("classes.tif", "confidence.tif"):
        np.testing.assert_array_equal(_raster(out / name), _raster(clean_prediction / name), err_msg=name)
    manifest = read_manifest(out)
    assert manifest["complete"] is True
    assert sorted(manifest["files"]) == sorted(read_manifest(clean_prediction)["files"])
    assert (out / "notes.txt").read_text() == "the user's"


# ----------------------------------------------------------------------------- the mechanism, in process


def test_deferred_signals_are_raised_when_the_block_ends():
    import os

    with signals_as_exceptions():
        with pytest.raises(Interrupted) as e:
            with deferred(block_sigint=True):
                os.kill(os.getpid(), signal.SIGINT)  # pending (blocked) until the block ends
                reached = True
        assert reached and e.value.exit_code == 130
        os.kill(os.getpid(), signal.SIGTERM)  # after the first interrupt: recorded, not raised (cleanup runs)
        for _ in range(10**5):
            pass
    with signals_as_exceptions():
        with pytest.raises(Interrupted) as e:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**7):  # the handler raises at a bytecode boundary, long before the end
                pass
        assert e.value.exit_code == 143 and isinstance(e.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_manifest_of_the_clean_prediction_lists_sizes_and_checksums(clean_prediction):
    import hashlib

    doc = json.loads((clean_prediction / "manifest.json").read_text())
    assert doc["complete"] and doc["command"] == "crop2seg-predict"
    names = {"classes.tif", "classes.tif.aux.xml", "confidence.tif", "quicklook.png", "summary.json", "parcels.gpkg"}
    assert set(doc["files"]) == names
    for name, e in doc["files"].items():
        data = (clean_prediction / name).read_bytes()
        assert e["size"] == len(data) and e["sha256"] == hashlib.sha256(data).hexdigest(), name
    assert sorted(p.name for p in clean_prediction.iterdir()) == sorted(names | {"manifest.json"})


_ALL_BLOCKED = """
import os, signal, threading
from crop2seg_pipeline.interrupts import Interrupted, deferred, interrupt_pending, signals_as_exceptions
with signals_as_exceptions():
    try:
        with deferred(block_sigint=True):
            t = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
            t.start()  # every thread of the process now blocks SIGINT: the kernel keeps it pending
            os.kill(os.getpid(), signal.SIGINT)
            print("pending", interrupt_pending(), flush=True)
        print("not raised")
    except Interrupted as e:
        print("raised", e.exit_code)
"""


def test_a_sigint_every_thread_blocks_is_seen_as_pending_and_raised_after_the_block():
    """With every thread blocking SIGINT (a cluster starting), a Ctrl-C stays pending in the
    kernel: the pause hook must see it (or it would wait for its deadline) and the end of the
    block raises it."""
    res = subprocess.run([sys.executable, "-c", _ALL_BLOCKED], capture_output=True, text=True, timeout=DEADLINE_S)
    assert res.stdout.split("\n")[:2] == ["pending True", "raised 130"], res.stdout + res.stderr
