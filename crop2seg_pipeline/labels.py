"""LPIS parcels -> validated, reprojected, mapped parcels -> labels rasterized per chunk.

Reads a parcel file (any OGR vector format, or GeoParquet), checks and repairs it, maps crop
codes to the class nomenclature with a :class:`CropMapping` table, and builds lazy
``label``/``parcel_id`` rasters on a :class:`~crop2seg_pipeline.grid.Grid`.

Chunks are rasterized independently: each dask task carries only the parcels that intersect
its chunk (WKB bytes and id arrays), never the whole parcel table. Overlapping parcels follow
the rule of :mod:`crop2seg_pipeline.kernels.rasterize` (ascending ``parcel_id``, later wins), so
the result does not depend on the chunking.
"""

from __future__ import annotations

import csv
import importlib.resources
import json
import logging
import operator
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr
from affine import Affine
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from pyproj import CRS, Transformer

from .errors import CRSError, ParcelError, ReadError
from .grid import Grid
from .kernels.rasterize import rasterize_parcels
from .nomenclature import CLASS_NAMES, NOT_CLASSIFIED

logger = logging.getLogger(__name__)

__all__ = [
    "CropMapping",
    "ParcelReport",
    "read_parcels",
    "rasterize_labels",
    "rasterize_parcels",
]

_INT32_MAX = int(np.iinfo(np.int32).max)
#: Largest class id a mapping may assign (14, Not classified, is for unknown codes).
_MAX_MAPPED_CLASS = NOT_CLASSIFIED - 1
#: Key under which parcels without a crop code are reported in ``unmapped_codes``.
MISSING_CODE = "<missing>"
_PARQUET_SUFFIXES = (".parquet", ".geoparquet", ".pq")


# --------------------------------------------------------------------------------------------
# Crop mapping
# --------------------------------------------------------------------------------------------
def _normalize_code(value: Any) -> str | None:
    """One crop code as a stripped string; integral numbers lose their ``.0``; None if missing."""
    if value is None:
        return None
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return None
        if float(value).is_integer():
            return str(int(value))
    elif isinstance(value, (bool, np.bool_)):
        return str(value)
    elif isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    text = str(value).strip()
    return text or None


def _normalize_codes(codes: pd.Series) -> pd.Series:
    """Crop codes as stripped strings (object dtype), None where missing."""
    return pd.Series(
        [_normalize_code(v) for v in codes.to_numpy(dtype=object)], index=codes.index, dtype=object
    )


@dataclass(frozen=True)
class CropMapping:
    """Crop code -> class id table (data, not code).

    Parameters
    ----------
    codes : dict of str to int
        Crop code (stripped string) -> class id in 0..13.
    names : dict of str to str
        Crop code -> crop name, for reports; may be empty.
    source : str
        Where the table came from (a path, or ``"<memory>"``).
    """

    codes: dict[str, int]
    names: dict[str, str] = field(default_factory=dict)
    source: str = "<memory>"

    @classmethod
    def read(cls, path: str | os.PathLike | None = None) -> "CropMapping":
        """Read a mapping CSV with columns ``crop_code``, ``class_id`` (``crop_name`` optional).

        Parameters
        ----------
        path : str or path-like, optional
            CSV file (UTF-8, comma separated). None reads the table shipped with the package,
            ``crop2seg_pipeline/data/crop_mapping_cz.csv``.

        Returns
        -------
        CropMapping

        Raises
        ------
        ReadError
            If the file cannot be read.
        ParcelError
            If a required column is missing, a class id is not an integer in 0..13, a code is
            empty, or a code is listed twice with different class ids.
        """
        if path is None:
            resource = importlib.resources.files("crop2seg_pipeline").joinpath(
                "data/crop_mapping_cz.csv"
            )
            source = str(resource)
            try:
                text = resource.read_text(encoding="utf-8-sig")
            except OSError as exc:  # pragma: no cover - broken installation
                raise ReadError(f"cannot read the shipped crop mapping {source}: {exc}") from exc
        else:
            source = os.fspath(path)
            try:
                text = Path(source).read_text(encoding="utf-8-sig")
            except FileNotFoundError as exc:
                raise ReadError(f"crop mapping file not found: {source}") from exc
            except (OSError, UnicodeDecodeError) as exc:
                raise ReadError(
                    f"cannot read crop mapping {source}: {exc}. It must be a UTF-8 CSV file."
                ) from exc
        return cls._parse(text, source)

    @classmethod
    def _parse(cls, text: str, source: str) -> "CropMapping":
        reader = csv.DictReader(text.splitlines())
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("crop_code", "class_id") if c not in columns]
        if missing:
            raise ParcelError(
                f"crop mapping {source} lacks column(s) {missing}; it has {columns}. "
                "A mapping is a CSV with columns crop_code,class_id (crop_name optional)."
            )
        codes: dict[str, int] = {}
        names: dict[str, str] = {}
        first_line: dict[str, int] = {}
        problems: list[str] = []
        for line, row in enumerate(reader, start=2):  # line 1 is the header
            row = {(k or "").strip(): (v or "") for k, v in row.items() if k is not None}
            code = row.get("crop_code", "").strip()
            raw_id = row.get("class_id", "").strip()
            if not code and not raw_id and not row.get("crop_name", "").strip():
                continue  # blank line
            if not code:
                problems.append(f"line {line}: empty crop_code")
                continue
            try:
                class_id = int(raw_id)
            except ValueError:
                problems.append(f"line {line} ({code}): class_id {raw_id!r} is not an integer")
                continue
            if not 0 <= class_id <= _MAX_MAPPED_CLASS:
                problems.append(
                    f"line {line} ({code}): class_id {class_id} is not in 0..{_MAX_MAPPED_CLASS}"
                )
                continue
            if code in codes and codes[code] != class_id:
                problems.append(
                    f"lines {first_line[code]} and {line}: crop_code {code!r} maps to both "
                    f"{codes[code]} and {class_id}"
                )
                continue
            codes.setdefault(code, class_id)
            first_line.setdefault(code, line)
            name = row.get("crop_name", "").strip()
            if name:
                names.setdefault(code, name)
        if problems:
            shown = "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else "")
            raise ParcelError(
                f"invalid crop mapping {source}: {shown}. Class ids are integers 0..13 "
                f"({', '.join(f'{i}={n}' for i, n in enumerate(CLASS_NAMES[:-1]))}); "
                "unknown crops become Not classified (14) automatically."
            )
        if not codes:
            raise ParcelError(f"crop mapping {source} has no rows")
        logger.debug("read %d crop codes from %s", len(codes), source)
        return cls(codes=codes, names=names, source=source)

    def map(self, codes: pd.Series) -> pd.Series:
        """Class ids of crop codes.

        Parameters
        ----------
        codes : pandas.Series
            Crop codes of any dtype; compared as stripped strings, so the integer 123 (or
            123.0) matches a ``"123"`` row.

        Returns
        -------
        pandas.Series
            uint8 class ids with the index of ``codes``; unknown or missing codes are
            ``NOT_CLASSIFIED`` (14).
        """
        codes = codes if isinstance(codes, pd.Series) else pd.Series(codes)
        normalized = _normalize_codes(codes)
        mapped = normalized.map(self.codes)
        return mapped.fillna(NOT_CLASSIFIED).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Reading parcels
# --------------------------------------------------------------------------------------------
@dataclass
class ParcelReport:
    """What happened to the parcels, for the build summary.

    Parameters
    ----------
    n_read : int
        Features read from the file (after the reader's bbox pre-filter, if any).
    n_repaired : int
        Invalid geometries repaired with ``shapely.make_valid``.
    n_dropped_empty : int
        Features dropped because their geometry was missing or empty (also after repair).
    n_kept : int
        Parcels returned.
    n_outside : int
        Parcels read but not intersecting ``bbox``.
    unmapped_codes : dict of str to int
        Crop code -> number of kept parcels whose code is not in the mapping
        (``"<missing>"`` for parcels without a code).
    class_counts : dict of int to int
        Class id -> number of kept parcels.
    n_dropped_non_polygon : int
        Features dropped because their geometry is not polygonal (points, lines).
    n_duplicate_ids : int
        Kept parcels whose id is shared with another kept parcel.
    ids_renumbered : bool
        True if the file's ids were unusable and ids 1..n were assigned (originals kept in
        the ``source_id`` column).
    """

    n_read: int
    n_repaired: int
    n_dropped_empty: int
    n_kept: int
    n_outside: int
    unmapped_codes: dict[str, int]
    class_counts: dict[int, int]
    n_dropped_non_polygon: int = 0
    n_duplicate_ids: int = 0
    ids_renumbered: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (class ids become strings under ``json.dumps``)."""
        out = asdict(self)
        out["unmapped_codes"] = {str(k): int(v) for k, v in self.unmapped_codes.items()}
        out["class_counts"] = {int(k): int(v) for k, v in self.class_counts.items()}
        return out


@dataclass(frozen=True)
class _SourceInfo:
    """What we learn about a parcel file before reading its features."""

    kind: str  # "ogr" or "parquet"
    crs: CRS | None
    n_features: int  # -1 when unknown
    columns: tuple[str, ...]
    bbox_filter: bool  # whether the reader can pre-filter by bbox


def _is_remote(path: str) -> bool:
    return path.startswith("/vsi") or "://" in path


def _inspect_source(path: str, layer: str | int | None) -> _SourceInfo:
    """Open the file's metadata only; raise ReadError if it is not a readable vector file."""
    if not _is_remote(path) and not os.path.exists(path):
        raise ReadError(f"parcel file not found: {path}")
    if path.lower().endswith(_PARQUET_SUFFIXES):
        import pyarrow.parquet as pq

        try:
            pfile = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise ReadError(
                f"cannot read parcel file {path} as GeoParquet: {exc}. Check the file is "
                "complete and a valid (Geo)Parquet file."
            ) from exc
        meta = pfile.schema_arrow.metadata or {}
        if b"geo" not in meta:
            raise ReadError(
                f"{path} is a Parquet file without GeoParquet 'geo' metadata; write it with "
                "GeoDataFrame.to_parquet or convert it with ogr2ogr -f Parquet."
            )
        geo = json.loads(meta[b"geo"])
        primary = geo.get("primary_column", "geometry")
        col_meta = geo.get("columns", {}).get(primary, {})
        if "crs" not in col_meta:
            crs: CRS | None = CRS.from_user_input("OGC:CRS84")  # GeoParquet default
        elif col_meta["crs"] is None:
            crs = None
        else:
            crs = CRS.from_user_input(col_meta["crs"])
        columns = tuple(n for n in pfile.schema_arrow.names if n != primary)
        return _SourceInfo(
            "parquet", crs, pfile.metadata.num_rows, columns, "covering" in col_meta
        )

    import pyogrio

    try:
        info = pyogrio.read_info(path, layer=layer)
    except Exception as exc:  # pyogrio DataSourceError / DataLayerError / GDAL errors
        hint = (
            f" Layers in the file: {_list_layers(path)}; choose one with --layer."
            if layer is not None
            else ""
        )
        raise ReadError(
            f"cannot read parcel file {path}: {exc}.{hint} It must be a vector file GDAL/OGR "
            "can open (GPKG, SHP, GeoJSON, FlatGeobuf, ...) or GeoParquet (.parquet)."
        ) from exc
    crs = CRS.from_user_input(info["crs"]) if info.get("crs") else None
    return _SourceInfo(
        "ogr", crs, int(info.get("features", -1)), tuple(info.get("fields", ())), True
    )


def _list_layers(path: str) -> list[str]:
    import pyogrio

    try:
        return [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception:
        return []


def _resolve_column(name: str, columns: tuple[str, ...], path: str, option: str, what: str) -> str:
    """Find ``name`` among ``columns``: exactly, case-insensitively, or as a 10-character
    Shapefile (DBF) truncation; raise ParcelError listing the columns otherwise."""
    if name in columns:
        return name
    lowered = {c.lower(): c for c in columns}
    if name.lower() in lowered:
        found = lowered[name.lower()]
    elif len(name) > 10 and name[:10].lower() in lowered:
        found = lowered[name[:10].lower()]  # DBF field names are cut to 10 characters
    else:
        raise ParcelError(
            f"parcel file {path} has no {what} column {name!r}; available columns: "
            f"{list(columns)}. Set the right one with {option}."
        )
    logger.info("using column %r of %s as the %s column %r", found, path, what, name)
    return found


def _read_features(
    path: str,
    info: _SourceInfo,
    layer: str | int | None,
    columns: list[str],
    bbox: tuple[float, float, float, float] | None,
) -> gpd.GeoDataFrame:
    """Read the features (only ``columns`` + geometry), optionally pre-filtered by bbox."""
    try:
        if info.kind == "parquet":
            kwargs: dict[str, Any] = {"columns": columns + [_parquet_geometry_column(path)]}
            if bbox is not None and info.bbox_filter:
                kwargs["bbox"] = bbox
            gdf = gpd.read_parquet(path, **kwargs)
        else:
            gdf = gpd.read_file(path, layer=layer, columns=columns, bbox=bbox, engine="pyogrio")
    except Exception as exc:
        raise ReadError(f"cannot read the features of parcel file {path}: {exc}") from exc
    if gdf.crs is None and info.crs is not None:
        gdf = gdf.set_crs(info.crs)
    return gdf


def _parquet_geometry_column(path: str) -> str:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).schema_arrow.metadata
    return json.loads(meta[b"geo"]).get("primary_column", "geometry")


def _file_extent(path: str, info: _SourceInfo, layer: str | int | None) -> tuple[float, ...]:
    """(minx, miny, maxx, maxy) of all features, in the file's CRS (NaNs if unknown)."""
    try:
        if info.kind == "parquet":
            return tuple(gpd.read_parquet(path).total_bounds)
        import pyogrio

        bounds = pyogrio.read_info(path, layer=layer, force_total_bounds=True).get(
            "total_bounds"
        )
        return tuple(float(b) for b in bounds) if bounds is not None else (np.nan,) * 4
    except Exception:  # only used to word an error message
        return (np.nan,) * 4


def _transform_bounds(bounds, src: CRS, dst: CRS) -> tuple[float, float, float, float]:
    if src == dst or not np.all(np.isfinite(bounds)):
        return tuple(float(b) for b in bounds)
    transformer = Transformer.from_crs(src, dst, always_xy=True)
    return tuple(float(b) for b in transformer.transform_bounds(*bounds, densify_pts=21))


def _fmt_bounds(bounds) -> str:
    return "(" + ", ".join(f"{b:.1f}" for b in bounds) + ")"


def _polygonal(geoms: np.ndarray) -> np.ndarray:
    """Keep only the polygonal parts of each geometry (empty polygon if none)."""
    out = geoms.copy()
    types = shapely.get_type_id(geoms)
    # 3 Polygon, 6 MultiPolygon, 7 GeometryCollection
    for i in np.flatnonzero(types == 7):
        parts = [
            p
            for p in shapely.get_parts(shapely.get_parts(geoms[i]))
            if shapely.get_type_id(p) == 3
        ]
        out[i] = shapely.multipolygons(parts) if parts else shapely.Polygon()
    for i in np.flatnonzero((types != 3) & (types != 6) & (types != 7)):
        out[i] = shapely.Polygon()
    # unwrap single-part multipolygons made above
    single = (shapely.get_type_id(out) == 6) & (shapely.get_num_geometries(out) == 1)
    out[single] = shapely.get_geometry(out[single], 0)
    return out


def read_parcels(
    path: str | os.PathLike,
    *,
    id_column: str | None = "ID_DPB",
    crop_column: str = "KOD_PLODINY",
    layer: str | int | None = None,
    mapping: CropMapping | None = None,
    target_crs: Any = None,
    bbox: tuple[float, float, float, float] | None = None,
) -> tuple[gpd.GeoDataFrame, ParcelReport]:
    """Read, validate, repair, reproject and map LPIS parcels.

    Parameters
    ----------
    path : str or path-like
        Any vector format OGR reads (GPKG, SHP, GeoJSON, FlatGeobuf, ...) or GeoParquet
        (``.parquet``).
    id_column : str or None, default "ID_DPB"
        Column with the parcel id. Ids must be integers in 1..2**31-1; otherwise (or with
        None) parcels are numbered 1..n in file order and the original ids, if any, are kept
        in ``source_id``. Duplicate ids are logged as a warning and kept.
    crop_column : str, default "KOD_PLODINY"
        Column with the crop code. Matched exactly, then case-insensitively, then as its
        10-character Shapefile truncation (``KOD_PLODIN``).
    layer : str or int, optional
        Layer of a multi-layer file (GPKG); default the first one.
    mapping : CropMapping, optional
        Crop code -> class id table; default the shipped Czech table.
    target_crs : pyproj-compatible CRS, optional
        CRS of the output (e.g. 32633 or ``"EPSG:32633"``); default the file's CRS.
    bbox : tuple of float, optional
        (minx, miny, maxx, maxy) in ``target_crs`` (the file's CRS if ``target_crs`` is
        None). Only parcels intersecting it are kept; the reader pre-filters with it.

    Returns
    -------
    parcels : geopandas.GeoDataFrame
        Columns ``parcel_id`` (int32 > 0), ``crop_code`` (str, "" if missing), ``class_id``
        (uint8), ``geometry`` (valid (Multi)Polygons in ``target_crs``), plus ``source_id``
        when ids were renumbered.
    report : ParcelReport
        Counts of what was read, repaired, dropped and mapped.

    Raises
    ------
    ReadError
        If the file is missing or unreadable.
    CRSError
        If the file has no CRS or ``target_crs`` is not a CRS.
    ParcelError
        If the file is empty, lacks the id/crop column, has no polygon, or no parcel
        intersects ``bbox``.
    """
    path = os.fspath(path)
    mapping = CropMapping.read() if mapping is None else mapping
    info = _inspect_source(path, layer)
    if info.crs is None:
        raise CRSError(
            f"parcel file {path} has no coordinate reference system. Set one, e.g. "
            f"`ogr2ogr -a_srs EPSG:5514 fixed.gpkg {path}` (Czech LPIS is usually EPSG:5514), "
            "or add the .prj file of a Shapefile."
        )
    if info.n_features == 0:
        raise ParcelError(f"parcel file {path} is empty (layer {layer!r} has no features)")
    try:
        out_crs = info.crs if target_crs is None else CRS.from_user_input(target_crs)
    except Exception as exc:
        raise CRSError(f"target_crs {target_crs!r} is not a valid CRS: {exc}") from exc

    crop_col = _resolve_column(crop_column, info.columns, path, "--crop-column", "crop code")
    id_col = (
        None
        if id_column is None
        else _resolve_column(id_column, info.columns, path, "--id-column", "parcel id")
    )
    wanted = [crop_col] + ([id_col] if id_col is not None and id_col != crop_col else [])

    file_bbox = None if bbox is None else _transform_bounds(bbox, out_crs, info.crs)
    gdf = _read_features(path, info, layer, wanted, file_bbox)
    if len(gdf) == 0 and bbox is None:
        raise ParcelError(f"parcel file {path} is empty (no features)")
    if len(gdf) == 0:
        _raise_disjoint(path, info, layer, bbox, out_crs)
    n_read = len(gdf)

    # --- geometry checks: missing/empty, non-polygonal, invalid -------------------------------
    geoms = np.asarray(gdf.geometry.array, dtype=object)
    empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    n_dropped_empty = int(empty.sum())
    types = shapely.get_type_id(geoms)
    polygonal = np.isin(types, (3, 6, 7))
    geoms = _polygonal(np.where(polygonal, geoms, None))
    non_polygon = ~empty & (~polygonal | shapely.is_empty(geoms))
    n_non_polygon = int(non_polygon.sum())
    if n_non_polygon:
        found = sorted(set(gdf.geometry[non_polygon].geom_type.dropna()))
        logger.warning("%s: ignoring %d non-polygon features (%s)", path, n_non_polygon, found)
    keep = ~(empty | non_polygon)
    if not keep.any():
        raise ParcelError(
            f"parcel file {path} has no polygon geometries ({n_dropped_empty} empty, "
            f"{n_non_polygon} non-polygon features); parcels must be (Multi)Polygons."
        )
    gdf = gdf.loc[keep].copy()
    gdf = gdf.set_geometry(gpd.GeoSeries(shapely.force_2d(geoms[keep]), index=gdf.index,
                                         crs=gdf.crs))
    if gdf.crs != out_crs:
        gdf = gdf.to_crs(out_crs)

    # Repair in the output CRS so the parcels we return are valid where they are used.
    geoms = np.asarray(gdf.geometry.array, dtype=object)
    invalid = ~shapely.is_valid(geoms)
    n_repaired = int(invalid.sum())
    if n_repaired:
        geoms[invalid] = _polygonal(shapely.make_valid(geoms[invalid]))
        logger.info("%s: repaired %d invalid geometries with make_valid", path, n_repaired)
    now_empty = shapely.is_empty(geoms)
    n_dropped_empty += int(now_empty.sum())
    gdf = gdf.set_geometry(gpd.GeoSeries(geoms, index=gdf.index, crs=gdf.crs)).loc[~now_empty]
    if n_dropped_empty:
        logger.info("%s: dropped %d empty or missing geometries", path, n_dropped_empty)

    # --- precise bbox filter ---------------------------------------------------------------
    n_outside = 0
    if bbox is not None:
        inside = gdf.geometry.intersects(shapely.box(*bbox)).to_numpy()
        n_outside = int((~inside).sum())
        if not inside.any():
            _raise_disjoint(path, info, layer, bbox, out_crs)
        gdf = gdf.loc[inside]

    if len(gdf) == 0:  # everything was repaired away
        raise ParcelError(f"no usable parcel geometry is left in {path}")

    # --- ids ------------------------------------------------------------------------------
    parcel_ids, source_ids = _parcel_ids(gdf[id_col] if id_col is not None else None, path)
    n_duplicate_ids = 0
    if source_ids is None:
        counts = pd.Series(parcel_ids).value_counts()
        dup = counts[counts > 1]
        n_duplicate_ids = int(dup.sum())
        if n_duplicate_ids:
            logger.warning(
                "%s: %d parcels share %d duplicate ids (e.g. %s); kept. Where they overlap, "
                "the one later in the file wins.",
                path, n_duplicate_ids, len(dup), list(dup.index[:5]),
            )

    # --- crop codes -> classes ----------------------------------------------------------
    codes = _normalize_codes(gdf[crop_col])
    class_ids = mapping.map(codes).to_numpy()
    unmapped = codes[class_ids == NOT_CLASSIFIED].fillna(MISSING_CODE)
    unmapped_codes = {str(k): int(v) for k, v in Counter(unmapped).most_common()}
    if unmapped_codes:
        logger.warning(
            "%s: %d parcels have crop codes not in mapping %s -> Not classified (14): %s",
            path, len(unmapped), mapping.source, dict(list(unmapped_codes.items())[:10]),
        )
    class_counts = {int(k): int(v) for k, v in sorted(Counter(class_ids.tolist()).items())}

    out = gpd.GeoDataFrame(
        {
            "parcel_id": parcel_ids.astype(np.int32),
            "crop_code": codes.fillna("").astype(str).to_numpy(),
            "class_id": class_ids.astype(np.uint8),
        },
        geometry=np.asarray(gdf.geometry.array, dtype=object),
        crs=gdf.crs,
    )
    if source_ids is not None:
        out.insert(3, "source_id", source_ids)

    report = ParcelReport(
        n_read=n_read,
        n_repaired=n_repaired,
        n_dropped_empty=n_dropped_empty,
        n_kept=len(out),
        n_outside=n_outside,
        unmapped_codes=unmapped_codes,
        class_counts=class_counts,
        n_dropped_non_polygon=n_non_polygon,
        n_duplicate_ids=n_duplicate_ids,
        ids_renumbered=source_ids is not None,
    )
    logger.info(
        "%s: read %d parcels, kept %d (%d repaired, %d empty, %d non-polygon, %d outside)",
        path, n_read, report.n_kept, n_repaired, n_dropped_empty, n_non_polygon, n_outside,
    )
    return out, report


def _raise_disjoint(path: str, info: _SourceInfo, layer, bbox, out_crs: CRS) -> None:
    extent = _transform_bounds(_file_extent(path, info, layer), info.crs, out_crs)
    name = out_crs.to_string()
    raise ParcelError(
        f"the parcels of {path} do not overlap the scene: parcels extent {_fmt_bounds(extent)}, "
        f"scene bbox {_fmt_bounds(bbox)}, both in {name}. Check that the parcel file covers "
        "the scene's area and that its CRS is declared correctly."
    )


def _parcel_ids(raw: pd.Series | None, path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(int64 ids, original ids or None). Renumbers 1..n when ids are unusable."""
    if raw is not None and not pd.api.types.is_bool_dtype(raw):
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        if (
            values.size
            and np.all(np.isfinite(values))
            and np.all(values == np.round(values))
            and values.min() >= 1
            and values.max() <= _INT32_MAX
        ):
            return values.astype(np.int64), None
    n = 0 if raw is None else len(raw)
    if raw is None:
        logger.info("%s: no id column given; numbering parcels 1..n", path)
        return np.arange(1, n + 1, dtype=np.int64), None
    logger.warning(
        "%s: parcel ids in %r are not integers in 1..%d; numbering parcels 1..%d in file order "
        "and keeping the original ids in column 'source_id'",
        path, raw.name, _INT32_MAX, n,
    )
    return np.arange(1, n + 1, dtype=np.int64), raw.to_numpy()


# --------------------------------------------------------------------------------------------
# Lazy per-chunk rasterization
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ChunkParcels:
    """Everything one rasterization task needs: its parcels as WKB, and its window.

    ``wkb[offsets[k]:offsets[k+1]]`` is the k-th geometry. Parcels are in global burn order
    (ascending parcel_id, then position in the table), so a chunk burns them exactly as a
    whole-grid rasterization would.
    """

    wkb: bytes
    offsets: np.ndarray  # (n + 1,) int64
    class_ids: np.ndarray  # (n,) uint8
    parcel_ids: np.ndarray  # (n,) int32
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]

    def __len__(self) -> int:
        return int(self.parcel_ids.size)

    def geometries(self) -> np.ndarray:
        parts = [self.wkb[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]
        return shapely.from_wkb(np.asarray(parts, dtype=object)) if parts else np.empty(0, object)


def _rasterize_chunk(payload: _ChunkParcels) -> tuple[np.ndarray, np.ndarray]:
    """Dask task: decode the chunk's parcels and run the pure kernel on its window."""
    return rasterize_parcels(
        payload.geometries(),
        payload.class_ids,
        payload.parcel_ids,
        Affine(*payload.transform),
        payload.shape,
    )


def _normalize_chunks(chunks: tuple[int, int] | int, shape: tuple[int, int]):
    if isinstance(chunks, (int, np.integer)):
        chunks = (int(chunks), int(chunks))
    if (
        not isinstance(chunks, (tuple, list))
        or len(chunks) != 2
        or not all(isinstance(c, (int, np.integer)) and (c > 0 or c == -1) for c in chunks)
    ):
        raise ValueError(
            f"chunks must be a positive int or a (cy, cx) pair of ints, got {chunks!r}"
        )
    return da.core.normalize_chunks(tuple(int(c) for c in chunks), shape=shape)


def rasterize_labels(
    parcels: gpd.GeoDataFrame, grid: Grid, chunks: tuple[int, int] | int = 1024
) -> xr.Dataset:
    """Lazy ``label``/``parcel_id`` rasters of ``parcels`` on ``grid``, one task per chunk.

    Each task carries only the parcels whose geometry intersects its chunk (found with the
    GeoDataFrame's spatial index on the client), as WKB bytes plus id arrays. The result is
    identical to one :func:`~crop2seg_pipeline.kernels.rasterize.rasterize_parcels` call over
    the whole grid, whatever the chunking.

    Parameters
    ----------
    parcels : geopandas.GeoDataFrame
        Output of :func:`read_parcels` in the grid's CRS: columns ``parcel_id``, ``class_id``
        and polygon geometries.
    grid : Grid
        The target pixel grid.
    chunks : int or (int, int), default 1024
        Spatial chunk size (rows, columns); the last chunks along each axis may be smaller.

    Returns
    -------
    xarray.Dataset
        ``label`` (y, x) uint8 and ``parcel_id`` (y, x) int32 backed by dask arrays, with
        pixel-center coordinates ``x``, ``y`` and the attribute ``epsg``.

    Raises
    ------
    CRSError
        If the parcels have no CRS or are not in the grid's CRS.
    ParcelError
        If ``parcel_id`` or ``class_id`` is missing.
    """
    _check_parcels(parcels, grid)
    ychunks, xchunks = _normalize_chunks(chunks, grid.shape)
    present = ~(parcels.geometry.isna() | parcels.geometry.is_empty).to_numpy()
    if not present.all():
        parcels = parcels.loc[present]  # nothing to burn; keeps WKB encoding simple
    row_starts = np.concatenate([[0], np.cumsum(ychunks)])
    col_starts = np.concatenate([[0], np.cumsum(xchunks)])

    # Global burn order, fixed once on the client: every chunk burns its subset in this order.
    pids = parcels["parcel_id"].to_numpy().astype(np.int64)
    order = np.argsort(pids, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    geoms = np.asarray(parcels.geometry.array, dtype=object)
    wkb = shapely.to_wkb(geoms)
    cls = parcels["class_id"].to_numpy().astype(np.uint8)
    pid32 = pids.astype(np.int32)

    # All chunk boxes queried against the spatial index at once.
    res = grid.resolution
    boxes, windows = [], []
    for i in range(len(ychunks)):
        for j in range(len(xchunks)):
            r0, r1 = int(row_starts[i]), int(row_starts[i + 1])
            c0, c1 = int(col_starts[j]), int(col_starts[j + 1])
            boxes.append(
                shapely.box(grid.x0 + c0 * res, grid.y0 - r1 * res,
                            grid.x0 + c1 * res, grid.y0 - r0 * res)
            )
            windows.append((i, j, r0, r1, c0, c1))
    if len(parcels):
        box_idx, geom_idx = parcels.sindex.query(np.asarray(boxes), predicate="intersects")
    else:
        box_idx = geom_idx = np.empty(0, dtype=np.int64)
    by_box = np.argsort(box_idx, kind="stable")
    splits = np.searchsorted(box_idx[by_box], np.arange(len(boxes) + 1))

    token = tokenize(grid, ychunks, xchunks, pids, cls, b"".join(wkb.tolist()))
    raw_name = f"rasterize-parcels-{token}"
    raw_layer: dict = {}
    for b, (i, j, r0, r1, c0, c1) in enumerate(windows):
        members = geom_idx[by_box[splits[b]:splits[b + 1]]]
        members = members[np.argsort(rank[members], kind="stable")]
        sub = wkb[members]
        offsets = np.zeros(members.size + 1, dtype=np.int64)
        np.cumsum([len(w) for w in sub], out=offsets[1:])
        window = grid.window(r0, c0, r1 - r0, c1 - c0)
        payload = _ChunkParcels(
            wkb=b"".join(sub.tolist()),
            offsets=offsets,
            class_ids=cls[members],
            parcel_ids=pid32[members],
            transform=tuple(window.transform)[:6],
            shape=(r1 - r0, c1 - c0),
        )
        raw_layer[(raw_name, i, j)] = (_rasterize_chunk, payload)
    n_carried = splits[-1] if len(boxes) else 0
    logger.debug(
        "rasterize_labels: %d parcels, %d chunks, %d parcel-chunk pairs",
        len(parcels), len(boxes), n_carried,
    )

    def output(index: int, suffix: str, dtype) -> da.Array:
        name = f"{suffix}-{token}"
        layer = {
            (name, i, j): (operator.getitem, (raw_name, i, j), index)
            for (i, j, *_rest) in windows
        }
        graph = HighLevelGraph(
            {raw_name: raw_layer, name: layer}, {raw_name: set(), name: {raw_name}}
        )
        return da.Array(graph, name, (ychunks, xchunks), dtype=dtype,
                        meta=np.empty((0, 0), dtype=dtype))

    label = output(0, "label", np.uint8)
    parcel_id = output(1, "parcel-id", np.int32)
    return xr.Dataset(
        {
            "label": (("y", "x"), label, {"long_name": "crop class id", "nodata_class": 0,
                                          "ignore_class": NOT_CLASSIFIED}),
            "parcel_id": (("y", "x"), parcel_id, {"long_name": "parcel id (0 outside parcels)"}),
        },
        coords={"y": grid.y_coords(), "x": grid.x_coords()},
        attrs={"epsg": int(grid.epsg)},
    )


def _check_parcels(parcels: gpd.GeoDataFrame, grid: Grid) -> None:
    missing = [c for c in ("parcel_id", "class_id") if c not in parcels.columns]
    if missing:
        raise ParcelError(
            f"parcels lack column(s) {missing} (have {list(parcels.columns)}); "
            "build them with crop2seg_pipeline.labels.read_parcels."
        )
    pids = parcels["parcel_id"].to_numpy()
    if pids.size and (
        not np.issubdtype(pids.dtype, np.integer) or pids.min() < 1 or pids.max() > _INT32_MAX
    ):
        raise ParcelError(
            "parcel_id must hold integers in 1..2**31-1 (0 is Background); "
            "read_parcels renumbers unusable ids."
        )
    classes = parcels["class_id"].to_numpy()
    if classes.size and (
        not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0 or classes.max() > 255
    ):
        raise ParcelError("class_id must hold integers in 0..255 (uint8)")
    if parcels.crs is None:
        raise CRSError(
            f"parcels have no CRS; read them with read_parcels(..., target_crs={grid.epsg})."
        )
    if CRS.from_user_input(parcels.crs) != CRS.from_epsg(grid.epsg):
        raise CRSError(
            f"parcels are in {parcels.crs.to_string()} but the grid is in {grid.crs}; "
            f"reproject them, e.g. read_parcels(..., target_crs={grid.epsg}) or "
            f"parcels.to_crs({grid.epsg})."
        )
