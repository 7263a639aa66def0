"""The one task runner: every pass of every command computes its tasks through :func:`run_tasks`.

It reports progress, hands each result over as soon as it is done (so a driver can write or
reduce it and the cluster can forget it), and on a failure or an interrupt (Ctrl-C, SIGTERM
turned into an exception) cancels the rest of the pass on the cluster before re-raising: left
alone, running tasks would go on writing behind the caller's back, and a re-run on the same
client would receive their stale results.

A failed pass is reported once, as one error (:func:`failure_summary`): how many tasks failed,
how many were done and how many cancelled, the first error's message, and what the caller says
about the state it leaves (``on_failure``: "the store is incomplete; a re-run resumes"). The
error keeps the first error's type when it is one of the package's (a ``ReadError`` stays a
``ReadError``); anything else (a bug) becomes a :class:`TaskError` chained to it. Workers' own
tracebacks are their log lines (shown by the commands with ``-v``), never part of the message.

After the first result of a pass, :func:`~crop2seg_pipeline.interrupts.pause_point` is called
with the pass's label without spaces (``pass1``, ``pass2``, ``predict``...): the tests' hook.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import dask

from ..errors import Crop2SegError
from ..interrupts import pause_point

log = logging.getLogger(__name__)

__all__ = ["run_tasks", "TaskError", "failure_summary"]


class TaskError(Crop2SegError):
    """A task failed with an error that is not one of the package's (most likely a bug)."""

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
    on_failure: str | None = None,
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
    on_failure
        What a failure leaves behind and what to do (appended to the error).

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
    phase = label.replace(" ", "")

    def report(k: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= PROGRESS_EVERY_S or k == n:
            last[0] = now
            say(f"{label}: {k}/{n} {unit} ({100 * k / n:.0f}%), {now - t0:.1f} s")
        if k == 1:
            pause_point(phase)

    if client is None:
        step = max(1, os.cpu_count() or 1)
        done = 0
        for s in range(0, n, step):
            try:
                values = dask.compute(*tasks[s : s + step])
            except Exception as e:  # noqa: BLE001 (reported as one error below)
                raise failure_summary(e, label=label, unit=unit, n=n, n_done=done, n_failed=1,
                                      on_failure=on_failure) from e
            for i, value in enumerate(values, start=s):
                deliver(i, value)
                done += 1
                report(done)
        return results if keep else None

    from distributed import as_completed

    futures = client.compute(list(tasks))
    index = {f.key: i for i, f in enumerate(futures)}
    k = 0
    try:
        for fut in as_completed(futures):
            try:
                value = fut.result()
            except Exception as e:  # noqa: BLE001 (reported as one error below; cancelled there)
                n_failed = sum(f.status == "error" for f in futures) or 1
                raise failure_summary(e, label=label, unit=unit, n=n, n_done=k, n_failed=n_failed,
                                      on_failure=on_failure) from e
            deliver(index[fut.key], value)
            fut.release()
            k += 1
            report(k)
    except BaseException:
        _cancel(client, futures, label)
        raise
    return results if keep else None


def failure_summary(error: BaseException, *, label: str, unit: str, n: int, n_done: int, n_failed: int,
                    on_failure: str | None = None) -> Crop2SegError:
    """The one error a failed pass raises (see the module docstring)."""
    n_cancelled = max(n - n_done - n_failed, 0)
    head = (f"{label} failed: {n_failed} of {n} {unit} failed ({n_done} done, {n_cancelled} cancelled). "
            if n > 1 else f"{label} failed. ")
    first = str(error).strip() or type(error).__name__
    if isinstance(error, Crop2SegError):
        body = f"First error: {first}"
    else:
        body = (f"First error: {type(error).__name__}: {first.splitlines()[0]} (unexpected: run with -v to see "
                "the workers' tracebacks)")
    msg = head + body + (f"\n{on_failure}" if on_failure else "")
    if isinstance(error, Crop2SegError):
        try:
            out = type(error)(msg)
        except Exception:  # noqa: BLE001 (an error class with another signature)
            out = TaskError(msg)
    else:
        out = TaskError(msg)
    out.first_error = error  # type: ignore[attr-defined]
    return out


def _cancel(client: Any, futures: list, label: str) -> None:
    try:
        client.cancel(futures)
    except Exception as e:  # noqa: BLE001 (the original error matters more; say why cancel failed)
        log.warning("%s: could not cancel the remaining tasks (%s); they may still run", label, e)
