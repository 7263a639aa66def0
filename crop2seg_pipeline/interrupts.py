"""Ctrl-C and SIGTERM as one exception, held back where a half-done step would be worse.

The commands (:mod:`crop2seg_pipeline.cli`) turn SIGINT and SIGTERM into :class:`Interrupted`
(a ``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` and the task runner's cancel
path handle both) for as long as they run, and exit with 128 + the signal number (130, 143).

- :func:`deferred` holds a signal back until a block is done, then raises it: a local cluster
  is never abandoned half-started (its worker processes would be orphaned), and with
  ``block_sigint=True`` the threads started in the block (the cluster's event loop, which spawns
  the worker processes) block SIGINT, so workers start with SIGINT blocked and a terminal's
  Ctrl-C reaches only the command, which cancels the work and closes the cluster itself.
  Signals are never ignored: a Ctrl-C during a cluster start is raised as soon as it is up.
- After the first interrupt, further signals are recorded but not raised, so that closing the
  cluster and releasing locks is not itself interrupted.
- :func:`pause_point` is the test hook: with ``CROP2SEG_TEST_PAUSE_AT=phase[,phase]`` a command
  prints ``CROP2SEG_TEST_PAUSED <phase>`` to stderr when it reaches that phase and waits there
  for a signal (or for the file named by ``CROP2SEG_TEST_RESUME_FILE`` to appear), so tests
  interrupt a given phase without racing on sleeps. :func:`hold_point` is its twin inside
  tasks (``CROP2SEG_TEST_HOLD_AT=pass2:3``: each worker runs 3 pass-2 tasks, then waits), so a
  test interrupts a pass with an exact amount of it done.

Library code never installs handlers; without them (a notebook), Python's own SIGINT handling
applies and :func:`deferred` only adds the SIGINT block.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Interrupted", "signals_as_exceptions", "deferred", "pause_point", "hold_point", "PAUSE_ENV", "HOLD_ENV",
           "RESUME_ENV"]

#: Environment variable naming the phases where a command pauses (tests only).
PAUSE_ENV = "CROP2SEG_TEST_PAUSE_AT"
#: Environment variable naming tasks that hold after a number of them ran (tests only).
HOLD_ENV = "CROP2SEG_TEST_HOLD_AT"
#: Environment variable naming a file whose appearance ends a pause (tests only).
RESUME_ENV = "CROP2SEG_TEST_RESUME_FILE"
#: The longest a pause waits (a test that forgot to signal must not hang forever).
PAUSE_MAX_S = 600.0

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The command got SIGINT (Ctrl-C) or SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal."""
        return 128 + self.signum


class _State:
    installed = False
    deferring = 0
    pending: int | None = None
    raised = False
    on_first: list[Callable[[int], None]] = []


def _handler(signum: int, frame) -> None:  # noqa: ARG001 (signal handler signature)
    if _State.deferring or _State.raised:
        if _State.pending is None:
            _State.pending = signum
        return
    _first(signum)


def _first(signum: int) -> None:
    _State.raised = True
    _State.pending = None
    for cb in _State.on_first:
        try:
            cb(signum)
        except Exception:  # noqa: BLE001 (a callback must not hide the interrupt)
            pass
    raise Interrupted(signum)


@contextmanager
def signals_as_exceptions(on_first: Callable[[int], None] | None = None) -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread during the block.

    ``on_first(signum)`` runs once, when the first signal is raised (e.g. to quieten logs of
    the shutdown that follows). Outside the main thread (or nested) this does nothing.
    """
    if _State.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _State.installed, _State.deferring, _State.pending, _State.raised = True, 0, None, False
    _State.on_first = [on_first] if on_first else []
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _State.installed, _State.deferring, _State.pending, _State.raised = False, 0, None, False
        _State.on_first = []


@contextmanager
def deferred(block_sigint: bool = False) -> Iterator[None]:
    """Hold SIGINT/SIGTERM back during the block; raise :class:`Interrupted` when it ends.

    Parameters
    ----------
    block_sigint
        Also block SIGINT in this thread during the block: threads started meanwhile inherit the
        block, and so do the processes they spawn (a local cluster's workers). The signal is not
        lost: it stays pending (or reaches another thread) and is raised when the block ends.
    """
    main = threading.current_thread() is threading.main_thread()
    old_mask = None
    block = block_sigint and main and hasattr(signal, "pthread_sigmask")
    if block:
        # multiprocessing's resource tracker, when a thread starts it, UNblocks SIGINT and SIGTERM
        # in that thread afterwards (resource_tracker.ensure_running): started here first, the
        # cluster's threads find it running and keep the block they inherited
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    _State.deferring += 1
    try:
        if block:
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        yield
    finally:
        if old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)  # a pending SIGINT is handled here
        _State.deferring -= 1
    if _State.pending is not None and not _State.deferring and not _State.raised:
        _first(_State.pending)


def interrupt_pending() -> bool:
    """Whether a signal is being held back by :func:`deferred`: recorded by the handler, or still
    pending in the kernel because every thread blocks it (``block_sigint``)."""
    if _State.pending is not None:
        return True
    if hasattr(signal, "sigpending"):
        return bool(set(signal.sigpending()) & set(SIGNALS))
    return False


def hold_point(name: str) -> None:
    """The test hook inside tasks: with ``CROP2SEG_TEST_HOLD_AT=name:k`` every task of ``name``
    after the first ``k`` of this process (a worker) waits for :data:`RESUME_ENV`'s file (at
    most :data:`PAUSE_MAX_S`), printing ``CROP2SEG_TEST_HELD <name>`` once; so a test knows
    exactly how much of a pass is done when it interrupts or kills it."""
    wanted = os.environ.get(HOLD_ENV)
    if not wanted:
        return
    spec = dict(part.split(":", 1) for part in wanted.split(",") if ":" in part)
    if name not in spec:
        return
    with _HOLD_LOCK:
        _HOLD_COUNT[name] = _HOLD_COUNT.get(name, 0) + 1
        if _HOLD_COUNT[name] <= int(spec[name]):
            return
        if _HOLD_COUNT[name] == int(spec[name]) + 1:
            sys.stderr.write(f"CROP2SEG_TEST_HELD {name}\n")
            sys.stderr.flush()
    resume = os.environ.get(RESUME_ENV)
    deadline = time.monotonic() + PAUSE_MAX_S
    while time.monotonic() < deadline and not (resume and os.path.exists(resume)):
        time.sleep(0.02)


_HOLD_COUNT: dict[str, int] = {}
_HOLD_LOCK = threading.Lock()


def pause_point(phase: str) -> None:
    """The test hook: pause at ``phase`` when :data:`PAUSE_ENV` names it (see the module docstring)."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted or phase not in {p.strip() for p in wanted.split(",")}:
        return
    sys.stderr.write(f"CROP2SEG_TEST_PAUSED {phase}\n")
    sys.stderr.flush()
    resume = os.environ.get(RESUME_ENV)
    deadline = time.monotonic() + PAUSE_MAX_S
    while time.monotonic() < deadline:
        if interrupt_pending() or (resume and os.path.exists(resume)):
            return
        time.sleep(0.02)
