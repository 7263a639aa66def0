"""Lazy per-chunk rasterization of parcels into ``label`` / ``parcel_id`` rasters (a graph layer).

Chunks are rasterized independently: each dask task carries only the parcels that intersect
its chunk (WKB bytes and id arrays), never the whole parcel table. Overlapping parcels follow
the rule of :mod:`crop2seg_pipeline.kernels.rasterize` (ascending ``parcel_id``, later wins), so
the result does not depend on the chunking.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass

import dask.array as da
import geopandas as gpd
import numpy as np
import shapely
import xarray as xr
from affine import Affine
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from pyproj import CRS

from ..errors import CRSError, ParcelError
from ..grid import Grid
from ..kernels.rasterize import rasterize_parcels
from ..nomenclature import NOT_CLASSIFIED

logger = logging.getLogger(__name__)

__all__ = ["rasterize_labels", "ChunkParcels"]

_INT32_MAX = int(np.iinfo(np.int32).max)


# --------------------------------------------------------------------------------------------
# Lazy per-chunk rasterization
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkParcels:
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


def _rasterize_chunk(payload: ChunkParcels) -> tuple[np.ndarray, np.ndarray]:
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
        payload = ChunkParcels(
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
