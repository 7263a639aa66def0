"""The report's output folder: checked before any work, written only at the end.

A report folder holds ``index.html``, its PNG figures and CSV tables, and ``report.json`` (the
manifest: what was written, from what). ``--out`` may be absent, an empty folder, or a folder
holding an earlier report (its manifest lists the files the new report may replace or remove);
a folder holding anything else is refused and left untouched, as is a path inside the source.

A new folder is written under a temporary name beside it and renamed into place, so a failed
report leaves nothing; an earlier report is replaced file by file (each by an atomic rename),
with the manifest written last.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from pathlib import Path

from .. import storage
from ..errors import ReportError
from ..locks import LOCK_DIR

__all__ = ["MANIFEST", "REPORT_FORMAT", "check_out_dir", "write_report_files"]

MANIFEST = "report.json"
REPORT_FORMAT = "crop2seg-report"


def _manifest(out: Path) -> dict | None:
    try:
        doc = json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == REPORT_FORMAT else None


def check_out_dir(out: str | os.PathLike, source: str | os.PathLike) -> list[str]:
    """Refuse an output folder the report must not write; returns the files of an earlier report there.

    Raises
    ------
    ReportError
        ``out`` is a file, is the source or lies inside it, or holds files that are not an
        earlier report's.
    """
    out, src = Path(out), Path(source)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; give a folder for the report")
    o, s = out.resolve(), src.resolve()
    if o == s or s in o.parents:
        raise ReportError(f"--out {out} lies inside the report's source {src}; choose a folder outside it")
    if not out.exists() or not any(p.name != LOCK_DIR for p in out.iterdir()):  # empty, or only our writer lock
        return []
    doc = _manifest(out)
    if doc is None:
        names = sorted(p.name for p in out.iterdir() if p.name != LOCK_DIR)
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        raise ReportError(
            f"--out {out} already holds files that are not a crop2seg report ({shown}); choose a new or empty "
            "folder (nothing was written)"
        )
    return [str(f) for f in doc.get("files", []) if isinstance(f, str) and "/" not in f and f not in ("", ".", "..")]


def write_report_files(out: str | os.PathLike, files: dict[str, bytes], manifest: dict, previous: list[str]) -> Path:
    """Write ``files`` (name -> bytes) and the manifest into ``out`` (see the module docstring)."""
    out = Path(out)
    doc = {"format": REPORT_FORMAT, "version": 1, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           **manifest, "files": sorted([*files, MANIFEST])}
    payload = {**files, MANIFEST: json.dumps(doc, indent=2, default=str).encode("utf-8")}
    if not out.exists() or not any(out.iterdir()):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()  # (mkdtemp would make it 0700; this follows the umask like any folder)
        try:
            for name, data in payload.items():
                (tmp / name).write_bytes(data)
            os.replace(tmp, out)  # onto an absent path or an empty folder
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out
    for name, data in payload.items():
        if name == MANIFEST:
            continue
        storage.write_bytes(out / name, data)  # whole, then renamed
    for name in previous:
        if name not in payload:
            (out / name).unlink(missing_ok=True)
    storage.write_bytes(out / MANIFEST, payload[MANIFEST])
    return out
