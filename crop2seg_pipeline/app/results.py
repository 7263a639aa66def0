"""A prediction folder as the app shows it: class and confidence images, legend, parcels.

Everything is read from the files ``predict()`` wrote (``classes.tif`` with its colour table and
class names, ``confidence.tif``, ``summary.json``, ``parcels.gpkg``), so the map shows exactly
what a user downloads. Rasters are read decimated from the COG overviews (at most ``max_side``
px), never whole at full resolution.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling

__all__ = ["Result", "LegendEntry", "load_result", "class_rgba", "confidence_rgba", "AGREEMENT_COLORS",
           "disagreeing", "PARCEL_BASE_COLUMNS"]

#: Parcel fill colours by agreement of declared and predicted class.
AGREEMENT_COLORS = {"agree": "#1a9850", "disagree": "#d73027", "n/a": "#9e9e9e"}
#: The columns of predict()'s parcel table; any other column (e.g. homogenized classes, a rank)
#: is shown as it comes.
PARCEL_BASE_COLUMNS = ("parcel_id", "source_id", "crop_code", "declared_class", "declared_name", "predicted_class",
                       "predicted_name", "predicted_share", "mean_confidence", "n_pixels", "agreement")


@dataclass(frozen=True)
class LegendEntry:
    class_id: int
    name: str
    rgb: tuple[int, int, int]
    area_ha: float

    @property
    def hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.rgb)


@dataclass
class Result:
    """What the app draws for one prediction folder."""

    folder: Path
    bounds: tuple[float, float, float, float]  # of the rasters, in their CRS
    epsg: int
    classes: np.ndarray  # (y, x) uint8, decimated, rows from the north
    class_image: np.ndarray  # (y, x, 4) uint8 RGBA, background transparent
    confidence_image: np.ndarray  # (y, x, 4) uint8 RGBA
    legend: list[LegendEntry]
    summary: dict
    parcels: Any = None  # GeoDataFrame or None
    files: list[Path] = field(default_factory=list)
    decimation: int = 1


def class_rgba(classes: np.ndarray, colormap: dict[int, Sequence[int]], transparent: Sequence[int] = (0,)) -> np.ndarray:
    """Class ids -> RGBA through a colour table (GDAL's ``{id: (r, g, b, a)}``); ``transparent``
    classes (default: Background) get alpha 0 so the true-colour image shows through."""
    lut = np.zeros((256, 4), np.uint8)
    for k, c in colormap.items():
        lut[int(k), : len(c)] = c[:4] if len(c) >= 4 else (*c[:3], 255)
        if len(c) < 4:
            lut[int(k), 3] = 255
    for k in transparent:
        lut[int(k), 3] = 0
    return lut[classes]


def confidence_rgba(conf: np.ndarray) -> np.ndarray:
    """Confidence (uint8, probability x 255) -> RGBA: dark red (unsure) to white (sure)."""
    t = conf.astype(np.float32) / 255.0
    out = np.empty(conf.shape + (4,), np.uint8)
    out[..., 0] = np.round(120 + 135 * t)
    out[..., 1] = np.round(255 * t**1.5)
    out[..., 2] = np.round(255 * t**3)
    out[..., 3] = 255
    return out


def load_result(folder: str | Path, max_side: int = 1024) -> Result:
    """Read a prediction folder written by :func:`crop2seg_pipeline.predict.predict`."""
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    with rasterio.open(folder / "classes.tif") as ds:
        f = max(1, math.ceil(max(ds.width, ds.height) / max_side))
        classes = ds.read(1, out_shape=(max(1, ds.height // f), max(1, ds.width // f)), resampling=Resampling.nearest)
        colormap = ds.colormap(1)
        names = json.loads(ds.tags(1).get("class_names", "[]")) or [f"class {k}" for k in sorted(colormap)]
        bounds = tuple(ds.bounds)
        epsg = ds.crs.to_epsg()
    with rasterio.open(folder / "confidence.tif") as ds:
        conf = ds.read(1, out_shape=classes.shape, resampling=Resampling.average)
    area = summary.get("area_ha", {})
    legend = [LegendEntry(k, n, tuple(int(v) for v in colormap.get(k, (0, 0, 0))[:3]), float(area.get(n, 0.0)))
              for k, n in enumerate(names)]
    parcels = None
    if (folder / "parcels.gpkg").exists():
        import geopandas as gpd

        parcels = gpd.read_file(folder / "parcels.gpkg", layer="parcels")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name != "crop2seg-app.json")
    return Result(folder, bounds, int(epsg), classes, class_rgba(classes, colormap), confidence_rgba(conf), legend,
                  summary, parcels, files, f)


def agreement_label(v: Any) -> str:
    """``agree``, ``disagree`` or ``n/a`` for an agreement value as read from the GeoPackage."""
    import pandas as pd

    if v is None:
        return "n/a"
    try:
        if pd.isna(v):
            return "n/a"
    except (TypeError, ValueError):
        pass
    return "agree" if bool(v) else "disagree"


def disagreeing(parcels: Any) -> Any:
    """The parcels whose predicted class differs from the declared one, the ones to check first on top:
    by a rank column when the table has one (ascending), else by mean confidence (descending)."""
    import pandas as pd

    if parcels is None or len(parcels) == 0:
        return parcels
    mask = parcels["agreement"].map(agreement_label) == "disagree"
    out = pd.DataFrame(parcels.loc[mask].drop(columns="geometry"))
    rank = [c for c in out.columns if "rank" in c.lower()]
    if rank:
        return out.sort_values(rank[0], ascending=True, kind="stable")
    return out.sort_values("mean_confidence", ascending=False, kind="stable")
