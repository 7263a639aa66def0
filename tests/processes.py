"""Helpers of tests that start real processes (imported, not collected)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path


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
