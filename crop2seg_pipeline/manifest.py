"""An output folder a command owns only in part: a manifest of what it wrote, atomic final files.

``crop2seg-predict --out DIR`` (and any command that writes named files into a folder a user
may share with other files) goes through :class:`OutputFolder`:

1. :meth:`OutputFolder.plan` names every output the run will write, before anything is
   computed. A name that exists and is not in the folder's ``manifest.json`` (a file the package
   did not write, e.g. the user's own ``summary.json``), or that changed since the package wrote
   it (size or modification time), is a conflict: the run is refused, nothing is touched.
2. Each output is written under a temporary name in the same folder and renamed into place when
   it is complete (:meth:`OutputFolder.output`, one call per output), so a reader never sees a
   half-written file under a final name. The manifest is rewritten (atomically) after each
   rename with ``"complete": false``: at any moment it lists exactly the files the package owns.
3. :meth:`OutputFolder.finish` removes the outputs of the previous run that this run did not
   write (a ``parcels.gpkg`` of a run with ``--parcels`` when this one has none), when they are
   unchanged since the package wrote them (a changed one is left and no longer listed), and
   writes the manifest with ``"complete": true`` and the run's settings. Consumers trust the
   folder only when the manifest says complete.

Everything else in the folder is never read, moved or deleted. Temporary names are
``.STEM.partial-RUN.SUFFIX``; leftovers of a killed run are removed by the next run (under the folder's
writer lock, :mod:`crop2seg_pipeline.locks`, so no other run is writing).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import Crop2SegError
from .locks import LOCK_DIR

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "OutputConflict", "OutputFolder", "read_manifest"]

MANIFEST = "manifest.json"
_FORMAT = "crop2seg-outputs"
_PARTIAL = re.compile(r"^\..+\.partial-[0-9a-f]{12}")


class OutputConflict(Crop2SegError):
    """The output folder holds files under the names a run would write that it did not write."""


@dataclass(frozen=True)
class Entry:
    """One output as the manifest records it."""

    kind: str  # "file" or "dir"
    size: int  # bytes (a folder: all its files)
    n_files: int
    mtime_ns: int
    sha256: str | None  # files only
    run: str

    @classmethod
    def of(cls, path: Path, run: str) -> "Entry":
        st = path.stat()
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.is_file()]
            return cls("dir", sum(p.stat().st_size for p in files), len(files), st.st_mtime_ns, None, run)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return cls("file", st.st_size, 1, st.st_mtime_ns, h.hexdigest(), run)

    def matches(self, path: Path) -> bool:
        """Whether ``path`` is still what was recorded (cheap: kind, size and mtime)."""
        if not path.exists() or (self.kind == "dir") != path.is_dir():
            return False
        if self.kind == "file":
            st = path.stat()
            return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns
        files = [p for p in path.rglob("*") if p.is_file()]
        return len(files) == self.n_files and sum(p.stat().st_size for p in files) == self.size


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of ``folder`` (None when there is none or it is not one of ours)."""
    p = Path(folder) / MANIFEST
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == _FORMAT else None


class OutputFolder:
    """The outputs one run of ``command`` writes into ``folder`` (see the module docstring).

    Parameters
    ----------
    folder
        The output folder (created on the first output).
    command
        Who writes (recorded in the manifest and named in conflicts).
    settings
        The run's settings, recorded in the manifest.
    """

    def __init__(self, folder: str | os.PathLike, command: str, settings: Mapping[str, Any] | None = None):
        self.folder = Path(folder)
        self.command = command
        self.settings = dict(settings or {})
        self.run = uuid.uuid4().hex[:12]
        self.started = _now()
        doc = read_manifest(self.folder)
        self.previous: dict[str, Entry] = {}
        if doc is not None:
            for name, e in (doc.get("files") or {}).items():
                try:
                    self.previous[name] = Entry(**e)
                except TypeError:
                    continue
        self.planned: set[str] = set()
        self.written: dict[str, Entry] = {}
        self._temps: set[Path] = set()

    # ------------------------------------------------------------------ before anything
    def plan(self, names: Iterable[str]) -> None:
        """Declare the outputs of this run; refuse (:class:`OutputConflict`) before anything is
        written when one of them, or the manifest, is a file the package does not own."""
        names = set(names)
        bad = [n for n in names if not n or "/" in n or n.startswith(".") or n in (MANIFEST, LOCK_DIR)]
        if bad:
            raise ValueError(f"output names must be plain file names, not {bad}")
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputConflict(f"--out {self.folder} exists and is not a folder; choose another --out")
        conflicts = []
        manifest = self.folder / MANIFEST
        if manifest.exists() and read_manifest(self.folder) is None:
            conflicts.append(f"{MANIFEST} (not a manifest written by crop2seg)")
        for name in sorted(names):
            p = self.folder / name
            if not p.exists() and not p.is_symlink():
                continue
            e = self.previous.get(name)
            if e is None:
                conflicts.append(f"{name} (not written by crop2seg: no manifest lists it)")
            elif p.is_symlink() or not e.matches(p):
                conflicts.append(f"{name} (changed since {self.command} wrote it)")
        if conflicts:
            raise OutputConflict(
                f"--out {self.folder} holds files this run would replace but that are not its own outputs: "
                f"{'; '.join(conflicts)}. Move them away or choose another --out; nothing was written."
            )
        self.planned = names
        if self.folder.is_dir():
            for p in self.folder.iterdir():  # leftovers of a run that was killed (we hold the lock)
                if _PARTIAL.match(p.name):
                    _remove(p)

    # ------------------------------------------------------------------ one output
    @contextmanager
    def output(self, name: str) -> Iterator[Path]:
        """Write the output ``name``: yields a temporary path in the folder; when the block ends
        without error it is renamed to ``name`` (replacing this package's previous one) and
        recorded; on an error it is removed."""
        tmp = self.temp(name)
        try:
            yield tmp
        except BaseException:
            _remove(tmp)
            raise
        self.commit(name, tmp)

    def temp(self, name: str) -> Path:
        """The temporary path of output ``name`` (see :meth:`output`)."""
        if name not in self.planned:
            raise ValueError(f"{name!r} was not planned (OutputFolder.plan) for {self.folder}")
        self.folder.mkdir(parents=True, exist_ok=True)
        suffix = Path(name).suffix  # kept last: writers pick the format from it (matplotlib)
        tmp = self.folder / f".{name[: len(name) - len(suffix)]}.partial-{self.run}{suffix}"
        _remove(tmp)
        self._temps.add(tmp)
        return tmp

    def discard_temps(self) -> None:
        """Remove the temporary files of outputs that were not committed (after an error)."""
        for tmp in list(self._temps):
            for p in (tmp, Path(str(tmp) + ".aux.xml")):
                if p.exists():
                    _remove(p)
        self._temps.clear()

    def commit(self, name: str, tmp: str | os.PathLike) -> Entry:
        """Rename the finished ``tmp`` to output ``name`` and record it in the manifest."""
        if name not in self.planned:
            raise ValueError(f"{name!r} was not planned (OutputFolder.plan) for {self.folder}")
        tmp, dest = Path(tmp), self.folder / name
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: nothing was written for output {name}")
        if tmp.is_dir() and dest.exists():  # a folder cannot replace a folder in one rename
            old = self.folder / f".{name}.partial-{self.run}-old"
            os.replace(dest, old)
            os.replace(tmp, dest)
            _remove(old)
        else:
            os.replace(tmp, dest)
        self._temps.discard(tmp)
        entry = self.written[name] = Entry.of(dest, self.run)
        self._save(complete=False)
        return entry

    # ------------------------------------------------------------------ the end
    def finish(self, summary: Mapping[str, Any] | None = None) -> Path:
        """Remove the previous run's outputs this run did not write; the manifest, complete."""
        for name, e in sorted(self.previous.items()):
            if name in self.written:
                continue
            p = self.folder / name
            if not p.exists():
                continue
            if e.matches(p):
                _remove(p)
                log.info("removed %s of the previous run in %s (this run does not write it)", name, self.folder)
            else:
                log.warning("%s in %s changed since %s wrote it: left as it is, no longer listed as an output",
                            name, self.folder, self.command)
        return self._save(complete=True, summary=summary)

    def _save(self, complete: bool, summary: Mapping[str, Any] | None = None) -> Path:
        files = {n: e for n, e in self.previous.items()
                 if n not in self.written and not complete and e.matches(self.folder / n)}
        files.update(self.written)
        doc = {
            "format": _FORMAT,
            "format_version": 1,
            "command": self.command,
            "run": self.run,
            "complete": complete,
            "started": self.started,
            "finished": _now() if complete else None,
            "settings": self.settings,
            "files": {n: asdict(e) for n, e in sorted(files.items())},
        }
        if summary is not None:
            doc["summary"] = dict(summary)
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / MANIFEST
        tmp = self.folder / f".{MANIFEST}.partial-{self.run}"
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        os.replace(tmp, target)
        return target


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
