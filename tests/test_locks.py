"""The writer lock: one writer per folder, across real processes; stale locks taken over."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crop2seg_pipeline.errors import Crop2SegError
from crop2seg_pipeline.locks import LOCK_NAME, LockHeld, LockInfo, WriterLock, read_lock, writer_lock
from crop2seg_pipeline.store import clear_store, store_state

DEADLINE_S = 300  # generous: the suite must pass on a loaded machine


def _dead_pid() -> tuple[int, float]:
    """The pid and start time of a process that has exited (and been reaped)."""
    import psutil

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    started = psutil.Process(p.pid).create_time()
    p.kill()
    p.wait()
    return p.pid, started


def _write_lock(folder: Path, **fields) -> Path:
    info = {"holder": "crop2seg-build-dataset", "host": socket.gethostname(), "pid": os.getpid(),
            "pid_started": None, "started": "2026-01-01T00:00:00+00:00", "token": "feedface", **fields}
    path = folder / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info))
    return path


def test_lock_holds_who_and_goes_away_with_the_folder_it_created(tmp_path):
    target = tmp_path / "new" / "store.zarr"
    with writer_lock(target, "crop2seg-build-dataset", "patch store") as lock:
        info = read_lock(target)
        assert info is not None and info.token == lock.info.token
        assert (info.holder, info.host, info.pid) == ("crop2seg-build-dataset", socket.gethostname(), os.getpid())
        assert info.pid_started and info.started
        doc = json.loads((target / LOCK_NAME).read_text())
        assert {"holder", "host", "pid", "pid_started", "started", "token"} <= set(doc)
    assert not (tmp_path / "new").exists()  # nothing was written there: nothing is left


def test_release_keeps_what_was_written_and_a_folder_that_existed(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with writer_lock(target, "t"):
        (target / "result.txt").write_text("x")
    assert sorted(p.name for p in target.iterdir()) == ["result.txt"]
    with writer_lock(target, "t"):
        pass
    assert sorted(p.name for p in target.iterdir()) == ["result.txt"]


def test_reentrant_in_one_process(tmp_path):
    outer = WriterLock(tmp_path / "s", "cli").acquire()
    inner = WriterLock(tmp_path / "s", "library").acquire()
    assert inner.info.token == outer.info.token
    inner.release()
    assert read_lock(tmp_path / "s") is not None  # the outer holder still has it
    outer.release()
    assert read_lock(tmp_path / "s") is None


_HOLDER = textwrap.dedent("""
    import sys, time, pathlib
    from crop2seg_pipeline.locks import writer_lock
    target, ready, release = sys.argv[1:4]
    with writer_lock(target, "holder-process"):
        pathlib.Path(ready).write_text("held")
        deadline = time.monotonic() + 600
        while not pathlib.Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
""")


def _wait_file(path: Path, proc: subprocess.Popen) -> None:
    import time

    deadline = time.monotonic() + DEADLINE_S
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {path} after {DEADLINE_S} s"
        time.sleep(0.02)


def test_second_writer_in_another_process_is_refused_and_harms_nothing(tmp_path):
    target, ready, release = tmp_path / "store", tmp_path / "ready", tmp_path / "release"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(target), str(ready), str(release)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_file(ready, proc)
        before = (target / LOCK_NAME).read_bytes()
        with pytest.raises(LockHeld, match=rf"is being written by holder-process \(pid {proc.pid} on host "):
            WriterLock(target, "second").acquire()
        assert (target / LOCK_NAME).read_bytes() == before  # untouched
    finally:
        release.write_text("go")
        proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0
    assert read_lock(target) is None


def test_stale_lock_of_a_dead_process_is_taken_over_and_said(tmp_path, caplog):
    pid, started = _dead_pid()
    _write_lock(tmp_path / "s", pid=pid, pid_started=started, token="stale")
    with caplog.at_level(logging.WARNING, logger="crop2seg_pipeline.locks"):
        with writer_lock(tmp_path / "s", "me") as lock:
            assert read_lock(tmp_path / "s").token == lock.info.token != "stale"
    assert f"taking over the lock of crop2seg-build-dataset (pid {pid}" in caplog.text
    assert "no longer running" in caplog.text


def test_reused_pid_is_stale(tmp_path):
    """Our own (live) pid but another start time: the pid was reused, the writer is gone."""
    _write_lock(tmp_path / "s", pid=os.getpid(), pid_started=12345.0)
    with writer_lock(tmp_path / "s", "me"):
        pass


def test_lock_of_another_host_is_refused_with_the_way_out(tmp_path):
    path = _write_lock(tmp_path / "s", host="other-node.example", pid=1)
    with pytest.raises(LockHeld, match=rf"pid 1 on host other-node.example.*once you know that process is gone, "
                                       rf"delete {path}"):
        WriterLock(tmp_path / "s", "me").acquire()
    assert path.exists()


def test_unreadable_lock_is_refused(tmp_path):
    path = tmp_path / "s" / LOCK_NAME
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(LockHeld, match="lock file that cannot be read"):
        WriterLock(tmp_path / "s", "me").acquire()
    assert path.read_text() == "{not json"


def test_release_never_deletes_a_lock_taken_over_by_another(tmp_path):
    lock = WriterLock(tmp_path / "s", "me").acquire()
    (tmp_path / "s" / LOCK_NAME).write_text(LockInfo.mine("other").to_bytes().decode())  # taken over
    lock.release()
    assert read_lock(tmp_path / "s").holder == "other"


def test_unwritable_folder_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(Crop2SegError, match="exists and is not a folder"):
        WriterLock(tmp_path / "file", "me").acquire()
    with pytest.raises(Crop2SegError, match="cannot write patch store"):
        WriterLock(tmp_path / "file" / "below", "me", "patch store").acquire()


def _contend(target: str, barrier, results, release) -> None:
    barrier.wait()
    try:
        lock = WriterLock(target, f"p{os.getpid()}").acquire()
    except LockHeld:
        results.put("refused")
        return
    results.put("won")
    release.wait(DEADLINE_S)
    lock.release()


def test_processes_started_together_exactly_one_wins(tmp_path):
    """Eight processes released by one barrier all try the same lock: one gets it, seven are refused.
    The winner holds it until every other one has answered, so the outcome does not depend on timing."""
    ctx = mp.get_context("spawn")
    n = 8
    barrier, results, release = ctx.Barrier(n), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_contend, args=(str(tmp_path / "s"), barrier, results, release)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        answers = [results.get(timeout=DEADLINE_S) for _ in range(n)]
    finally:
        release.set()
        for p in procs:
            p.join(DEADLINE_S)
    assert sorted(answers) == ["refused"] * (n - 1) + ["won"]
    assert all(p.exitcode == 0 for p in procs)
    assert read_lock(tmp_path / "s") is None


def test_store_with_only_a_lock_is_empty_and_overwrite_keeps_the_lock(tmp_path):
    store = tmp_path / "s.zarr"
    with writer_lock(store, "me") as lock:
        assert store_state(store) == "empty"
        (store / "zarr.json").write_text(json.dumps({"attributes": {"format": "crop2seg-patch-store"}}))
        (store / "s2").mkdir()
        (store / ".crop2seg" / "done").mkdir()
        assert store_state(store) == "ours"
        clear_store(store)
        assert store_state(store) == "empty"
        assert read_lock(store).token == lock.info.token
    assert not store.exists()  # the lock made the folder and nothing else is in it: gone
    store.mkdir()
    (store / "mine.txt").write_text("user")
    with pytest.raises(Crop2SegError, match="not a crop2seg patch store"):
        clear_store(store)
    assert (store / "mine.txt").exists()


# ----------------------------------------------------------------------------- through the commands


def _build_cmd_args(scene, out, *extra) -> list:
    return ["build-dataset", "--items", scene.items, "--parcels", scene.parcels, "--mapping", scene.mapping,
            "--out", out, "--patch-size", 64, "--chunksize", 128, "--workers", 1, *extra]


@pytest.mark.slow
def test_two_builds_started_together_one_writes_the_other_refuses(small_scene, tmp_path):
    """Both start at once; each pauses (test hook) right after it took the lock, so whichever won
    still holds it when the other looks: exactly one writes, the other is refused cleanly."""
    from processes import start_command

    out, resume = tmp_path / "patches.zarr", tmp_path / "resume"
    env = {"CROP2SEG_TEST_PAUSE_AT": "pass1", "CROP2SEG_TEST_RESUME_FILE": str(resume)}
    a, b = (start_command(_build_cmd_args(small_scene, out), tmp_path, name, env) for name in ("a", "b"))
    try:
        import time

        deadline = time.monotonic() + DEADLINE_S
        while not (("CROP2SEG_TEST_PAUSED" in a.stderr() and b.proc.poll() is not None)
                   or ("CROP2SEG_TEST_PAUSED" in b.stderr() and a.proc.poll() is not None)):
            assert time.monotonic() < deadline, a.stderr() + b.stderr()
            assert not (a.proc.poll() is not None and b.proc.poll() is not None), a.stderr() + b.stderr()
            time.sleep(0.05)
        winner, loser = (a, b) if "CROP2SEG_TEST_PAUSED" in a.stderr() else (b, a)
        assert loser.proc.returncode == 1, loser.stderr()
        assert (f"is being written by crop2seg-build-dataset (pid {winner.pid} on host {socket.gethostname()}"
                in loser.stderr())
        assert "Traceback" not in loser.stderr() and "Dask dashboard" not in loser.stdout()
        resume.write_text("go")
        assert winner.wait() == 0, winner.stderr()
    finally:
        resume.write_text("go")
        for c in (a, b):
            c.wait()
    ds = open_store_complete(out)
    assert ds.sizes["patch"] > 0
    assert "written now, 0 already done" in winner.stdout()
    assert read_lock(out) is None


def open_store_complete(path):
    from crop2seg_pipeline.store import open_store

    return open_store(path)


@pytest.mark.slow
def test_build_takes_over_a_stale_lock_and_overwrite_spares_a_live_one(small_scene, tmp_path):
    from processes import start_command

    out = tmp_path / "patches.zarr"
    pid, started = _dead_pid()
    _write_lock(out, pid=pid, pid_started=started)  # a build that was SIGKILLed
    res = subprocess.run([sys.executable, "-m", "crop2seg_pipeline", *map(str, _build_cmd_args(small_scene, out))],
                         capture_output=True, text=True, timeout=DEADLINE_S)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"taking over the lock of crop2seg-build-dataset (pid {pid} on host" in res.stderr
    assert "no longer running" in res.stderr
    complete = _snapshot_store(out)

    # a live build holds it (a resumed run, paused by the test hook): --overwrite is refused, nothing deleted
    resume = tmp_path / "resume"
    live = start_command(_build_cmd_args(small_scene, out), tmp_path, "live",
                         {"CROP2SEG_TEST_PAUSE_AT": "pass1", "CROP2SEG_TEST_RESUME_FILE": str(resume)})
    try:
        live.wait_paused("pass1")
        res = subprocess.run([sys.executable, "-m", "crop2seg_pipeline",
                              *map(str, _build_cmd_args(small_scene, out, "--overwrite"))],
                             capture_output=True, text=True, timeout=DEADLINE_S)
        assert res.returncode == 1 and f"is being written by crop2seg-build-dataset (pid {live.pid}" in res.stderr
        assert _snapshot_store(out) == complete
    finally:
        resume.write_text("go")
        live.wait()
    assert live.proc.returncode == 0, live.stderr()
    assert "0 written now" in live.stdout()  # it only resumed: nothing was lost


def _snapshot_store(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and ".crop2seg" not in p.parts and p.name != "build.json"}


@pytest.mark.slow
def test_a_second_prediction_into_the_same_folder_is_refused(small_scene, tmp_path):
    from processes import start_command

    from crop2seg_pipeline.predict import default_demo_weights

    out, resume = tmp_path / "maps", tmp_path / "resume"
    args = ["predict", "--items", small_scene.items, "--weights", default_demo_weights(), "--out", out,
            "--chunksize", 128, "--workers", 1]
    first = start_command(args, tmp_path, "first", {"CROP2SEG_TEST_PAUSE_AT": "datecheck",
                                                     "CROP2SEG_TEST_RESUME_FILE": str(resume)})
    try:
        first.wait_paused("datecheck")
        res = subprocess.run([sys.executable, "-m", "crop2seg_pipeline", *map(str, args)],
                             capture_output=True, text=True, timeout=DEADLINE_S)
        assert res.returncode == 1, res.stdout + res.stderr
        assert f"is being written by crop2seg-predict (pid {first.pid}" in res.stderr
        assert "Dask dashboard" not in res.stdout
    finally:
        resume.write_text("go")
        first.wait()
    assert first.proc.returncode == 0, first.stderr()
    assert (out / "classes.tif").exists() and json.loads((out / "manifest.json").read_text())["complete"]
