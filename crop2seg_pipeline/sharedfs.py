"""Do the cluster's workers see the client's filesystem? A probe, before a local output is written.

A patch store is written by the workers themselves, and a prediction reads the client's files on
them: with a local output path, every worker must see the very folder the client means. On one
machine, or an HPC cluster with a shared filesystem, they do; on a cloud cluster (Kubernetes, a
managed Dask service, EC2 workers) each worker has its own disk, and a local ``--out`` would
scatter the store over the workers' disks with nobody noticing. So, before such a run writes:

1. the client writes a marker file holding a random token into the output folder (or, when that
   does not exist yet, its nearest existing parent), under its **absolute** path;
2. every worker (``client.run``) opens the file at that same absolute path and compares the
   token; a worker that finds no file, or another content, does not share the client's
   filesystem there;
3. the marker is removed; any worker that did not see it refuses the run with
   :class:`SharedFilesystemError`, naming the workers and saying to use an object-store URL.

What it checks is exactly what the run needs: that a path the client names is the same file for
every worker (not a same-named folder on another disk, not a path relative to another working
directory). Object-store URLs need no probe (every worker reaches the bucket itself), nor does
a run without a distributed client (the threads of this process).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import storage
from .errors import Crop2SegError

__all__ = ["SharedFilesystemError", "check_shared_filesystem", "local_folder"]

_PREFIX = ".crop2seg-probe-"


class SharedFilesystemError(Crop2SegError):
    """Some workers do not see the client's filesystem where a local output is to be written."""


def _sees(path: str, token: str) -> bool:
    """On a worker: whether ``path`` is a file holding ``token``."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read() == token
    except OSError:
        return False


def _existing_folder(location: str) -> Path:
    p = Path(location).absolute()
    while not p.is_dir():
        if p.parent == p:
            break
        p = p.parent
    return p


def local_folder(hrefs: Iterable[str]) -> str | None:
    """The folder holding every local file among ``hrefs`` (asset hrefs; None: all are URLs)."""
    paths = [os.path.abspath(h) for h in hrefs if isinstance(h, str) and not storage.is_url(h) and not h.startswith("/vsi")]
    return os.path.commonpath(paths) if paths else None


def check_shared_filesystem(client: Any, locations: Iterable[Any], option: str = "--out") -> None:
    """Refuse local ``locations`` that some worker of ``client`` does not see (see the module docstring).

    Parameters
    ----------
    client
        A ``distributed.Client`` (None: nothing to check).
    locations
        Output paths or URLs; URLs are skipped.
    option
        The option that named them, for the message.

    Raises
    ------
    SharedFilesystemError
        A worker does not see the client's file at the same absolute path.
    """
    if locations is None or isinstance(locations, (str, os.PathLike)):
        locations = [locations]
    local = [str(x) for x in locations if x is not None and not storage.is_url(x)]
    if client is None or not local or not hasattr(client, "run"):
        return
    for location in local:
        folder = _existing_folder(location)
        token = uuid.uuid4().hex
        marker = folder / f"{_PREFIX}{token[:12]}"
        try:
            marker.write_text(token, encoding="utf-8")
        except OSError as e:
            raise Crop2SegError(f"cannot write in {folder} (for {option} {location}): {e}; choose a writable place") from None
        try:
            seen = client.run(_sees, str(marker), token)
        finally:
            marker.unlink(missing_ok=True)
        blind = sorted(w for w, ok in seen.items() if not ok)
        if blind:
            what = "write" if option == "--out" else "read"
            raise SharedFilesystemError(
                f"{option} {location} is a local path the workers {what}, but {len(blind)} of the cluster's {len(seen)} workers "
                f"({', '.join(blind[:3])}{', ...' if len(blind) > 3 else ''}) do not see this machine's "
                f"{os.fspath(folder)} (no shared filesystem): write to an object-store URL instead "
                f"({option} s3://BUCKET/...), or to a filesystem that every worker mounts at the same path"
            )
