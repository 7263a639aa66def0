"""The one task runner: every pass of every command computes its tasks through :func:`run_tasks`.

It reports progress, hands each result over as soon as it is done (so a driver can write or
reduce it and the cluster can forget it), and on a failure or an interrupt (Ctrl-C, SIGTERM
turned into an exception) cancels the rest of the pass on the cluster before re-raising: left
alone, running tasks would go on writing behind the caller's back, and a re-run on the same
client would receive their stale results.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import dask

log = logging.getLogger(__name__)

__all__ = ["run_tasks"]

#: Seconds between two progress lines (the last line is always reported).
PROGRESS_EVERY_S = 2.0


def run_tasks(
    tasks: Sequence[Any],
    client: Any,
    *,
    label: str,
    say: Callable[[str], None] | None = None,
    on_result: Callable[[int, Any], None] | None = None,
    unit: str = "chunks",
) -> list | None:
    """Compute delayed ``tasks``, reporting progress; on ``client`` when given.

    Parameters
    ----------
    tasks
        ``dask.delayed`` objects (one per chunk of a pass).
    client
        A ``distributed.Client``, or None to use the current default scheduler (in batches of
        one task per CPU, so that results are still handed over as they come).
    label
        Name of the pass in progress lines (``"pass 1"``, ``"predict"``).
    say
        Receives the progress lines (default: ``logging.info``).
    on_result
        ``on_result(index, result)`` for each task as it completes (in completion order); the
        result is then released. Without it, the results are returned in task order.
    unit
        What a task is, in progress lines.

    Returns
    -------
    list or None
        The results in the order of ``tasks`` when ``on_result`` is None.
    """
    say = say or log.info
    n = len(tasks)
    keep = on_result is None
    results: list = [None] * n if keep else []
    if not n:
        return results if keep else None

    def deliver(i: int, value: Any) -> None:
        if keep:
            results[i] = value
        else:
            on_result(i, value)

    t0 = time.perf_counter()
    last = [0.0]

    def report(k: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= PROGRESS_EVERY_S or k == n:
            last[0] = now
            say(f"{label}: {k}/{n} {unit} ({100 * k / n:.0f}%), {now - t0:.1f} s")

    if client is None:
        step = max(1, os.cpu_count() or 1)
        for s in range(0, n, step):
            for i, value in enumerate(dask.compute(*tasks[s : s + step]), start=s):
                deliver(i, value)
            report(min(s + step, n))
        return results if keep else None

    from distributed import as_completed

    futures = client.compute(list(tasks))
    index = {f.key: i for i, f in enumerate(futures)}
    try:
        for k, fut in enumerate(as_completed(futures), 1):
            deliver(index[fut.key], fut.result())
            fut.release()
            report(k)
    except BaseException:
        _cancel(client, futures, label)
        raise
    return results if keep else None


def _cancel(client: Any, futures: list, label: str) -> None:
    try:
        client.cancel(futures)
    except Exception as e:  # noqa: BLE001 (the original error matters more; say why cancel failed)
        log.warning("%s: could not cancel the remaining tasks (%s); they may still run", label, e)
