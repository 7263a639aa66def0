"""The numbers of a prediction report, read from a ``crop2seg-predict`` output folder.

Everything comes from what predict wrote: ``summary.json`` (area per class, settings),
``classes.tif``'s colour table and class names, ``parcels.gpkg`` (one row per parcel) and, for
the thumbnails, small windows of ``classes.tif`` / ``confidence.tif`` around single parcels
(read through rasterio windows, decimated from the COG overviews for large parcels): no step
reads a whole raster.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from ..errors import ReportError
from ..manifest import read_manifest
from ..nomenclature import CLASS_NAMES

__all__ = [
    "PREDICTION_FILES",
    "Prediction",
    "is_prediction",
    "read_prediction",
    "agreement_table",
    "parcel_confusion_matrix",
    "top_disagreements",
    "parcel_window",
    "read_window",
]

#: Files a prediction folder must hold for a report.
PREDICTION_FILES = ("classes.tif", "confidence.tif", "summary.json")
#: Columns of predict's parcels.gpkg the report reads.
PARCEL_COLUMNS = {"parcel_id", "declared_class", "declared_name", "predicted_class", "predicted_name",
                  "predicted_share", "mean_confidence", "n_pixels", "agreement"}


@dataclass
class Prediction:
    """A prediction folder, checked and read (no pixel data)."""

    folder: Path
    summary: dict
    class_names: tuple[str, ...]
    colors: list[tuple[int, int, int]]
    area_ha: np.ndarray
    parcels: Any | None  # GeoDataFrame from parcels.gpkg
    shape: tuple[int, int]
    epsg: int | None
    resolution: float

    @property
    def classes_tif(self) -> Path:
        return self.folder / "classes.tif"

    @property
    def confidence_tif(self) -> Path:
        return self.folder / "confidence.tif"

    @property
    def quicklook(self) -> Path | None:
        p = self.folder / "quicklook.png"
        return p if p.is_file() else None


def is_prediction(path: str | Path) -> bool:
    """A folder holding ``classes.tif`` (the one file only predict writes there)."""
    p = Path(path)
    return p.is_dir() and (p / "classes.tif").is_file()


def read_prediction(folder: str | Path, load_parcels: bool = True) -> Prediction:
    """Check a prediction folder and read its small parts (the parcel table only with ``load_parcels``).

    Raises
    ------
    ReportError
        A file predict writes is missing or unreadable (e.g. the prediction did not finish).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is not None and not manifest.get("complete"):
        raise ReportError(
            f"{folder} is an incomplete prediction folder: its manifest.json says the run that writes it did not "
            "finish (interrupted or failed, or still running); run crop2seg-predict again"
        )
    missing = [n for n in PREDICTION_FILES if not (folder / n).is_file()]
    if missing:
        raise ReportError(
            f"{folder} is an incomplete prediction folder: it lacks {', '.join(missing)} (crop2seg-predict writes "
            "summary.json last, so the prediction did not finish); run crop2seg-predict again"
        )
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{folder / 'summary.json'} is not readable JSON ({e}); run crop2seg-predict again") from e
    try:
        with rasterio.open(folder / "classes.tif") as ds:
            tags = ds.tags(1)
            cmap = ds.colormap(1) if ds.colorinterp[0].name == "palette" else {}
            shape, epsg, res = (ds.height, ds.width), ds.crs.to_epsg() if ds.crs else None, float(ds.res[0])
        with rasterio.open(folder / "confidence.tif") as ds:
            if (ds.height, ds.width) != shape:
                raise ReportError(f"{folder}: confidence.tif is {ds.height} x {ds.width} px, classes.tif "
                                  f"{shape[0]} x {shape[1]}: not one prediction; run crop2seg-predict again")
    except rasterio.RasterioIOError as e:
        raise ReportError(f"{folder}: cannot read the prediction rasters ({e}); run crop2seg-predict again") from e
    names = tuple(json.loads(tags["class_names"])) if "class_names" in tags else tuple(summary.get("area_ha") or CLASS_NAMES)
    colors = [tuple(int(v) for v in cmap.get(k, (128, 128, 128, 255))[:3]) for k in range(len(names))]
    area = np.array([float((summary.get("area_ha") or {}).get(n, 0.0)) for n in names])
    parcels = None
    gpkg = folder / "parcels.gpkg"
    if gpkg.is_file():
        import geopandas as gpd
        import pyogrio

        try:
            fields = set(pyogrio.read_info(gpkg, layer="parcels")["fields"])
            if load_parcels:
                parcels = gpd.read_file(gpkg, layer="parcels")
        except Exception as e:  # noqa: BLE001 - pyogrio raises several types for a damaged file
            raise ReportError(f"{gpkg} is not a readable parcel table ({e}); run crop2seg-predict again") from e
        lacking = sorted(PARCEL_COLUMNS - fields)
        if lacking:
            raise ReportError(f"{gpkg} lacks column(s) {lacking}: not a crop2seg-predict parcel table")
    return Prediction(folder=folder, summary=summary, class_names=names, colors=colors, area_ha=area,
                      parcels=parcels, shape=shape, epsg=epsg, resolution=res)


# ----------------------------------------------------------------------------- parcel tables


def _flag(table: pd.DataFrame) -> pd.Series:
    """The agreement column as a nullable boolean (GeoPackage stores it as an integer)."""
    return table["agreement"].astype("boolean")


def agreement_table(table: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Per declared class: parcels, parcels compared (agreement not null), agreeing, share (and the
    shares of the homogenized and soft rules when the table has them)."""
    flag = _flag(table)
    rules = [c for c in ("homogenized_agreement", "soft_agreement") if c in table.columns]
    rows = []
    for k, name in enumerate(class_names):
        sel = table["declared_class"].to_numpy() == k
        f = flag[sel]
        compared = int(f.notna().sum())
        agree = int(f.fillna(False).sum())
        if sel.sum():
            row = {"declared_class": k, "declared_name": name, "n_parcels": int(sel.sum()),
                   "n_compared": compared, "n_agree": agree,
                   "agreement_share": agree / compared if compared else math.nan}
            for c in rules:  # the other rules of predict's parcel table, when it has them
                g = table[c].astype("boolean")[sel]
                row[c.replace("_agreement", "_share")] = float(g.fillna(False).sum() / g.notna().sum()) \
                    if g.notna().sum() else math.nan
            rows.append(row)
    return pd.DataFrame(rows, columns=["declared_class", "declared_name", "n_parcels", "n_compared", "n_agree",
                                       "agreement_share", *[c.replace("_agreement", "_share") for c in rules]])


def parcel_confusion_matrix(table: pd.DataFrame, n_classes: int) -> np.ndarray:
    """(declared, predicted) parcel counts over the compared parcels (agreement not null)."""
    sel = _flag(table).notna().to_numpy()
    d = table["declared_class"].to_numpy()[sel].astype(np.int64)
    p = pd.to_numeric(table["predicted_class"], errors="coerce").to_numpy()[sel].astype(np.int64)
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    ok = (d >= 0) & (d < n_classes) & (p >= 0) & (p < n_classes)
    np.add.at(m, (d[ok], p[ok]), 1)
    return m


def top_disagreements(table: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` disagreeing parcels an inspector checks first: the most confident ones.

    Uses predict's ``disagreement_rank`` column when the table has it; otherwise ranks the
    disagreeing parcels (agreement false) by mean confidence, then predicted share, descending
    (ties: smaller parcel id first).
    """
    flag = _flag(table)
    dis = table[flag.fillna(True).to_numpy() == False]  # noqa: E712 - nullable: only explicit False
    if "disagreement_rank" in dis.columns and dis["disagreement_rank"].notna().all():
        return dis.sort_values("disagreement_rank").head(n)
    keys = [c for c in ("mean_confidence", "predicted_share") if c in dis.columns]
    return dis.sort_values(keys + ["parcel_id"], ascending=[False] * len(keys) + [True]).head(n)


# ----------------------------------------------------------------------------- windows


def parcel_window(bounds: Sequence[float], transform: Any, shape: tuple[int, int], margin: float = 0.25,
                  min_px: int = 24) -> Window:
    """Pixel window around ``bounds`` (minx, miny, maxx, maxy) with a margin, clipped to the raster.

    The window is square-ish: at least ``min_px`` on a side and ``margin`` of the parcel's larger
    side added on each side.
    """
    inv = ~transform
    minx, miny, maxx, maxy = bounds
    c0, r0 = inv * (minx, maxy)
    c1, r1 = inv * (maxx, miny)
    c0, c1 = sorted((c0, c1))
    r0, r1 = sorted((r0, r1))
    side = max(c1 - c0, r1 - r0, float(min_px))
    pad = margin * side
    cx, cy = (c0 + c1) / 2, (r0 + r1) / 2
    half = side / 2 + pad
    col0 = max(0, int(math.floor(cx - half)))
    row0 = max(0, int(math.floor(cy - half)))
    col1 = min(shape[1], int(math.ceil(cx + half)))
    row1 = min(shape[0], int(math.ceil(cy + half)))
    if col1 <= col0 or row1 <= row0:
        raise ReportError(f"parcel bounds {tuple(bounds)} lie outside the prediction raster")
    return Window(col0, row0, col1 - col0, row1 - row0)


def read_window(path: str | Path, window: Window, max_side: int = 256) -> np.ndarray:
    """Band 1 of ``path`` in ``window``, decimated (nearest, from the overviews) to ``max_side`` px at most."""
    f = max(1, int(math.ceil(max(window.width, window.height) / max_side)))
    out_shape = (max(1, int(window.height) // f), max(1, int(window.width) // f))
    with rasterio.open(path) as ds:
        return ds.read(1, window=window, out_shape=out_shape, resampling=Resampling.nearest)
