"""An output folder on an object store (``--out s3://bucket/prediction``), written through a
local staging folder on the client.

A prediction's outputs are assembled on the client anyway (COGs finished from tiled GeoTIFFs,
GeoPackages appended chunk by chunk, see :mod:`crop2seg_pipeline.manifest`): here they are
assembled in a temporary staging folder, and uploaded once the run is complete, so the bucket
never holds a half-written file under a final name. The rules of a local output folder hold:

- before anything is computed, :meth:`RemoteFolder.check` refuses a run when the URL holds an
  object under one of the output names that the folder's ``manifest.json`` does not list (or
  whose size changed since), or a ``manifest.json`` that is not ours: nothing is touched;
- :meth:`RemoteFolder.publish` first rewrites the remote manifest as *incomplete* (listing the
  old and the new outputs, so a later run knows them all as its own), uploads every output
  (streamed from disk, never held in memory), removes the previous run's outputs that this run
  did not write, and uploads the complete manifest last. Consumers trust the folder only when
  the manifest says complete.

Objects under other names are never read, replaced or deleted.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from . import storage
from .manifest import MANIFEST, OutputConflict, OutputFolder, read_manifest

log = logging.getLogger(__name__)

__all__ = ["RemoteFolder"]


class RemoteFolder:
    """The object-store folder ``url`` and the local staging folder its outputs are made in."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.staging = Path(tempfile.mkdtemp(prefix="crop2seg-staging-"))
        self.previous: dict = {}

    def _manifest(self) -> dict | None:
        data = storage.read_bytes(storage.join(self.url, MANIFEST))
        if data is None:
            return None
        tmp = self.staging / ".remote-manifest"
        tmp.mkdir(exist_ok=True)
        (tmp / MANIFEST).write_bytes(data)
        doc = read_manifest(tmp)
        shutil.rmtree(tmp)
        return doc if doc is not None else {}

    def check(self, names: Iterable[str]) -> None:
        """Refuse (:class:`~crop2seg_pipeline.manifest.OutputConflict`) when an output name is
        taken by an object this package did not write there (see the module docstring)."""
        with storage.storage_errors(self.url):
            present = storage.listdir(self.url)
            doc = self._manifest() if MANIFEST in present else None
        conflicts = []
        if doc == {}:
            conflicts.append(f"{MANIFEST} (not a manifest written by crop2seg)")
            doc = None
        self.previous = dict((doc or {}).get("files") or {})
        for name in sorted(set(names)):
            if name not in present:
                continue
            e = self.previous.get(name)
            if e is None:
                conflicts.append(f"{name} (not written by crop2seg: no manifest lists it)")
            elif e.get("kind") == "file" and storage.file_version(storage.join(self.url, name))[0] != e.get("size"):
                conflicts.append(f"{name} (changed since crop2seg wrote it)")
        if conflicts:
            raise OutputConflict(
                f"--out {storage.redact(self.url)} holds objects this run would replace but that are not its own "
                f"outputs: {'; '.join(conflicts)}. Move them away or choose another --out; nothing was written."
            )

    def publish(self, folder: OutputFolder) -> None:
        """Upload the finished outputs of ``folder`` (the staging folder), the manifest last."""
        local = json.loads((folder.folder / MANIFEST).read_text())
        new = local.get("files") or {}
        pending = {**local, "complete": False, "files": {**self.previous, **new}}
        storage.write_bytes(storage.join(self.url, MANIFEST), json.dumps(pending, indent=1, default=str).encode())
        for name in sorted(new):
            target = storage.join(self.url, name)
            if (folder.folder / name).is_dir():
                storage.rmtree(target)  # a folder output (probabilities.zarr) replaces the old one whole
            storage.upload(folder.folder / name, target)
        for name in sorted(set(self.previous) - set(new)):
            e, target = self.previous[name], storage.join(self.url, name)
            if e.get("kind") == "file" and storage.file_version(target)[0] != e.get("size"):
                log.warning("%s in %s changed since crop2seg wrote it: left as it is", name, self.url)
                continue
            storage.rmtree(target)
            log.info("removed %s of the previous run in %s (this run does not write it)", name, self.url)
        storage.write_bytes(storage.join(self.url, MANIFEST), json.dumps(local, indent=1, default=str).encode())

    def cleanup(self) -> None:
        """Remove the staging folder."""
        shutil.rmtree(self.staging, ignore_errors=True)
