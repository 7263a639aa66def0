"""Command-line entry points: thin click wrappers over the Python API, one module per command.

This package holds what the commands share (logging setup, common options, parsing helpers);
each ``crop2seg-*`` command lives in its own module (``cli/build.py``, ``cli/predict.py`` ...)
and only parses options and calls the library.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from ..errors import Crop2SegError
from ..interrupts import Interrupted, deferred, pause_point, signals_as_exceptions


log = logging.getLogger("crop2seg_pipeline")


#: The verbosity of the running command (``-v`` count), set by :func:`setup_logging`.
_VERBOSITY = [0]


def setup_logging(verbose: int, quiet: bool) -> None:
    _VERBOSITY[0] = int(verbose or 0)
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


def worker_log_level() -> int:
    """Log level of local workers for the verbosity given to :func:`setup_logging` (``-v``:
    warnings, with Dask's "Compute Failed" tracebacks; ``-vv``: info; default: critical only)."""
    return {0: logging.CRITICAL, 1: logging.WARNING}.get(_VERBOSITY[0], logging.INFO)


def _is_local(cluster: str | None) -> bool:
    from ..cluster import resolve_spec

    try:
        return resolve_spec(cluster).get("type") == "local"
    except Exception:  # noqa: BLE001 (connect() reports a bad spec)
        return False


@contextlib.contextmanager
def starting_cluster(cluster: str | None) -> Iterator[None]:
    """Around a cluster start: Ctrl-C and SIGTERM are held back until the cluster is up (then
    raised, and the cluster's own context closes it), never ignored.

    For a local cluster SIGINT is also blocked in the threads the start creates, so its worker
    processes start with SIGINT blocked: a terminal's Ctrl-C goes to the whole process group, and
    without this every worker would die on its own KeyboardInterrupt (tracebacks on stderr) while
    the command is still cancelling the work. Other cluster types start no local workers and may
    wait for jobs a long time: only the signals are held back, for the client's start.
    """
    with deferred(block_sigint=_is_local(cluster)):
        yield
        pause_point("cluster")


def open_cluster(stack: contextlib.ExitStack, cluster: str | None, *, quiet: bool = False, **overrides) -> Any:
    """Start or join ``cluster`` inside ``stack`` (closed with it), print the dashboard link."""
    from ..cluster import connect

    with starting_cluster(cluster):
        client = stack.enter_context(connect(cluster, worker_log_level=worker_log_level(), **overrides))
    if not quiet:
        click.echo(f"Dask dashboard: {client.dashboard_link}")
    return client


def check_cluster(cluster: str | None, **overrides) -> None:
    """Every check of ``--cluster`` and its overrides that needs no cluster (see :func:`cluster.check`)."""
    from ..cluster import check

    check(cluster, **overrides)


def demo_scene_for(demo_size: int) -> Any:
    """The embedded demo scene of the commands run without ``--items`` (generated once, reused)."""
    from ..build import default_demo_paths
    from ..demo import make_demo_scene

    scene_dir, _ = default_demo_paths()
    click.echo(f"no --items given: using the embedded demo scene in {scene_dir}/")
    try:
        return make_demo_scene(scene_dir, size=demo_size, progress=log.info)
    except ValueError as e:  # the scene's parameters
        raise click.BadParameter(str(e), param_hint="--demo-size") from None


def _quieten_shutdown(signum: int) -> None:
    """After an interrupt, the cluster's shutdown is not news: its log lines only with -vv."""
    if _VERBOSITY[0] < 2:
        for name in _SHUTDOWN_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)


_SHUTDOWN_LOGGERS = ("distributed", "tornado", "asyncio", "bokeh")


class Command(click.Command):
    """A crop2seg command: SIGINT and SIGTERM stop it cleanly (exit 130 / 143 with ``interrupted``,
    a line saying what was kept), package errors are one line (exit 1).

    Parameters
    ----------
    interrupted
        What the user should know after an interrupt (what is kept, how to resume).
    """

    def __init__(self, *args, interrupted: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.interrupted = interrupted or "stopped; nothing was left half-written"

    def invoke(self, ctx: click.Context) -> Any:
        levels = {n: logging.getLogger(n).level for n in _SHUTDOWN_LOGGERS}
        with signals_as_exceptions(on_first=_quieten_shutdown):
            try:
                return super().invoke(ctx)
            except Interrupted as e:
                click.echo(f"\ninterrupted ({e.name}): {self.interrupted}", err=True)
                ctx.exit(e.exit_code)
            except Crop2SegError as e:
                if _VERBOSITY[0] >= 1 and e.__cause__ is not None:
                    log.error("cause:", exc_info=e.__cause__)
                raise fail(e) from e
            finally:
                for n, level in levels.items():
                    logging.getLogger(n).setLevel(level)


def command(interrupted: str | None = None, **kwargs) -> Callable:
    """``@click.command`` with the package's :class:`Command` and context settings."""
    return click.command(cls=Command, context_settings=CONTEXT, interrupted=interrupted, **kwargs)


def fail(e: Exception) -> click.ClickException:
    """A package error as the ClickException the user sees (message only, exit 1)."""
    from ..storage import redact

    return click.ClickException(redact(str(e)))


class Location(click.ParamType):
    """A local path (checked like ``click.Path``) or an object-store URL (``s3://...``, passed as is)."""

    name = "path|url"

    def __init__(self, exists: bool = False, file_okay: bool = True, dir_okay: bool = True):
        self.path = click.Path(exists=exists, file_okay=file_okay, dir_okay=dir_okay)

    def convert(self, value, param, ctx):
        from ..storage import is_url

        if value is None or is_url(value):
            return value
        return self.path.convert(value, param, ctx)


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


CLUSTER_HELP = ("A spec name (local, slurm, slurm-gpu, pbs, existing: see crop2seg-cluster --dry-run), "
                "a spec YAML path, or a scheduler address tcp://HOST:PORT.")


def cluster_options(*, spec: bool = True, memory: bool = True, spec_help: str = CLUSTER_HELP) -> Callable:
    """The cluster options every cluster command shares, in one place.

    ``--cluster`` (unless ``spec`` is False: ``crop2seg-cluster`` takes the spec as its argument),
    ``--workers``, ``--threads-per-worker`` and (unless ``memory`` is False) ``--memory-limit``;
    the overrides apply to local clusters only (:func:`crop2seg_pipeline.cluster.connect` refuses
    them for other specs, before anything starts).
    """
    opts = []
    if spec:
        opts.append(click.option("--cluster", default="local", help=spec_help))
    opts.append(click.option("--workers", default=None, type=int,
                             help="Local cluster: number of workers (default: one per core)."))
    opts.append(click.option("--threads-per-worker", default=None, type=int,
                             help="Local cluster: threads per worker (default 1)."))
    if memory:
        opts.append(click.option("--memory-limit", default=None,
                                 help="Local cluster: memory limit per worker, e.g. 4GB (default: machine memory / workers)."))

    def decorate(f: Callable) -> Callable:
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate
