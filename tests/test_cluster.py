"""Cluster specs: shipped YAML, local / existing-scheduler / SLURM / PBS clusters, dry runs, bad specs, CLI.

Real clusters throughout: a LocalCluster, a ``dask scheduler`` + ``dask worker`` pair in
subprocesses, and a SLURMCluster whose ``sbatch`` is a stand-in that runs the job script here.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from crop2seg_pipeline.cli.cluster import cluster_cmd
from processes import DEADLINE_S, start_scheduler, stop_processes
from crop2seg_pipeline.cluster import (
    KEYS,
    ClusterSpecError,
    connect,
    describe,
    local_kwargs,
    resolve_spec,
    spec_dirs,
    walltime_seconds,
)
from crop2seg_pipeline.errors import Crop2SegError

import dask_jobqueue  # noqa: E402,F401  (the test extra installs it: no silent skip)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "cluster"
NAMES = ("local", "slurm", "slurm-gpu", "pbs", "existing")


def _write(path: Path, spec: dict | str) -> Path:
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
    return path


def _slurm(**over) -> dict:
    spec = yaml.safe_load((SHIPPED / "slurm.yaml").read_text())
    spec.update(over)
    return spec


@pytest.fixture
def fake_queue(tmp_path, monkeypatch):
    """``sbatch``/``qsub``/``scancel``/``qdel`` on PATH that only record their calls."""
    bindir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bindir.mkdir()
    for cmd in ("sbatch", "qsub", "scancel", "qdel"):
        exe = bindir / cmd
        exe.write_text(f'#!/bin/sh\necho "{cmd} $@" >> {calls}\necho "Submitted batch job 1"\n')
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return calls


# ----------------------------------------------------------------------------- shipped specs


def test_shipped_specs_validate_and_document_every_key():
    for name in NAMES:
        path = SHIPPED / f"{name}.yaml"
        spec = resolve_spec(name)
        assert Path(spec["_source"]) == path
        text = path.read_text()
        keys = KEYS[spec["type"]] | {"tls_\\w+", "require_encryption"}
        for key in KEYS[spec["type"]]:
            # every key the type accepts appears in the file, set or commented, with a comment above
            m = re.search(rf"^#? ?{key}:", text, re.M)
            assert m, f"{name}.yaml does not document {key}"
            block = text[: m.start()].split("\n\n")[-1].splitlines()  # its paragraph, above it
            assert any(line.startswith("# ") and not re.match(rf"# ?({'|'.join(keys)}):", line) for line in block), \
                f"{name}.yaml: {key} has no comment"
    assert "security:" in (SHIPPED / "existing.yaml").read_text()


def test_specs_found_by_name_and_path(tmp_path, monkeypatch):
    assert SHIPPED in spec_dirs()  # the repository's cluster/ (checkout or editable install)
    own = tmp_path / "mine"
    own.mkdir()
    _write(own / "tiny.yaml", {"type": "local", "n_workers": 1})
    monkeypatch.setenv("CROP2SEG_CLUSTER_DIR", str(own))
    assert resolve_spec("tiny")["n_workers"] == 1
    assert resolve_spec(str(own / "tiny.yaml"))["n_workers"] == 1
    # a project's ./cluster shadows the shipped spec of the same name
    monkeypatch.delenv("CROP2SEG_CLUSTER_DIR")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cluster").mkdir()
    _write(tmp_path / "cluster" / "slurm.yaml", {"type": "local", "n_workers": 3})
    assert resolve_spec("slurm")["type"] == "local"
    assert resolve_spec(None)["_source"] == str(SHIPPED / "local.yaml")
    assert resolve_spec("tcp://10.0.0.1:8786") == {"type": "address", "address": "tcp://10.0.0.1:8786",
                                                   "timeout": "30s", "_source": "--cluster tcp://10.0.0.1:8786"}


# ----------------------------------------------------------------------------- local


def test_local_defaults_are_sized_to_the_machine():
    from dask.system import CPU_COUNT
    from distributed.system import MEMORY_LIMIT

    kw = local_kwargs(resolve_spec("local"))
    assert kw["n_workers"] == CPU_COUNT and kw["threads_per_worker"] == 1 and kw["processes"] is True
    assert kw["memory_limit"] == MEMORY_LIMIT // CPU_COUNT
    assert kw["dashboard_address"] == "127.0.0.1:8787"
    kw = local_kwargs({"type": "local", "threads_per_worker": 2}, memory_limit="1GB")
    assert kw["n_workers"] == max(1, CPU_COUNT // 2) and kw["memory_limit"] == 10**9


def test_local_spec_starts_the_requested_cluster(tmp_path):
    spec = _write(tmp_path / "small.yaml", {"type": "local", "n_workers": 2, "threads_per_worker": 2,
                                            "memory_limit": "700MB", "processes": False,
                                            "dashboard_address": "127.0.0.1:0"})
    with connect(str(spec)) as client:
        workers = client.scheduler_info()["workers"].values()
        assert len(workers) == 2
        assert {w["nthreads"] for w in workers} == {2}
        assert {w["memory_limit"] for w in workers} == {700 * 10**6}
        assert client.submit(sum, [1, 2, 3]).result() == 6
        cluster = client.cluster
    assert cluster.status.name == "closed"  # closed what it started


def test_local_overrides_and_dashboard_on_loopback():
    with connect("local", n_workers=1, threads_per_worker=1, memory_limit="500MB") as client:
        (w,) = client.scheduler_info()["workers"].values()
        assert (w["nthreads"], w["memory_limit"]) == (1, 500 * 10**6)
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        http = client.cluster.scheduler.http_server
        assert {s.getsockname()[0] for s in http._sockets.values()} == {"127.0.0.1"}
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        # worker processes get WORKER_ENV on top of the nanny's own settings (see malloc.py)
        env = client.run(lambda: {k: os.environ.get(k) for k in ("MALLOC_ARENA_MAX", "OMP_NUM_THREADS")})
        assert list(env.values()) == [{"MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "1"}]


# ----------------------------------------------------------------------------- an existing scheduler


@pytest.fixture
def scheduler_pair(tmp_path):
    """A real ``dask scheduler`` + ``dask worker`` (declaring GPU=1) on 127.0.0.1, torn down after."""
    scheduler, address = start_scheduler(tmp_path / "scheduler.json")
    procs = [scheduler]
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads", "2",
             "--memory-limit", "1GB", "--resources", "GPU=1", "--no-dashboard", "--local-directory", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield address
    finally:
        stop_processes(procs)  # the worker, then the scheduler


def test_address_spec_joins_and_leaves_the_scheduler_running(scheduler_pair, tmp_path):
    spec = _write(tmp_path / "existing.yaml", {"type": "address", "address": scheduler_pair, "timeout": "20s"})
    with connect(str(spec)) as client:
        client.wait_for_workers(1, timeout=DEADLINE_S)
        (w,) = client.scheduler_info()["workers"].values()
        assert w["resources"] == {"GPU": 1} and w["nthreads"] == 2
        assert client.submit(lambda x: x + 1, 41, resources={"GPU": 1}).result() == 42
    # nothing was started here, so nothing was stopped: a bare address still finds the worker
    with connect(scheduler_pair) as client:
        assert client.submit(sum, [1, 1]).result() == 2
        assert len(client.scheduler_info()["workers"]) == 1
    assert "join the existing scheduler " + scheduler_pair in describe(scheduler_pair)


def test_unreachable_scheduler(tmp_path):
    """A refused port is reported at once (a 1 h connection timeout is never waited for)."""
    # the discard port: nothing listens there
    spec = _write(tmp_path / "gone.yaml", {"type": "address", "address": "tcp://127.0.0.1:9", "timeout": "1h"})
    with pytest.raises(Crop2SegError, match=r"nothing listens at the Dask scheduler address tcp://127.0.0.1:9 "
                                            r"\(connection refused\)"):
        with connect(str(spec)):
            pass
    with pytest.raises(Crop2SegError, match="cannot resolve the host"):
        with connect("tcp://no-such-host.invalid:8786"):
            pass


# ----------------------------------------------------------------------------- SLURM / PBS dry runs


def test_slurm_dry_run_job_script(fake_queue):
    out = describe("slurm")
    assert "#SBATCH --cpus-per-task=8" in out and "#SBATCH -t 01:00:00" in out and "#SBATCH -p normal" in out
    assert "#SBATCH --mem=30G" in out  # 32 GB in SLURM's GiB units
    assert "#SBATCH -J crop2seg-dask" in out
    worker = next(line for line in out.splitlines() if "distributed.cli.dask_worker" in line)
    assert "--nworkers 8" in worker and "--nthreads 1" in worker and "--memory-limit 3.73GiB" in worker
    assert "--lifetime 55m --lifetime-stagger 4m" in worker
    assert "--local-directory ${TMPDIR:-/tmp}" in worker
    assert "dashboard 127.0.0.1:8787" in out and "adapt between 0 and 10 jobs" in out
    assert not fake_queue.exists()  # nothing submitted


def test_slurm_gpu_dry_run(fake_queue):
    out = describe("slurm-gpu")
    assert "#SBATCH --gres=gpu:1" in out
    worker = next(line for line in out.splitlines() if "distributed.cli.dask_worker" in line)
    assert "--resources GPU=1" in worker and "--lifetime 55m" in worker and "--nthreads 8" in worker
    assert "--nworkers" not in worker  # one worker per GPU job
    assert not fake_queue.exists()


def test_pbs_dry_run(fake_queue):
    out = describe("pbs")
    assert "#PBS -l select=1:ncpus=8:mem=30GB" in out and "#PBS -l walltime=01:00:00" in out
    assert "#PBS -q workq" in out and "--lifetime 55m --lifetime-stagger 4m" in out
    assert not fake_queue.exists()


def test_dry_run_needs_no_sbatch_and_opens_no_port(tmp_path, monkeypatch):
    import psutil

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, qsub, anything
    before = {c.laddr for c in psutil.Process().net_connections() if c.status == "LISTEN"}
    spec = _write(tmp_path / "s.yaml", _slurm(walltime="2:00:00", memory="8GiB", cores=4, processes=2,
                                              account="proj-1", job_name="j1", scale={"jobs": 3},
                                              log_directory=str(tmp_path / "logs")))
    spec_text = yaml.safe_load(spec.read_text())
    spec_text.pop("adapt")
    _write(spec, spec_text)
    out = describe(str(spec))
    assert "#SBATCH -A proj-1" in out and "#SBATCH -t 2:00:00" in out and "#SBATCH --mem=8G" in out
    assert "#SBATCH --cpus-per-task=4" in out and "--nthreads 2" in out and "--memory-limit 4.00GiB" in out
    assert f"#SBATCH -o {tmp_path}/logs/j1-%J.out" in out and "scale to 3 jobs" in out
    after = {c.laddr for c in psutil.Process().net_connections() if c.status == "LISTEN"}
    assert after <= before


def test_jobqueue_security_passes_tls_options(tmp_path, fake_queue):
    for f in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / f).write_text("dummy")
    sec = {"tls_ca_file": "ca.pem", "tls_client_cert": "cert.pem", "tls_client_key": str(tmp_path / "key.pem"),
           "require_encryption": True}
    spec = resolve_spec(str(_write(tmp_path / "tls.yaml", _slurm(security=sec))))
    assert spec["security"]["tls_ca_file"] == str(tmp_path / "ca.pem")  # relative to the spec file
    assert spec["security"]["tls_worker_cert"] == str(tmp_path / "cert.pem")  # one cert for every role
    out = describe(str(tmp_path / "tls.yaml"))
    assert "--protocol tls://" in out
    assert f"--tls-ca-file {tmp_path}/ca.pem" in out and f"--tls-key {tmp_path}/key.pem" in out
    assert "# TLS: on" in out
    addr = resolve_spec(str(_write(tmp_path / "a.yaml", {"type": "address", "address": "tls://h:8786", "security": sec})))
    from crop2seg_pipeline.cluster import _security_obj

    s = _security_obj(addr)
    assert s.require_encryption and s.tls_client_cert == str(tmp_path / "cert.pem")


def test_slurm_cluster_end_to_end_with_a_stand_in_sbatch(tmp_path, monkeypatch):
    """connect() on a SLURM spec: scheduler here, `sbatch` runs the job script, `scancel` on close."""
    bindir, jobs = tmp_path / "bin", tmp_path / "jobs"
    bindir.mkdir()
    jobs.mkdir()
    (bindir / "sbatch").write_text(
        f'#!/bin/bash\ncp "$1" {jobs}/script.sh\nsetsid bash {jobs}/script.sh > {jobs}/job.log 2>&1 < /dev/null &\n'
        f'echo $! > {jobs}/pgid\necho "Submitted batch job $!"\n')
    (bindir / "scancel").write_text(f'#!/bin/bash\necho "$@" >> {jobs}/cancelled\nkill -TERM -- -"$1" 2>/dev/null\nexit 0\n')
    for f in bindir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    spec = {"type": "slurm", "cores": 2, "processes": 1, "memory": "1GB", "walltime": "00:10:00", "queue": "debug",
            "worker_extra_args": ["--lifetime", "8m", "--lifetime-stagger", "1m", "--resources", "GPU=1"],
            "local_directory": str(tmp_path), "scale": {"jobs": 1}, "wait_for_workers": 1, "wait_timeout": "90s",
            "dashboard_address": "127.0.0.1:0"}
    path = _write(tmp_path / "slurm-test.yaml", spec)
    try:
        with connect(str(path)) as client:
            (w,) = client.scheduler_info()["workers"].values()
            assert w["nthreads"] == 2 and w["resources"] == {"GPU": 1}
            assert abs(w["memory_limit"] - 10**9) < 0.01 * 10**9  # dask-jobqueue rounds it to 0.93GiB
            assert client.submit(lambda: 7, resources={"GPU": 1}).result() == 7
            http = client.cluster.scheduler.http_server
            assert {s.getsockname()[0] for s in http._sockets.values()} == {"127.0.0.1"}
            assert client.dashboard_link.startswith("http://127.0.0.1:")
        script = (jobs / "script.sh").read_text()
        assert "#SBATCH -p debug" in script and "--lifetime 8m" in script
        assert (jobs / "cancelled").read_text().split() == [(jobs / "pgid").read_text().strip()]
    finally:
        pgid = int((jobs / "pgid").read_text()) if (jobs / "pgid").exists() else None
        if pgid:
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline:
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                os.killpg(pgid, signal.SIGKILL)
                pytest.fail("the job's processes outlived scancel")


# ----------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize("key,value,match", [
    ("queue", "normal\n rm -rf ~", "queue: must be a single line"),
    ("queue", "$(reboot)", r"queue: '\$\(reboot\)' is not a valid queue"),
    ("queue", "normal; reboot", "queue: 'normal; reboot' is not a valid queue"),
    ("account", "`id`", "account: '`id`' is not a valid account"),
    ("job_name", "x && reboot", "job_name: 'x && reboot' is not a valid job name"),
    ("walltime", "01:00:00\n#SBATCH --uid=0", "walltime: must be a single line"),
    ("walltime", "1 hour", "walltime: '1 hour' is not a valid walltime"),
    ("walltime", "00:30:00", r"--lifetime 3300s \(\+ stagger 240s\) must end before the walltime 00:30:00"),
    ("memory", "32GB\nreboot", "memory: must be a single line"),
    ("memory", "$(reboot)", "memory: '.*' is not a memory size"),
    ("memory", "lots", "memory: 'lots' is not a memory size"),
    ("local_directory", "$(reboot)", "local_directory: .* is not a valid path"),
    ("local_directory", "/tmp/x; reboot", "local_directory: .* is not a valid path"),
    ("log_directory", "logs\nreboot", "log_directory: must be a single line"),
    ("worker_extra_args", ["--lifetime", "55m", "--resources", "GPU=1;reboot"], r"worker_extra_args\[3\]: .* not a valid dask-worker argument"),
    ("worker_extra_args", ["--lifetime"], "--lifetime needs a duration"),
    ("job_extra_directives", ["--gres=gpu:1\nreboot"], r"job_extra_directives\[0\]: must be a single line"),
    ("job_extra_directives", ["--comment=$(reboot)"], r"job_extra_directives\[0\]: .* not a valid slurm directive"),
    ("job_script_prologue", ["module load x\nreboot"], r"job_script_prologue\[0\]: must be a single line"),
    ("interface", "ib0 && reboot", "interface: .* not a valid network interface"),
    ("python", "python; reboot", "python: .* not a valid path"),
    ("shebang", "#!/bin/sh -c reboot", "shebang: .* not a valid shebang"),
    ("death_timeout", "60; reboot", "death_timeout: .* not a valid duration"),
    ("cores", "8", "cores: expected an integer"),
    ("processes", 16, "processes: 16 worker processes per job need at least as many cores"),
    ("scale", {"jobs": 2}, "adapt/scale: give exactly one"),
    ("adapt", {"minimum_jobs": 3, "maximum_jobs": 1}, "adapt.maximum_jobs: 1 is below adapt.minimum_jobs"),
    ("adapt", {"max_jobs": 3}, "adapt.max_jobs: unknown key"),
    ("wait_for_workers", 1, r"wait_for_workers: 1 workers never join while nothing runs: adapt.minimum_jobs \(0\)"),
    ("dashboard_address", "0.0.0.0", "dashboard_address: .* not a valid address"),
    ("security", {"tls_ca_file": "/nonexistent/ca.pem"}, "security.tls_ca_file: file /nonexistent/ca.pem does not exist"),
    ("security", {"tls_key": "k.pem"}, "security.tls_key: unknown key"),
    ("qeue", "normal", r"qeue: not a slurm spec key: unknown key \(did you mean 'queue'\?\)"),
    ("resource_spec", "select=1", "resource_spec: not a slurm spec key"),
])
def test_bad_jobqueue_values_are_rejected_before_anything_runs(tmp_path, fake_queue, key, value, match):
    path = _write(tmp_path / "bad.yaml", _slurm(**{key: value}))
    with pytest.raises(ClusterSpecError, match=match) as e:
        describe(str(path))
    assert str(path) in str(e.value)  # names the file
    assert not fake_queue.exists()


def test_prologue_is_shell_on_purpose(tmp_path, fake_queue):
    lines = ["module load python/3.11", 'conda activate "crop2seg" && export X=$(hostname)']
    out = describe(str(_write(tmp_path / "p.yaml", _slurm(job_script_prologue=lines))))
    assert "export MALLOC_ARENA_MAX=1\n" + "\n".join(lines) in out  # WORKER_ENV first, then the spec's


def test_pbs_walltime_and_keys(tmp_path, fake_queue):
    spec = yaml.safe_load((SHIPPED / "pbs.yaml").read_text())
    _write(tmp_path / "p.yaml", {**spec, "walltime": "1-00:00:00"})
    with pytest.raises(ClusterSpecError, match="not a pbs walltime"):
        describe(str(tmp_path / "p.yaml"))
    _write(tmp_path / "p.yaml", {**spec, "job_mem": "4G"})
    with pytest.raises(ClusterSpecError, match="job_mem: not a pbs spec key"):
        describe(str(tmp_path / "p.yaml"))
    _write(tmp_path / "p.yaml", {**spec, "resource_spec": "select=1:ncpus=8:ngpus=1"})
    assert "#PBS -l select=1:ncpus=8:ngpus=1" in describe(str(tmp_path / "p.yaml"))


def test_dry_run_from_async_code(fake_queue):
    import asyncio

    async def main():
        return describe("slurm")

    assert "#SBATCH -p normal" in asyncio.run(main())
    assert not fake_queue.exists()


def test_walltime_formats():
    assert walltime_seconds("90") == 5400 and walltime_seconds("10:30") == 630
    assert walltime_seconds("01:00:00") == 3600 and walltime_seconds("1-12") == 129600
    assert walltime_seconds("01:00:00", "pbs") == 3600 and walltime_seconds("30:00", "pbs") == 1800


@pytest.mark.parametrize("text,match", [
    ("type: kubernetes\n", "type: unknown cluster type 'kubernetes'; one of local, address, slurm, pbs"),
    ("n_workers: 2\n", "type: missing"),
    ("type: local\nworkers: 2\n", r"workers: not a local spec key: unknown key \(did you mean 'n_workers'\?\)"),
    ("type: local\nn_workers: -1\n", "n_workers: -1 is out of range"),
    ("type: local\nmemory_limit: 4 gigs\n", "memory_limit: '4 gigs' is not a memory size"),
    ("type: local\nprocesses: yes please\n", "processes: expected true or false"),
    ("type: address\n", "address: missing"),
    ("type: address\naddress: scheduler:8786\n", "address: 'scheduler:8786' is not a scheduler address"),
    ("type: address\naddress: tcp://h:1\nn_workers: 2\n", "n_workers: not a address spec key"),
    ("- just\n- a list\n", "must be a mapping"),
    ("type: [local\n", "is not valid YAML"),
])
def test_bad_specs(tmp_path, text, match):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(ClusterSpecError, match=match) as e:
        resolve_spec(str(path))
    assert str(path) in str(e.value)


def test_missing_spec_and_misplaced_options():
    with pytest.raises(ClusterSpecError, match="cluster spec file nowhere/spec.yaml does not exist"):
        resolve_spec("nowhere/spec.yaml")
    with pytest.raises(ClusterSpecError, match=r"'nosuch' is neither .*available: .*slurm-gpu"):
        resolve_spec("nosuch")
    with pytest.raises(ClusterSpecError, match=r"--workers \(n_workers\): only for a local cluster"):
        describe("slurm", n_workers=4)
    with pytest.raises(ClusterSpecError, match=r"--memory-limit \(memory_limit\): only for a local cluster"):
        with connect("tcp://127.0.0.1:9", memory_limit="1GB"):
            pass


def test_missing_dask_jobqueue_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    with pytest.raises(ClusterSpecError, match=r"needs dask-jobqueue: pip install 'crop2seg-pipeline\[hpc\]'"):
        describe("slurm")


# ----------------------------------------------------------------------------- CLI


def test_cli_dry_runs(fake_queue):
    runner = CliRunner()
    r = runner.invoke(cluster_cmd, ["local", "--dry-run", "--workers", "2", "--memory-limit", "1GB"])
    assert r.exit_code == 0, r.output
    assert "LocalCluster(" in r.output and "n_workers=2" in r.output and "memory_limit=1000000000" in r.output
    assert "dashboard_address='127.0.0.1:8787'" in r.output
    assert "# worker environment: MALLOC_ARENA_MAX=1" in r.output  # what connect() gives the workers
    r = runner.invoke(cluster_cmd, ["slurm", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "export MALLOC_ARENA_MAX=1" in r.output
    assert r.output.count("#SBATCH") >= 5 and "--lifetime 55m --lifetime-stagger 4m" in r.output
    r = runner.invoke(cluster_cmd, ["slurm-gpu", "--dry-run", "--dashboard-address", ":8787"])
    assert r.exit_code == 0 and "#SBATCH --gres=gpu:1" in r.output and "dashboard :8787" in r.output
    r = runner.invoke(cluster_cmd, ["tcp://10.1.2.3:8786", "--dry-run"])
    assert r.exit_code == 0 and "join the existing scheduler tcp://10.1.2.3:8786" in r.output
    r = runner.invoke(cluster_cmd, ["nosuch", "--dry-run"])
    assert r.exit_code == 1 and "Error: --cluster 'nosuch' is neither" in r.output
    assert not fake_queue.exists()


def test_cli_keeps_a_local_cluster_running_until_ctrl_c(tmp_path):
    spec = _write(tmp_path / "two.yaml", {"type": "local", "n_workers": 1, "memory_limit": "500MB",
                                          "dashboard_address": "127.0.0.1:0"})
    proc = subprocess.Popen([sys.executable, "-m", "crop2seg_pipeline.cli.cluster", str(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Use it with: --cluster "):
                break
        text = "".join(lines)
        assert "Dask dashboard: http://127.0.0.1:" in text, text + proc.stderr.read() if proc.poll() else text
        address = text.split("Use it with: --cluster ")[1].split()[0]
        for _ in range(2):  # several commands, one cluster
            with connect(address) as client:
                assert client.submit(sum, [2, 3]).result() == 5
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
