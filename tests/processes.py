"""Helpers of tests that start real processes (imported, not collected)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: How long a test waits for something a process does (a loaded CI machine may need minutes);
#: the wait ends as soon as it happens.
DEADLINE_S = 600.0


def wait_for_scheduler_file(path: Path, proc: subprocess.Popen, timeout: float = 300.0) -> str:
    """The address a ``dask scheduler --scheduler-file PATH`` process writes, once it is there.

    Waits on the file, not on a guess of how long a start takes (a loaded machine may need a
    minute); fails at once if the scheduler process dies.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the scheduler exited with code {proc.returncode} before writing {path}")
        try:
            return json.loads(path.read_text())["address"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)
    raise TimeoutError(f"no scheduler address in {path} after {timeout:.0f} s")


def start_scheduler(sched_file: Path, **popen) -> tuple[subprocess.Popen, str]:
    """A real ``dask scheduler`` on 127.0.0.1 (random ports); (process, address) once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
         "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    try:
        return proc, wait_for_scheduler_file(sched_file, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def stop_processes(procs: list) -> None:
    """Terminate ``procs`` last first (workers before their scheduler), killing what hangs."""
    for p in reversed(procs):
        p.terminate()
        try:
            p.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@dataclass
class Command:
    """A ``python -m crop2seg_pipeline ...`` process with its output in files (no pipe to fill)."""

    proc: subprocess.Popen
    stdout_path: Path
    stderr_path: Path
    children: list = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = DEADLINE_S) -> None:
        """Until ``text`` is in the process's stderr; fails at once if the process ends first."""
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            if self.proc.poll() is not None:
                raise AssertionError(f"the command ended (code {self.proc.returncode}) before printing {text!r}:\n"
                                     f"{self.stdout()}\n{self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} after {timeout:.0f} s:\n{self.stderr()}")
            time.sleep(0.05)

    def wait_paused(self, phase: str, timeout: float = DEADLINE_S) -> None:
        self.wait_for(f"CROP2SEG_TEST_PAUSED {phase}\n", timeout)

    def descendants(self) -> list:
        import psutil

        return psutil.Process(self.pid).children(recursive=True)

    def signal(self, sig: int, group: bool = False) -> None:
        """Send ``sig`` to the command (``group``: to its whole process group, as a terminal does)."""
        self.children = self.descendants()
        (os.killpg if group else os.kill)(self.pid, sig)

    def wait(self, timeout: float = DEADLINE_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()

    def leftover_processes(self, timeout: float = 60.0) -> list:
        """Descendants (as of the signal) still alive ``timeout`` s after the command ended."""
        import psutil

        _, alive = psutil.wait_procs(self.children, timeout=timeout)
        out = []
        for p in alive:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out


def start_command(args: list, tmp: Path, name: str, env: dict | None = None) -> Command:
    """Start ``python -m crop2seg_pipeline ARGS`` in its own session (a process group of its own)."""
    out, err = tmp / f"{name}.stdout", tmp / f"{name}.stderr"
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "crop2seg_pipeline", *map(str, args)],
                            stdout=out.open("w"), stderr=err.open("w"), env=full_env, start_new_session=True)
    return Command(proc, out, err)


def sigint_blocked(pid: int) -> bool:
    """Whether process ``pid`` blocks SIGINT (its ``SigBlk`` mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    raise AssertionError(f"no SigBlk in /proc/{pid}/status")


def worker_processes(cmd: Command) -> list:
    """The descendants of ``cmd`` that are Dask worker processes (multiprocessing spawns)."""
    out = []
    for p in cmd.descendants():
        try:
            line = " ".join(p.cmdline())
        except Exception:  # noqa: BLE001 (gone meanwhile)
            continue
        if "spawn_main" in line and "resource_tracker" not in line:
            out.append(p)
    return out
