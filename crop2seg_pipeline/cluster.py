"""Cluster specs -> a ``distributed.Client``.

``--cluster`` takes ``local`` (default), a scheduler address (``tcp://host:port``), or the path
or name of a YAML spec (``cluster/*.yaml``). The client is a context manager that also closes
the cluster it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from distributed import Client, LocalCluster

from .errors import Crop2SegError

log = logging.getLogger(__name__)

#: Where the shipped specs live (``cluster/`` at the repository root), for name lookups.
SPEC_DIRS = (Path.cwd() / "cluster", Path(__file__).resolve().parent.parent / "cluster")


def _local_defaults() -> dict[str, Any]:
    ncores = os.cpu_count() or 1
    return {"n_workers": ncores, "threads_per_worker": 1}


def resolve_spec(cluster: str | None) -> dict[str, Any]:
    """Turn a ``--cluster`` value into a spec dict with a ``type`` key."""
    if cluster in (None, "", "local"):
        return {"type": "local"}
    if "://" in cluster:
        return {"type": "address", "address": cluster}
    path = Path(cluster)
    if not path.exists():
        for d in SPEC_DIRS:
            for cand in (d / cluster, d / f"{cluster}.yaml"):
                if cand.exists():
                    path = cand
                    break
    if not path.exists():
        raise Crop2SegError(
            f"--cluster {cluster!r} is neither 'local', a scheduler address (tcp://host:port) "
            "nor an existing YAML spec file"
        )
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise Crop2SegError(f"cluster spec {path} is not valid YAML: {e}") from e
    if "type" not in spec:
        raise Crop2SegError(f"cluster spec {path} has no 'type' (local, address, slurm or pbs)")
    return spec


@contextlib.contextmanager
def connect(
    cluster: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    dashboard_address: str = "127.0.0.1:0",
) -> Iterator[Client]:
    """Start or join a Dask cluster and yield a client; close what was started on exit.

    Parameters
    ----------
    cluster
        ``local`` / None, ``tcp://host:port`` or a YAML spec path or name.
    n_workers, threads_per_worker, memory_limit
        Override the spec for a local cluster (``memory_limit`` per worker, e.g. ``"2GB"``).
    dashboard_address
        Where a local cluster's dashboard listens; loopback unless the user opts to expose it.
    """
    spec = resolve_spec(cluster)
    kind = spec["type"]
    if kind == "address":
        try:
            client = Client(spec["address"], timeout="30s")
        except OSError as e:
            raise Crop2SegError(f"cannot reach the Dask scheduler at {spec['address']}: {e}") from e
        try:
            yield client
        finally:
            client.close()
        return
    if kind != "local":
        raise Crop2SegError(f"cluster type {kind!r} is not supported here (use local or a tcp:// address)")
    kw = _local_defaults()
    kw.update({k: v for k, v in spec.items() if k in ("n_workers", "threads_per_worker", "memory_limit", "processes")})
    if n_workers is not None:
        kw["n_workers"] = n_workers
    if threads_per_worker is not None:
        kw["threads_per_worker"] = threads_per_worker
    if memory_limit is not None:
        kw["memory_limit"] = memory_limit
    kw.setdefault("dashboard_address", spec.get("dashboard_address", dashboard_address))
    with LocalCluster(**kw) as lc, Client(lc) as client:
        yield client
