"""``crop2seg-cluster``: show (``--dry-run``) or start a Dask cluster from a spec and keep it running.

A cluster started here outlives single commands: point several of them at the printed address
with ``--cluster tcp://HOST:PORT``; Ctrl-C stops it (and cancels its SLURM/PBS jobs).
"""

from __future__ import annotations

import contextlib
import time

import click

from ..errors import Crop2SegError
from ..workflow import workflow_option
from . import cluster_options, command, starting_cluster


@command(interrupted="the cluster was stopped.")
@workflow_option("cluster")
@click.argument("spec", default="local")
@click.option("--dry-run", is_flag=True,
              help="Print what would start (LocalCluster parameters, the SLURM/PBS job script, or the address) and exit; starts and submits nothing.")
@cluster_options(spec=False)
@click.option("--dashboard-address", default=None,
              help="Where the dashboard listens (default: the spec's, else 127.0.0.1:8787; ':8787' exposes it).")
def cluster_cmd(spec, dry_run, workers, threads_per_worker, memory_limit, dashboard_address):
    """Start the Dask cluster of SPEC and keep it running until Ctrl-C.

    SPEC is a spec name (local, slurm, slurm-gpu, pbs, existing: the YAML files of cluster/), the
    path of a spec YAML, or a scheduler address (tcp://HOST:PORT). Prints the scheduler address
    to pass to other commands as --cluster, and the dashboard link.
    """
    from ..cluster import connect, describe

    overrides = dict(n_workers=workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit,
                     dashboard_address=dashboard_address)
    try:
        if dry_run:
            click.echo(describe(spec, **overrides))
            return
        with contextlib.ExitStack() as stack:
            with starting_cluster(spec):
                client = stack.enter_context(connect(spec, **overrides))
            info = client.scheduler_info()
            click.echo(f"Dask scheduler: {info.get('address') or client.scheduler.address}")
            click.echo(f"Dask dashboard: {client.dashboard_link}")
            click.echo(f"Workers now: {len(info.get('workers', {}))}")
            click.echo(f"Use it with: --cluster {info.get('address') or client.scheduler.address}")
            click.echo("Press Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                click.echo("\nstopping the cluster", err=True)
    except Crop2SegError as e:
        raise click.ClickException(str(e)) from e


def main() -> None:  # pragma: no cover
    cluster_cmd()


if __name__ == "__main__":  # pragma: no cover
    main()
