"""Dask task bodies of predict's extra outputs (see :mod:`crop2seg_pipeline.predict_outputs`).

:func:`chunk_extras` runs inside each chunk's finishing task (:func:`.windows.finish_chunk`): it
sees that chunk's probabilities, classes and parcel ids, nothing else. :func:`merge_tasks` builds
the one task per class that unites the polygon pieces cut by chunk borders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np

from ..kernels.polygons import merge_pieces, polygonize_block, quantize_probabilities
from ..nomenclature import BACKGROUND

__all__ = ["ChunkExtras", "chunk_extras", "merge_tasks", "DEFAULT_MIN_POLYGON_AREA"]

#: Crop2Seg keeps polygons of the class map whose area is more than 5000 m2.
DEFAULT_MIN_POLYGON_AREA = 5000.0


@dataclass(frozen=True)
class ChunkExtras:
    """What a chunk's finishing task computes besides classes and confidence (small; ships in the graph)."""

    probability_bytes: bool
    polygons: bool
    parcel_probabilities: bool
    tile_height: int
    tile_width: int
    transform: tuple[float, ...]  # the tile's affine (a, b, c, d, e, f)
    min_polygon_area: float = DEFAULT_MIN_POLYGON_AREA
    background: int = BACKGROUND

    @property
    def pixel_area(self) -> float:
        return abs(self.transform[0] * self.transform[4])


def chunk_extras(probs: np.ndarray, cls: np.ndarray, parcel_id: np.ndarray | None, opts: ChunkExtras,
                 y0: int, x0: int) -> dict:
    """Task body part: the extra outputs of the chunk at (y0, x0) (``probs`` (class, y, x))."""
    from affine import Affine

    out: dict[str, Any] = {}
    if opts.probability_bytes:
        out["prob_u8"] = quantize_probabilities(probs)
    if opts.polygons:
        h, w = cls.shape
        transform = Affine(*opts.transform) * Affine.translation(x0, y0)
        sides = (y0 > 0, y0 + h < opts.tile_height, x0 > 0, x0 + w < opts.tile_width)
        final, pieces = polygonize_block(
            cls, probs.max(axis=0), transform, row0=y0, col0=x0, tile_width=opts.tile_width, open_sides=sides,
            background=opts.background, pixel_area=opts.pixel_area, min_area=opts.min_polygon_area,
        )
        out["polygons"], out["pieces"] = final, pieces
    if opts.parcel_probabilities and parcel_id is not None:
        inside = parcel_id > 0
        upid, inv = np.unique(parcel_id[inside].astype(np.int64), return_inverse=True)
        sums = np.stack([np.bincount(inv, weights=probs[k][inside].astype(np.float64), minlength=upid.size)
                         for k in range(probs.shape[0])], axis=1)
        out["parcel_prob"] = (upid, sums)
    return out


def merge_tasks(pieces_by_class: Mapping[int, Sequence[dict]], opts: ChunkExtras) -> list:
    """One delayed :func:`~crop2seg_pipeline.kernels.polygons.merge_pieces` per class, in class order."""
    return [dask.delayed(merge_pieces, pure=True)(list(pieces), pixel_area=opts.pixel_area,
                                                  min_area=opts.min_polygon_area,
                                                  dask_key_name=f"merge-polygons-{k}-{dask.base.tokenize(pieces)}")
            for k, pieces in sorted(pieces_by_class.items())]
