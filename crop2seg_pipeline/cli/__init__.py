"""Command-line entry points: thin click wrappers over the Python API, one module per command.

This package holds what the commands share (logging setup, common options, parsing helpers);
each ``crop2seg-*`` command lives in its own module (``cli/build.py``, ``cli/predict.py`` ...)
and only parses options and calls the library.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator

import click


log = logging.getLogger("crop2seg_pipeline")


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("crop2seg_pipeline")
    root.handlers[:] = [handler]
    root.setLevel(level)
    if verbose < 2:
        logging.getLogger("distributed").setLevel(logging.WARNING)
        # distributed 2026.8's client.sync can log a spurious NameError traceback through tornado
        # when Ctrl-C lands mid-wait; the interrupt itself is handled (message, exit 130). -vv shows it.
        logging.getLogger("tornado.application").setLevel(logging.CRITICAL)


@contextlib.contextmanager
def workers_ignore_sigint(cluster: str | None) -> Iterator[None]:
    """Start a local cluster's worker processes with SIGINT ignored (inherited through exec).

    A terminal's Ctrl-C goes to the whole process group: without this, every worker dies on its
    own KeyboardInterrupt (tracebacks on stderr, the nanny killing them after a timeout) while the
    client is still cancelling the build. With it, only this process gets the interrupt, and it
    cancels the pass and closes the cluster itself. Other cluster types start no local workers
    (and may wait for jobs a long time): left alone.
    """
    from ..cluster import resolve_spec

    try:
        local = resolve_spec(cluster).get("type") == "local"
    except Exception:  # noqa: BLE001 (connect() reports a bad spec)
        local = False
    if not local or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def fail(e: Exception) -> click.ClickException:
    """A package error as the ClickException the user sees (message only, exit 1)."""
    return click.ClickException(str(e))


CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"]}

verbose_opt = click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
quiet_opt = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")


def parse_floats(text: str | None, n: int, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise click.BadParameter(f"expected {n} comma-separated numbers, got {text!r}", param_hint=name) from None
    if len(vals) != n:
        raise click.BadParameter(f"expected {n} comma-separated numbers, got {len(vals)}", param_hint=name)
    return vals


def pct(v: float | None) -> str:
    """A 0..1 share as a percentage with one decimal, ``n/a`` for None."""
    return "n/a" if v is None else f"{100 * v:.1f}"
