"""``crop2seg-report``: a self-contained HTML page (+ PNG figures, CSV tables) of a patch store
or of a prediction folder.

:func:`make_report` reads top to bottom:

1. what the source is: a patch store (``store_state`` "ours", complete) or a prediction folder
   (``classes.tif``, ``confidence.tif``, ``summary.json`` from ``crop2seg-predict``); anything
   else is refused;
2. the output folder is checked (:func:`.writer.check_out_dir`) before any work;
3. the numbers: for a store, one pass of Dask tasks over its patches
   (:func:`.store_stats.store_statistics`); for a prediction, its summary, parcel table and
   small raster windows (:mod:`.prediction`);
4. the page and its figures are built in memory (:mod:`.pages`, :mod:`.figures`), then written
   (:func:`.writer.write_report_files`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ReportError
from ..store import store_state
from .prediction import is_prediction, read_prediction
from .store_stats import DEFAULT_BANDS, DEFAULT_MIN_CLEAR, check_store, store_statistics
from .writer import check_out_dir, write_report_files

log = logging.getLogger(__name__)

__all__ = ["ReportSummary", "make_report", "check_report", "source_kind", "DEFAULT_BANDS", "DEFAULT_MIN_CLEAR", "DEFAULT_TOP"]

#: Disagreeing parcels shown with thumbnails by default.
DEFAULT_TOP = 12


@dataclass
class ReportSummary:
    """What :func:`make_report` wrote."""

    out_dir: str
    kind: str
    source: str
    html: str
    files: list[str]

    def format(self) -> str:
        return (f"report of the {self.kind} {self.source}\n"
                f"wrote {self.html} ({len(self.files)} files in {self.out_dir})")


def source_kind(source: str | os.PathLike) -> str:
    """``"store"`` or ``"prediction"``; :class:`ReportError` for anything else."""
    p = Path(source)
    if not p.exists():
        raise ReportError(f"{p} does not exist; give a patch store (crop2seg-build-dataset --out) or a prediction "
                          "folder (crop2seg-predict --out)")
    state = store_state(p)
    if state == "ours":
        return "store"
    if is_prediction(p):
        return "prediction"
    raise ReportError(
        f"{p} is neither a crop2seg patch store (a Zarr folder whose zarr.json says format "
        "'crop2seg-patch-store') nor a prediction folder (classes.tif, confidence.tif and summary.json written by "
        "crop2seg-predict); give one of those"
    )


def check_report(
    source: str | os.PathLike, out: str | os.PathLike, *, min_clear: float = DEFAULT_MIN_CLEAR,
    bands: Sequence[str] = DEFAULT_BANDS, top: int = DEFAULT_TOP,
) -> tuple[str, list[str]]:
    """Check a report's inputs before any work (and before a cluster starts).

    Returns the source's kind and the files of an earlier report in ``out``.

    Raises
    ------
    ReportError
        The source is neither a complete patch store nor a finished prediction folder, a band is
        not in the store, an option is out of range, or ``out`` must not be written.
    """
    kind = source_kind(source)
    if not 0.0 <= float(min_clear) <= 1.0:
        raise ReportError(f"--min-clear must be in [0, 1], got {min_clear}")
    if int(top) < 0:
        raise ReportError(f"--top must be >= 0, got {top}")
    previous = check_out_dir(out, source)
    if kind == "store":
        check_store(source, bands)
    else:
        read_prediction(source, load_parcels=False)
    return kind, previous


def make_report(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    min_clear: float = DEFAULT_MIN_CLEAR,
    bands: Sequence[str] = DEFAULT_BANDS,
    top: int = DEFAULT_TOP,
    client: Any = None,
    progress: Callable[[str], None] | None = None,
) -> ReportSummary:
    """Write the report of a patch store or a prediction folder into ``out``.

    Parameters
    ----------
    source
        A complete patch store or a ``crop2seg-predict`` output folder.
    out
        Report folder: absent, empty, or holding an earlier report (replaced); anything else is refused.
    min_clear
        Store reports: a (patch, date) enters the temporal profiles when its clear-sky fraction is
        at least this (the store has no per-pixel cloud mask).
    bands
        Store reports: bands profiled besides NDVI.
    top
        Prediction reports: disagreeing parcels shown with thumbnails, most confident first.
    client
        A ``distributed.Client`` for the store's reductions; None uses the default Dask scheduler.
    progress
        Callable receiving progress lines (default: logging).

    Returns
    -------
    ReportSummary
    """
    from .pages import prediction_page, store_page

    say = progress or log.info
    kind, previous = check_report(source, out, min_clear=min_clear, bands=bands, top=top)
    if kind == "store":
        stats = store_statistics(source, min_clear=min_clear, bands=bands, client=client, progress=say)
        page = store_page(stats)
        extra = {"patches": int(len(stats.patches)), "dates": int(len(stats.dates)), "min_clear": float(min_clear),
                 "features": list(stats.features)}
    else:
        pred = read_prediction(source)
        page = prediction_page(pred, top=int(top), progress=say)
        extra = {"parcels": None if pred.parcels is None else int(len(pred.parcels)), "top": int(top)}
    files = {"index.html": page.render().encode("utf-8"), **page.files}
    written = write_report_files(out, files, {"kind": kind, "source": str(Path(source).resolve()), **extra}, previous)
    say(f"report: wrote {written / 'index.html'}")
    return ReportSummary(out_dir=str(written), kind=kind, source=str(source), html=str(written / "index.html"),
                         files=sorted(files))
