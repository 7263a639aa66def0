"""The app's cache folder: one entry per prediction request, background image or parcel series.

Layout (``ROOT`` is ``--cache-dir``)::

    ROOT/predictions/<key>/    predict()'s outputs for one request + crop2seg-app.json
    ROOT/backgrounds/<key>/    a true-colour composite (composite.png) + crop2seg-app.json
    ROOT/ndvi/<key>/           parcel NDVI series of one items file (one JSON per parcel) + crop2seg-app.json
    ROOT/<kind>/<key>.lock     lock files (fcntl.flock) held while an entry is being written

An entry is the app's only when its folder holds ``crop2seg-app.json`` with ``written_by:
crop2seg-app``: :meth:`AppCache.entries` lists only those and :meth:`AppCache.delete` removes
only those, so pointing ``--cache-dir`` at a folder that holds other things never loses them.
Keys are hex digests of the request (see :func:`request_key`), so two tabs asking for the same
prediction share one entry, and different requests never write into the same folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Crop2SegError
from ..storage import write_local_atomic

__all__ = ["AppCache", "CacheEntry", "CacheError", "MARKER", "KINDS", "request_key", "file_digest"]

MARKER = "crop2seg-app.json"
WRITER = "crop2seg-app"
KINDS = ("predictions", "backgrounds", "ndvi")
_KEY = re.compile(r"^[0-9a-f]{16,64}$")


class CacheError(Crop2SegError):
    """The cache folder is unusable, or an entry cannot be deleted (not the app's, in use)."""


@dataclass(frozen=True)
class CacheEntry:
    """One entry of the cache, as listed in the app's cache view."""

    kind: str
    key: str
    path: Path
    size_bytes: int
    n_files: int
    status: str
    created: str
    description: str


def request_key(parts: Mapping[str, Any]) -> str:
    """A hex key for a request: sha256 of its JSON with sorted keys (first 24 hex digits)."""
    text = json.dumps(dict(parts), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _size(path: Path) -> tuple[int, int]:
    total, n = 0, 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += (Path(root) / f).stat().st_size
                n += 1
            except OSError:
                pass
    return total, n


class AppCache:
    """The cache folder of one app (several app processes may share it: writes are locked)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise CacheError(f"cache folder {self.root} exists and is not a folder; choose another --cache-dir")

    def ensure(self) -> "AppCache":
        """Create the kind folders (nothing else in the root is touched)."""
        try:
            for kind in KINDS:
                (self.root / kind).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot create the cache folder {self.root}: {e}; choose another --cache-dir") from e
        if not os.access(self.root, os.W_OK):
            raise CacheError(f"cache folder {self.root} is not writable; choose another --cache-dir")
        return self

    # ------------------------------------------------------------------ entries

    def path(self, kind: str, key: str) -> Path:
        if kind not in KINDS:
            raise CacheError(f"unknown cache kind {kind!r}; one of {KINDS}")
        if not _KEY.match(key):
            raise CacheError(f"bad cache key {key!r}")
        return self.root / kind / key

    def read_marker(self, kind: str, key: str) -> dict | None:
        """The entry's marker, or None when the folder is not an app entry."""
        try:
            doc = json.loads((self.path(kind, key) / MARKER).read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and doc.get("written_by") == WRITER else None

    def write_marker(self, kind: str, key: str, **fields: Any) -> dict:
        """Create or update the entry's marker (atomically); returns it."""
        folder = self.path(kind, key)
        folder.mkdir(parents=True, exist_ok=True)
        doc = self.read_marker(kind, key) or {"written_by": WRITER, "kind": kind, "key": key,
                                             "created": dt.datetime.now().isoformat(timespec="seconds")}
        doc.update(fields)
        write_local_atomic(folder / MARKER, lambda fh: fh.write(json.dumps(doc, indent=2, default=str).encode("utf-8")))
        return doc

    def is_complete(self, kind: str, key: str) -> bool:
        m = self.read_marker(kind, key)
        return m is not None and m.get("status") == "complete"

    @contextlib.contextmanager
    def lock(self, kind: str, key: str) -> Iterator[None]:
        """Exclusive lock on an entry (threads of this process and other processes alike)."""
        self.path(kind, key)  # validates
        lock_path = self.root / kind / f"{key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def is_locked(self, kind: str, key: str) -> bool:
        lock_path = self.root / kind / f"{key}.lock"
        if not lock_path.exists():
            return False
        with open(lock_path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
        return False

    def clear_partial(self, kind: str, key: str) -> None:
        """Remove an unfinished entry of the app (called with the entry's lock held)."""
        folder = self.path(kind, key)
        if folder.exists() and self.read_marker(kind, key) is not None and not self.is_complete(kind, key):
            shutil.rmtree(folder)

    def entries(self) -> list[CacheEntry]:
        """The app's entries (folders with its marker), newest first."""
        out = []
        for kind in KINDS:
            base = self.root / kind
            if not base.is_dir():
                continue
            for p in base.iterdir():
                if not p.is_dir() or not _KEY.match(p.name):
                    continue
                m = self.read_marker(kind, p.name)
                if m is None:
                    continue
                size, n = _size(p)
                out.append(CacheEntry(kind, p.name, p, size, n, str(m.get("status", "?")),
                                      str(m.get("created", "")), str(m.get("description", ""))))
        out.sort(key=lambda e: e.created, reverse=True)
        return out

    def delete(self, kind: str, key: str) -> int:
        """Delete an entry the app wrote; returns the bytes freed.

        Raises
        ------
        CacheError
            The folder is not an app entry (no marker: never touched), or it is being written.
        """
        folder = self.path(kind, key)
        if not folder.is_dir():
            raise CacheError(f"no cache entry {kind}/{key}")
        if self.read_marker(kind, key) is None:
            raise CacheError(f"{folder} was not written by the app (no {MARKER}); it is left alone")
        if self.is_locked(kind, key):
            raise CacheError(f"cache entry {kind}/{key} is being written right now; delete it when it is done")
        size, _ = _size(folder)
        with self.lock(kind, key):
            shutil.rmtree(folder)
        (self.root / kind / f"{key}.lock").unlink(missing_ok=True)
        return size

    def files(self, kind: str, key: str) -> list[Path]:
        """The plain files of a complete entry that can be downloaded (not the marker, not hidden)."""
        folder = self.path(kind, key)
        if not self.is_complete(kind, key):
            return []
        return sorted(p for p in folder.iterdir()
                      if p.is_file() and not p.name.startswith(".") and p.name != MARKER)
