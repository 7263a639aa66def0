"""Predict's outputs beyond the class and confidence maps: the probability COG, the polygons of
the class map, and the parcel decision rules.

Worker side, :func:`~crop2seg_pipeline.graph.extras.chunk_extras` runs inside each chunk's
finishing task (it sees that chunk's probabilities, classes and parcel ids, nothing else):
probabilities quantized to bytes for ``probabilities.tif``, the chunk's polygons (final ones, and
the *open* pieces cut by chunk borders), per-parcel probability sums for the soft parcel rule.

Client side, :class:`PredictExtras` writes each chunk's part as it arrives: probability bands
into a tiled GeoTIFF finished as a COG (like ``classes.tif``), final polygons appended to a
temporary GeoPackage. After the last chunk, the open pieces are merged per class in one task
per class (:func:`~crop2seg_pipeline.kernels.polygons.merge_pieces`), appended, and
:meth:`PredictExtras.commit` renames both into place through the prediction's
:class:`~crop2seg_pipeline.manifest.OutputFolder` (temporary names in the folder, the manifest); the parcel table gets the homogenized and soft classes and the
rank of the disagreements (:func:`parcel_rule_columns`). No step holds a raster of the tile.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .grid import Grid
from .manifest import OutputFolder
from .kernels.parcel_rules import disagreement_rank, homogenized_classes, soft_classes
from .graph.extras import DEFAULT_MIN_POLYGON_AREA, ChunkExtras, merge_tasks
from .nomenclature import BACKGROUND

log = logging.getLogger(__name__)

__all__ = ["PredictExtras", "parcel_rule_columns", "DEFAULT_MIN_POLYGON_AREA", "POLYGON_COLUMNS",
           "PARCEL_RULE_COLUMNS"]
POLYGON_COLUMNS = ("polygon_id", "class_id", "class_name", "area_m2", "n_pixels", "mean_confidence")
PARCEL_RULE_COLUMNS = ("homogenized_class", "homogenized_name", "homogenized_agreement", "soft_class", "soft_name",
                       "soft_probability", "soft_top2_class", "soft_top2_name", "soft_agreement", "disagreement_rank")


# ----------------------------------------------------------------------------- client side


class PredictExtras:
    """Writes the extra outputs of a prediction as chunks arrive (see the module docstring).

    Use as a context manager around the run (it finishes ``probabilities.tif`` on a clean exit and
    removes its partial files on an error), then call :meth:`finish_polygons`.
    """

    def __init__(self, folder: OutputFolder, grid: Grid, class_names: Sequence[str], *, probabilities: bool,
                 polygons: bool, parcels: bool, min_polygon_area: float = DEFAULT_MIN_POLYGON_AREA):
        from .outputs import TiledRaster

        self.folder = folder
        self.out = folder.folder
        self.grid = grid
        self.class_names = list(class_names)
        self.options = ChunkExtras(
            probability_bytes=probabilities, polygons=polygons, parcel_probabilities=parcels,
            tile_height=grid.height, tile_width=grid.width, transform=tuple(grid.transform)[:6],
            min_polygon_area=float(min_polygon_area),
        )
        # written under the folder's temporary names, renamed into place by commit()
        self._prob = TiledRaster(folder.temp("probabilities.tif"), grid, kind="probabilities",
                                 class_names=class_names) if probabilities else None
        self.polygons_path = self.out / "polygons.gpkg"
        self._poly_tmp = folder.temp("polygons.gpkg") if polygons else self.out / ".polygons.unused.gpkg"
        self._pieces: dict[int, list[dict]] = defaultdict(list)
        self._parcel_prob: list[tuple[np.ndarray, np.ndarray]] = []
        self.n_polygons = 0
        self.files: dict[str, str] = {}

    @property
    def active(self) -> bool:
        o = self.options
        return o.probability_bytes or o.polygons or o.parcel_probabilities

    def __enter__(self) -> "PredictExtras":
        if self._prob is not None:
            self._prob.__enter__()
        if self.options.polygons:
            self._poly_tmp.unlink(missing_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._prob is not None:
                self._prob.__exit__(exc_type, exc, tb)
        finally:
            if exc_type is not None:
                self._poly_tmp.unlink(missing_ok=True)

    def on_result(self, r: dict) -> None:
        """Take one chunk's extras (as :func:`chunk_extras` returned them inside ``r``)."""
        if "prob_u8" in r:
            self._prob.write(r["prob_u8"], r["y0"], r["x0"])
        if "polygons" in r:
            self._append(r["polygons"])
            pieces = r["pieces"]
            for k in np.unique(pieces["class_id"]):
                sel = np.flatnonzero(pieces["class_id"] == k)
                self._pieces[int(k)].append({**{f: pieces[f][sel] for f in ("polygon_id", "class_id", "n_pixels",
                                                                             "conf_sum")},
                                             "wkb": [pieces["wkb"][i] for i in sel]})
        if "parcel_prob" in r:
            self._parcel_prob.append(r["parcel_prob"])

    def _append(self, rows: dict) -> None:
        import geopandas as gpd
        import shapely

        if not len(rows["wkb"]):
            return
        n = rows["n_pixels"]
        names = np.asarray(self.class_names, dtype=object)
        gdf = gpd.GeoDataFrame({
            "polygon_id": rows["polygon_id"].astype(np.int64), "class_id": rows["class_id"].astype(np.int64),
            "class_name": names[rows["class_id"]], "area_m2": n * self.options.pixel_area,
            "n_pixels": n.astype(np.int64), "mean_confidence": rows["conf_sum"] / np.maximum(n, 1),
        }, geometry=shapely.from_wkb(rows["wkb"]), crs=self.grid.crs)
        gdf.to_file(self._poly_tmp, layer="polygons", driver="GPKG", mode="a" if self._poly_tmp.exists() else "w")
        self.n_polygons += len(gdf)

    def finish_polygons(self, run: Callable[[list, Callable[[Any], None]], None],
                        say: Callable[[str], None] | None = None) -> Path | None:
        """Merge the open pieces (one task per class, through ``run(tasks, on_result)``) and move
        ``polygons.gpkg`` into place."""
        if not self.options.polygons:
            return None
        say = say or log.info
        tasks = merge_tasks(self._pieces, self.options)
        if tasks:
            say(f"polygons: merging the pieces cut by chunk borders ({len(tasks)} classes)")
            run(tasks, self._append)
        self._pieces.clear()
        if not self._poly_tmp.exists():  # no polygon at all: an empty layer with the schema
            self._write_empty()
        say(f"polygons: {self.n_polygons} for {self.polygons_path}")
        return self.polygons_path

    def commit(self) -> None:
        """Rename the finished outputs into place (recorded in the folder's manifest)."""
        if self._prob is not None:
            self.folder.commit("probabilities.tif", self._prob.path)
            self.files["probabilities_cog"] = str(self.out / "probabilities.tif")
        if self.options.polygons:
            self.folder.commit("polygons.gpkg", self._poly_tmp)
            self.files["polygons"] = str(self.polygons_path)

    def _write_empty(self) -> None:
        import pyogrio

        cols = {"polygon_id": np.empty(0, np.int64), "class_id": np.empty(0, np.int64),
                "class_name": np.empty(0, object), "area_m2": np.empty(0, float), "n_pixels": np.empty(0, np.int64),
                "mean_confidence": np.empty(0, float)}
        pyogrio.write(self._poly_tmp, np.empty(0, dtype=object), list(cols.values()), fields=list(cols),
                      layer="polygons", driver="GPKG", geometry_type="Polygon", crs=self.grid.crs)

    def parcel_columns(self, table: Any, hists: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                       ignore_index: int | None) -> Any:
        """``table`` (from :func:`~crop2seg_pipeline.outputs.parcel_table`) with the rule columns."""
        return parcel_rule_columns(table, hists, self._parcel_prob, self.class_names, ignore_index=ignore_index)


# ----------------------------------------------------------------------------- parcel rules


def _per_parcel(pid: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Rows of ``values`` (keyed by parcel id ``keys``, summed over repeats) in the order of ``pid``."""
    out = np.zeros((len(pid), values.shape[1]), dtype=values.dtype)
    if keys.size:
        order = np.argsort(pid, kind="stable")
        pos = np.searchsorted(pid[order], keys)
        pos = np.clip(pos, 0, len(pid) - 1)
        hit = pid[order][pos] == keys
        np.add.at(out, order[pos[hit]], values[hit])
    return out


def parcel_rule_columns(
    table: Any, hists: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    prob_sums: Sequence[tuple[np.ndarray, np.ndarray]], class_names: Sequence[str], ignore_index: int | None = 14,
    background: int = BACKGROUND,
) -> Any:
    """Add the homogenized and soft classes and the disagreement rank to a parcel table.

    Columns (see :mod:`crop2seg_pipeline.kernels.parcel_rules` for the rules): ``homogenized_class``
    / ``_name`` / ``_agreement`` (Crop2Seg's homogenization), ``soft_class`` / ``_name`` /
    ``_probability`` / ``soft_top2_class`` / ``_name`` / ``soft_agreement`` (mean probabilities,
    top-2 fallback), ``disagreement_rank`` (1 = the most confident parcel whose area majority
    disagrees with the declaration; null for the others). Classes are null and agreements are null
    where the parcel has no pixel; agreements are also null for ``ignore_index`` declarations.
    """
    K = len(class_names)
    out = table.copy()
    pid = out["parcel_id"].to_numpy().astype(np.int64)
    if hists:
        hp = np.concatenate([h[0] for h in hists]).astype(np.int64)
        hc = np.concatenate([h[1] for h in hists]).astype(np.int64)
        hn = np.concatenate([h[2] for h in hists]).astype(np.int64)
        onehot = np.zeros((hp.size, K), dtype=np.int64)
        onehot[np.arange(hp.size), hc] = hn
        counts = _per_parcel(pid, hp, onehot)
    else:
        counts = np.zeros((len(pid), K), dtype=np.int64)
    if prob_sums:
        sums = _per_parcel(pid, np.concatenate([p[0] for p in prob_sums]).astype(np.int64),
                           np.concatenate([p[1] for p in prob_sums]).astype(np.float64))
    else:
        sums = np.zeros((len(pid), K), dtype=np.float64)
    n = counts.sum(axis=1)
    names = np.asarray(class_names, dtype=object)
    declared = out["declared_class"].to_numpy().astype(np.int64)
    no_flag = (n == 0) | (declared == (ignore_index if ignore_index is not None else -1))

    def cls_col(v: np.ndarray) -> tuple[Any, list]:
        a = pd.array(v, dtype="Int64")
        a[v < 0] = pd.NA
        return a, [names[k] if k >= 0 else None for k in v]

    def agree(v: np.ndarray):
        a = pd.array(declared == v, dtype="boolean")
        a[no_flag] = pd.NA
        return a

    homo = homogenized_classes(counts, background=background)
    out["homogenized_class"], out["homogenized_name"] = cls_col(homo)
    out["homogenized_agreement"] = agree(homo)
    soft, top2, prob = soft_classes(sums, n, background=background)
    if not prob_sums:  # no probability sums were computed (no parcels in any chunk): no soft label
        soft, top2, prob = np.full(len(pid), -1), np.full(len(pid), -1), np.full(len(pid), np.nan)
    out["soft_class"], out["soft_name"] = cls_col(soft)
    out["soft_probability"] = prob
    out["soft_top2_class"], out["soft_top2_name"] = cls_col(top2)
    out["soft_agreement"] = agree(soft)
    flag = out["agreement"].astype("boolean")
    disagree = (flag == False).fillna(False).to_numpy(dtype=bool)  # noqa: E712 - nullable
    rank = disagreement_rank(disagree, out["mean_confidence"].to_numpy(), out["predicted_share"].to_numpy(), pid)
    r = pd.array(rank, dtype="Int64")
    r[rank == 0] = pd.NA
    out["disagreement_rank"] = r
    if "geometry" in out.columns:  # geometry stays the last column
        out = out[[c for c in out.columns if c != "geometry"] + ["geometry"]]
    return out
