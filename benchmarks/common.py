"""Shared helpers of the benchmark scripts: memory sampling and table output."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil


class MemorySampler:
    """Samples the RSS of this process and all its children (Dask workers of a LocalCluster).

    ``per_worker_peak`` maps each worker's address to its peak RSS (read from the workers
    themselves through the client), ``total_peak`` is the peak of the sum over the process tree.
    """

    def __init__(self, client=None, interval: float = 0.2) -> None:
        self.client = client
        self.interval = interval
        self.total_peak = 0
        self.per_worker_peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.total_peak = max(self.total_peak, total)
            if self.client is not None:
                try:
                    rss = self.client.run(lambda: psutil.Process().memory_info().rss)
                    for k, v in rss.items():
                        self.per_worker_peak[k] = max(self.per_worker_peak.get(k, 0), v)
                except Exception:  # noqa: BLE001 (cluster shutting down)
                    pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def worker_peak_max(self) -> int:
        return max(self.per_worker_peak.values(), default=0)


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Render rows as a Markdown table; columns are (key, header, format)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        lines.append("| " + " | ".join(format(r[k], f) if f else str(r[k]) for k, _, f in columns) + " |")
    text = "\n".join(lines)
    print(text)
    return text


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"results written to {path}")


def now() -> float:
    return time.perf_counter()


def drop_caches() -> bool:
    """Drop the OS page cache before a timed run (needs root); True when it was dropped."""
    import subprocess

    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False
