"""LPIS parcels: read any vector file, validate, repair, reproject and map crop codes to classes.

:func:`read_parcels` is the one entry point: it inspects the file (format, CRS, columns) before
reading any feature, reads only the needed columns (pre-filtered by a bbox), keeps polygonal
parts, repairs invalid geometries in the target CRS, assigns usable parcel ids and maps crop
codes with a :class:`~crop2seg_pipeline.mapping.CropMapping`; a :class:`ParcelReport` says what
happened. Rasterizing the parcels is :mod:`crop2seg_pipeline.graph.labels`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS, Transformer

from . import storage
from .errors import CRSError, Crop2SegError, ParcelError, ReadError
from .mapping import MISSING_CODE, CropMapping, normalize_codes
from .nomenclature import NOT_CLASSIFIED

logger = logging.getLogger(__name__)

__all__ = ["ParcelReport", "read_parcels"]

_INT32_MAX = int(np.iinfo(np.int32).max)
_PARQUET_SUFFIXES = (".parquet", ".geoparquet", ".pq")


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
    if not info.get("geometry_type"):
        raise ReadError(
            f"{path} is not a vector file with geometry: GDAL reads it as a table without geometries "
            f"(driver {info.get('driver')}, columns {list(info.get('fields', ()))}). Give the parcels as "
            "polygons (GPKG, SHP, GeoJSON, FlatGeobuf, GeoParquet); a CSV needs its geometry first "
            "(e.g. ogr2ogr -f GPKG parcels.gpkg parcels.csv -oo GEOM_POSSIBLE_NAMES=geometry -a_srs EPSG:5514)."
        )
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
    if storage.is_url(path) and storage.protocol(path) not in ("http", "https"):
        # s3://, gs://...: a local copy for OGR (single-file formats: GPKG, GeoJSON, FlatGeobuf, GeoParquet)
        with storage.local_copy(path) as local:
            try:
                return read_parcels(local, id_column=id_column, crop_column=crop_column, layer=layer,
                                    mapping=mapping, target_crs=target_crs, bbox=bbox)
            except Crop2SegError as e:  # messages name the URL, not the temporary copy
                raise type(e)(str(e).replace(local, storage.redact(path))) from None
    mapping = CropMapping.read() if mapping is None else mapping
    info = _inspect_source(path, layer)
    out_crs = _output_crs(path, info, layer, target_crs)
    crop_col, id_col = _columns(path, info, crop_column, id_column)

    file_bbox = None if bbox is None else _transform_bounds(bbox, out_crs, info.crs)
    gdf = _read_features(path, info, layer, [crop_col] + ([id_col] if id_col not in (None, crop_col) else []),
                         file_bbox)
    if len(gdf) == 0 and bbox is None:
        raise ParcelError(f"parcel file {path} is empty (no features)")
    if len(gdf) == 0:
        _raise_disjoint(path, info, layer, bbox, out_crs)
    n_read = len(gdf)

    gdf, n_empty, n_non_polygon = _polygons_only(gdf, path)
    if gdf.crs != out_crs:
        gdf = gdf.to_crs(out_crs)
    gdf, n_repaired, n_emptied = _repaired(gdf, path)  # in the output CRS, where they are used
    n_dropped_empty = n_empty + n_emptied
    n_outside = 0
    if bbox is not None:
        inside = gdf.geometry.intersects(shapely.box(*bbox)).to_numpy()
        n_outside = int((~inside).sum())
        if not inside.any():
            _raise_disjoint(path, info, layer, bbox, out_crs)
        gdf = gdf.loc[inside]
    if len(gdf) == 0:  # everything was repaired away
        raise ParcelError(f"no usable parcel geometry is left in {path}")

    parcel_ids, source_ids = _parcel_ids(gdf[id_col] if id_col is not None else None, path)
    n_duplicate_ids = 0 if source_ids is not None else _count_duplicate_ids(parcel_ids, path)
    codes = normalize_codes(gdf[crop_col])
    class_ids = mapping.map(codes).to_numpy()
    unmapped_codes = _unmapped(codes, class_ids, path, mapping)

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
        class_counts={int(k): int(v) for k, v in sorted(Counter(class_ids.tolist()).items())},
        n_dropped_non_polygon=n_non_polygon,
        n_duplicate_ids=n_duplicate_ids,
        ids_renumbered=source_ids is not None,
    )
    logger.info(
        "%s: read %d parcels, kept %d (%d repaired, %d empty, %d non-polygon, %d outside)",
        path, n_read, report.n_kept, n_repaired, n_dropped_empty, n_non_polygon, n_outside,
    )
    return out, report


def _output_crs(path: str, info: _SourceInfo, layer: str | int | None, target_crs: Any) -> CRS:
    """The CRS of the returned parcels; refuses files without a CRS or without features."""
    if info.crs is None:
        raise CRSError(
            f"parcel file {path} has no coordinate reference system. Set one, e.g. "
            f"`ogr2ogr -a_srs EPSG:5514 fixed.gpkg {path}` (Czech LPIS is usually EPSG:5514), "
            "or add the .prj file of a Shapefile."
        )
    if info.n_features == 0:
        raise ParcelError(f"parcel file {path} is empty (layer {layer!r} has no features)")
    try:
        return info.crs if target_crs is None else CRS.from_user_input(target_crs)
    except Exception as exc:
        raise CRSError(f"target_crs {target_crs!r} is not a valid CRS: {exc}") from exc


def _columns(path: str, info: _SourceInfo, crop_column: str, id_column: str | None) -> tuple[str, str | None]:
    """The file's actual crop-code and id column names (see :func:`_resolve_column`)."""
    crop_col = _resolve_column(crop_column, info.columns, path, "--crop-column", "crop code")
    id_col = (
        None if id_column is None else _resolve_column(id_column, info.columns, path, "--id-column", "parcel id")
    )
    return crop_col, id_col


def _polygons_only(gdf: gpd.GeoDataFrame, path: str) -> tuple[gpd.GeoDataFrame, int, int]:
    """Drop missing/empty and non-polygonal features, keep polygonal parts of collections, 2D.

    Returns the kept parcels and the numbers of empty and of non-polygon features dropped.
    """
    geoms = np.asarray(gdf.geometry.array, dtype=object)
    empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    polygonal = np.isin(shapely.get_type_id(geoms), (3, 6, 7))
    geoms = _polygonal(np.where(polygonal, geoms, None))
    non_polygon = ~empty & (~polygonal | shapely.is_empty(geoms))
    n_non_polygon = int(non_polygon.sum())
    if n_non_polygon:
        found = sorted(set(gdf.geometry[non_polygon].geom_type.dropna()))
        logger.warning("%s: ignoring %d non-polygon features (%s)", path, n_non_polygon, found)
    keep = ~(empty | non_polygon)
    if not keep.any():
        raise ParcelError(
            f"parcel file {path} has no polygon geometries ({int(empty.sum())} empty, "
            f"{n_non_polygon} non-polygon features); parcels must be (Multi)Polygons."
        )
    gdf = gdf.loc[keep].copy()
    gdf = gdf.set_geometry(gpd.GeoSeries(shapely.force_2d(geoms[keep]), index=gdf.index, crs=gdf.crs))
    return gdf, int(empty.sum()), n_non_polygon


def _repaired(gdf: gpd.GeoDataFrame, path: str) -> tuple[gpd.GeoDataFrame, int, int]:
    """Invalid geometries repaired with ``make_valid`` (polygonal parts kept); those left empty
    are dropped. Returns the parcels, the number repaired and the number dropped as empty."""
    geoms = np.asarray(gdf.geometry.array, dtype=object)
    invalid = ~shapely.is_valid(geoms)
    n_repaired = int(invalid.sum())
    if n_repaired:
        geoms[invalid] = _polygonal(shapely.make_valid(geoms[invalid]))
        logger.info("%s: repaired %d invalid geometries with make_valid", path, n_repaired)
    now_empty = shapely.is_empty(geoms)
    if now_empty.any():
        logger.info("%s: dropped %d geometries left empty by the repair", path, int(now_empty.sum()))
    gdf = gdf.set_geometry(gpd.GeoSeries(geoms, index=gdf.index, crs=gdf.crs)).loc[~now_empty]
    return gdf, n_repaired, int(now_empty.sum())


def _count_duplicate_ids(parcel_ids: np.ndarray, path: str) -> int:
    counts = pd.Series(parcel_ids).value_counts()
    dup = counts[counts > 1]
    n = int(dup.sum())
    if n:
        logger.warning(
            "%s: %d parcels share %d duplicate ids (e.g. %s); kept. Where they overlap, "
            "the one later in the file wins.",
            path, n, len(dup), list(dup.index[:5]),
        )
    return n


def _unmapped(codes: pd.Series, class_ids: np.ndarray, path: str, mapping: CropMapping) -> dict[str, int]:
    """Crop code -> number of parcels whose code the mapping does not know (logged)."""
    unmapped = codes[class_ids == NOT_CLASSIFIED].fillna(MISSING_CODE)
    out = {str(k): int(v) for k, v in Counter(unmapped).most_common()}
    if out:
        logger.warning(
            "%s: %d parcels have crop codes not in mapping %s -> Not classified (14): %s",
            path, len(unmapped), mapping.source, dict(list(out.items())[:10]),
        )
    return out


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
