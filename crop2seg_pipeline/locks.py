"""One writer per output folder: a small JSON lock file, created only if absent.

Every command that writes a folder (a patch store, a prediction, a mirror, a run folder, a demo
scene) holds :func:`writer_lock` on it from before its first write until it is done. The lock is
``FOLDER/.crop2seg/lock.json``::

    {"format": "crop2seg-lock", "holder": "crop2seg-build-dataset", "host": "node12", "pid": 4242,
     "pid_started": 1764578400.12, "started": "2026-12-01T08:40:00+00:00", "token": "9f0c..."}

- It is created with "create only if absent" semantics and complete content (a temporary file
  hard-linked to the lock name), so two writers started together cannot both get it and nobody
  ever reads a half-written lock.
- A second writer is refused with :class:`LockHeld`, naming the holder; nothing is touched.
- A lock whose process is gone (same host, the pid no longer runs or is another process now) is
  stale: it is taken over, and a warning says so. A lock of another host cannot be checked: the
  message says how to remove it once that build is known to be gone.
- Released (deleted) only by its holder, and only while it still holds the holder's token.
- Re-entrant within a process: a library call inside a command that already holds the lock
  (``build_dataset`` under ``crop2seg-build-dataset``) takes it again at no cost.

All storage goes through a backend with three operations (create-if-absent, read, delete):
:class:`LocalBackend` on a POSIX filesystem, :class:`ObjectStoreBackend` for an output folder
that is an object-store URL (``s3://bucket/store.zarr``). There, create-if-absent is one
conditional ``PUT`` (``If-None-Match: *``), which S3 (and S3-compatible servers that implement
it) decide atomically: of two writers started together exactly one gets the lock, as locally.
Stores without conditional writes fall back to a check then a write, which two writers
starting within one round trip of each other could both pass (see
:func:`crop2seg_pipeline.storage.create_exclusive`). Staleness works as locally: the host and
pid in the lock tell whether its process is known to be gone.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from . import storage
from .errors import Crop2SegError

log = logging.getLogger(__name__)

__all__ = ["LOCK_DIR", "LOCK_NAME", "LockHeld", "LockInfo", "LocalBackend", "ObjectStoreBackend", "WriterLock", "read_lock", "writer_lock"]

#: The folder of the package's bookkeeping inside an output folder (locks, resume markers).
LOCK_DIR = ".crop2seg"
#: The lock file, relative to the output folder.
LOCK_NAME = f"{LOCK_DIR}/lock.json"
_FORMAT = "crop2seg-lock"


class LockHeld(Crop2SegError):
    """Another live process is writing this folder."""


class LockBackend(Protocol):
    """Where lock files live: three operations, each atomic on its own."""

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Write ``data`` at ``path`` unless something is there; False if it was."""

    def read(self, path: str) -> bytes | None:
        """The content at ``path``, None if there is nothing."""

    def delete(self, path: str) -> None:
        """Remove ``path`` (nothing if it is gone)."""


class ObjectStoreBackend:
    """Lock files on an object store (paths are URLs; :mod:`crop2seg_pipeline.storage`)."""

    def create_exclusive(self, path: str, data: bytes) -> bool:
        return storage.create_exclusive(path, data)

    def read(self, path: str) -> bytes | None:
        return storage.read_bytes(path)

    def delete(self, path: str) -> None:
        storage.delete(path)


class LocalBackend:
    """Lock files on a local or shared POSIX filesystem."""

    def create_exclusive(self, path: str, data: bytes) -> bool:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, p)  # atomic, fails if p exists: readers see all of the lock or none
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: O_EXCL, content written right after
            try:
                fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def read(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def delete(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock."""

    holder: str
    host: str
    pid: int
    pid_started: float | None
    started: str
    token: str
    format: str = _FORMAT

    @classmethod
    def mine(cls, holder: str) -> "LockInfo":
        return cls(holder=holder, host=socket.gethostname(), pid=os.getpid(), pid_started=_process_start(os.getpid()),
                   started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), token=uuid.uuid4().hex)

    @classmethod
    def parse(cls, data: bytes) -> "LockInfo | None":
        try:
            d = json.loads(data)
            return cls(holder=str(d["holder"]), host=str(d["host"]), pid=int(d["pid"]),
                       pid_started=None if d.get("pid_started") is None else float(d["pid_started"]),
                       started=str(d["started"]), token=str(d["token"]))
        except (ValueError, KeyError, TypeError):
            return None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    def describe(self) -> str:
        return f"{self.holder} (pid {self.pid} on host {self.host}, started {self.started})"

    def is_local(self) -> bool:
        return self.host == socket.gethostname()

    def is_alive(self) -> bool:
        """False only when this lock's process is known to be gone (same host, pid not running,
        or running but started at another time: a reused pid). Another host: assumed alive."""
        if not self.is_local():
            return True
        started = _process_start(self.pid)
        if started is None:
            return False
        return self.pid_started is None or abs(started - self.pid_started) < 1.0


def _process_start(pid: int) -> float | None:
    """Start time of a running process (None if there is none, or it is a zombie)."""
    try:
        import psutil

        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p.create_time()
    except ImportError:  # pragma: no cover - psutil comes with distributed
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    except Exception:  # noqa: BLE001 (NoSuchProcess, AccessDenied...)
        return None


# locks held by this process: lock path -> (lock, depth)
_HELD: dict[str, list] = {}
_HELD_GUARD = threading.Lock()


class WriterLock:
    """The writer lock of ``folder`` (see the module docstring). Use :func:`writer_lock`.

    Parameters
    ----------
    folder
        The output folder (need not exist: it is created with the lock and removed again on
        release when the lock was all there was in it).
    holder
        Who writes (a command name), shown to a refused second writer.
    what
        What the folder is, in messages (``"patch store"``, ``"prediction folder"`` ...).
    backend
        Where lock files live (default: :class:`LocalBackend`).
    """

    def __init__(self, folder: str | os.PathLike, holder: str, what: str = "folder",
                 backend: LockBackend | None = None):
        self.remote = storage.is_url(folder)
        self.folder = folder if self.remote else Path(folder)
        self.path = storage.join(folder, LOCK_NAME) if self.remote else str(self.folder / LOCK_NAME)
        self.holder = holder
        self.what = what
        self.backend = backend or (ObjectStoreBackend() if self.remote else LocalBackend())
        self.info: LockInfo | None = None
        self._created: list[Path] = []

    def acquire(self) -> "WriterLock":
        """Take the lock; raises :class:`LockHeld` (another live writer) or :class:`Crop2SegError`
        (the folder cannot be written)."""
        key = self._key()
        with _HELD_GUARD:
            if key in _HELD:  # this process holds it already (a command calling the library)
                _HELD[key][1] += 1
                self.info = _HELD[key][0].info
                return self
        self._created = [] if self.remote else self._make_folder()
        info = LockInfo.mine(self.holder)
        try:
            for _ in range(5):
                if self.backend.create_exclusive(self.path, info.to_bytes()):
                    self.info = info
                    with _HELD_GUARD:
                        _HELD[key] = [self, 1]
                    return self
                self._break_if_stale()
            raise LockHeld(f"cannot take the lock {self.path}: it keeps changing hands; try again")
        except OSError as e:
            self._remove_created()
            raise Crop2SegError(f"cannot write {self.what} {self.folder}: {e}; choose a writable place") from None
        except BaseException:
            self._remove_created()
            raise

    def _make_folder(self) -> list[Path]:
        """Create the folder (and the lock's) where missing; the folders created, deepest first."""
        made: list[Path] = []
        if self.folder.exists() and not self.folder.is_dir():
            raise Crop2SegError(f"{self.folder} exists and is not a folder; choose another path for the {self.what}")
        for d in (self.folder, self.folder / LOCK_DIR):
            missing = []
            p = d.resolve()
            while not p.exists():
                missing.append(p)
                p = p.parent
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                for m in made:
                    _rmdir_quiet(m)
                raise Crop2SegError(f"cannot write {self.what} {self.folder}: {e}; choose a writable place") from None
            made = missing + made
        return made

    def _break_if_stale(self) -> None:
        data = self.backend.read(self.path)
        if data is None:
            return  # released meanwhile: try again
        other = LockInfo.parse(data)
        if other is None:
            raise LockHeld(
                f"{self.folder} has a lock file that cannot be read ({self.path}); if no other command is "
                "writing there, delete that file and run again"
            )
        if other.is_alive():
            hint = ("" if other.is_local() else
                    f" Its host cannot be checked from here: once you know that process is gone, delete {self.path}.")
            raise LockHeld(
                f"{self.folder} is being written by {other.describe()}; wait for it to finish, stop it, or "
                f"choose another path.{hint}"
            )
        # stale (or unreadable): one process breaks it, the one that creates the break file
        brk = f"{self.path}.break-{other.token}"
        me = LockInfo.mine(self.holder)
        if not self.backend.create_exclusive(brk, me.to_bytes()):
            breaker = LockInfo.parse(self.backend.read(brk) or b"")
            if breaker is not None and not breaker.is_alive():
                self.backend.delete(brk)  # a breaker that died half-way
            return
        try:
            if self.backend.read(self.path) == data:  # still the stale one
                log.warning("taking over the lock of %s on %s: that process is no longer running",
                            other.describe(), self.folder)
                self.backend.delete(self.path)
        finally:
            self.backend.delete(brk)

    def _key(self) -> str:
        return self.path if self.remote else os.path.abspath(self.path)

    def release(self) -> None:
        key = self._key()
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is None or held[0] is not self and held[0].info is not self.info:
                return
            held[1] -= 1
            if held[1] > 0:
                return
            owner = held[0]
            del _HELD[key]
        owner._release_file()

    def _release_file(self) -> None:
        try:
            current = LockInfo.parse(self.backend.read(self.path) or b"")
            if current is not None and self.info is not None and current.token == self.info.token:
                self.backend.delete(self.path)
            else:
                log.warning("the lock %s is no longer ours (taken over?): left as it is", self.path)
        except OSError as e:  # the folder went away (a user removed it): nothing to release
            log.debug("releasing %s: %s", self.path, e)
        self._remove_created()

    def _remove_created(self) -> None:
        """Remove the folders this lock created if nothing but the (empty) lock folder is left."""
        for d in self._created:  # deepest first
            _rmdir_quiet(d)
        self._created = []

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _rmdir_quiet(p: Path) -> None:
    try:
        p.rmdir()
    except OSError:
        pass


@contextmanager
def writer_lock(folder: str | os.PathLike, holder: str, what: str = "folder") -> Iterator[WriterLock]:
    """Hold the writer lock of ``folder`` for the block (see :class:`WriterLock`)."""
    lock = WriterLock(folder, holder, what).acquire()
    try:
        yield lock
    finally:
        lock.release()


def read_lock(folder: str | os.PathLike) -> LockInfo | None:
    """Who holds the lock of ``folder`` now (None: nobody)."""
    if storage.is_url(folder):
        data = ObjectStoreBackend().read(storage.join(folder, LOCK_NAME))
    else:
        data = LocalBackend().read(str(Path(folder) / LOCK_NAME))
    return None if data is None else LockInfo.parse(data)


def is_bookkeeping(name: str) -> bool:
    """Whether a top-level entry of an output folder is the package's own bookkeeping."""
    return name == LOCK_DIR
