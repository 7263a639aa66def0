"""Pure kernels of predict's polygon output: polygonize one chunk of the class map, merge the
pieces of polygons cut by chunk borders, and quantize probabilities to bytes.

A chunk's class map is split into its 4-connected components of one class (Background dropped);
each component becomes one polygon (``rasterio.features.shapes``, exact pixel edges) with its
class, pixel count, sum of confidence and *first pixel* (topmost row, then leftmost column, in
tile coordinates). A component touching a side of the chunk that has a neighbouring chunk is
*open*: it may continue there, so it is handed to the merge step as a piece; the others are
final. :func:`merge_pieces` unites the pieces of one class: pieces sharing an edge become one
polygon (pieces meeting at a corner only stay apart, as 4-connectivity says), whose pixels and
confidence are the sums of its pieces and whose first pixel is the first of theirs. The first
pixel, unique to a polygon and independent of the chunking, is its ``polygon_id``
(``row * tile width + column``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["polygonize_block", "merge_pieces", "quantize_probabilities", "PIECE_FIELDS"]

#: Per-polygon fields returned by :func:`polygonize_block` and :func:`merge_pieces` (plus ``wkb``).
PIECE_FIELDS = ("polygon_id", "class_id", "n_pixels", "conf_sum")


def _empty() -> dict:
    return {"polygon_id": np.empty(0, np.int64), "class_id": np.empty(0, np.int64), "n_pixels": np.empty(0, np.int64),
            "conf_sum": np.empty(0, np.float64), "wkb": []}


def _components(cls: np.ndarray, background: int) -> tuple[np.ndarray, int]:
    """4-connected components of equal class (0 = background), ids 1..n."""
    from scipy import ndimage

    comp = np.zeros(cls.shape, dtype=np.int64)
    n = 0
    for k in np.unique(cls):
        if k == background:
            continue
        lab, m = ndimage.label(cls == k)  # default structure: 4-connectivity
        comp[lab > 0] = lab[lab > 0] + n
        n += m
    return comp, n


def polygonize_block(
    cls: np.ndarray, confidence: np.ndarray, transform, *, row0: int, col0: int, tile_width: int,
    open_sides: tuple[bool, bool, bool, bool], background: int = 0, pixel_area: float = 100.0,
    min_area: float = 0.0,
) -> tuple[dict, dict]:
    """Polygons of one chunk of the class map.

    Parameters
    ----------
    cls : (y, x) class ids of the chunk
    confidence : (y, x) float confidence (max probability) of the chunk
    transform : affine of the chunk's upper-left corner (rasterio ``Affine``)
    row0, col0 : the chunk's position in the tile (pixels); ``tile_width`` the tile's width
    open_sides : (top, bottom, left, right): which sides have a neighbouring chunk
    background : class dropped
    pixel_area : area of a pixel (m2)
    min_area : final polygons of at most this area (m2) are dropped (open pieces are kept for
        the merge, which applies the rule to the merged polygon)

    Returns
    -------
    final, pieces : dicts of arrays ``polygon_id``, ``class_id``, ``n_pixels``, ``conf_sum`` and a
        list ``wkb`` (polygon geometries as WKB), for final polygons and open pieces
    """
    import rasterio.features
    import shapely

    comp, n = _components(cls, background)
    if n == 0:
        return _empty(), _empty()
    flat = comp.ravel()
    ids, first = np.unique(flat, return_index=True)
    keep = ids > 0
    ids, first = ids[keep], first[keep]
    n_pix = np.bincount(flat, minlength=n + 1)[ids]
    conf_sum = np.bincount(flat, weights=np.asarray(confidence, np.float64).ravel(), minlength=n + 1)[ids]
    klass = cls.ravel()[first].astype(np.int64)
    h, w = cls.shape
    pid = (first // w + row0) * int(tile_width) + (first % w + col0)
    top, bottom, left, right = open_sides
    edge = [comp[0, :] if top else None, comp[-1, :] if bottom else None,
            comp[:, 0] if left else None, comp[:, -1] if right else None]
    touching = np.zeros(n + 1, dtype=bool)
    for e in edge:
        if e is not None:
            touching[e] = True
    touching[0] = False
    geoms: dict[int, bytes] = {}
    for geom, value in rasterio.features.shapes(comp.astype(np.int32), mask=comp > 0, connectivity=4,
                                                transform=transform):
        geoms[int(value)] = shapely.to_wkb(shapely.geometry.shape(geom))
    out = []
    for sel in (~touching[ids] & (n_pix * pixel_area > min_area), touching[ids]):
        out.append({"polygon_id": pid[sel], "class_id": klass[sel], "n_pixels": n_pix[sel].astype(np.int64),
                    "conf_sum": conf_sum[sel], "wkb": [geoms[int(i)] for i in ids[sel]]})
    return out[0], out[1]


def merge_pieces(pieces: Sequence[dict], *, pixel_area: float = 100.0, min_area: float = 0.0) -> dict:
    """Unite open pieces (of one class, from any chunks) that share an edge.

    Returns the merged polygons with more than ``min_area`` (m2), fields as
    :func:`polygonize_block`; geometries without the collinear vertices left by chunk borders.
    """
    import shapely

    parts = [p for p in pieces if len(p["wkb"])]
    if not parts:
        return _empty()
    geoms = shapely.from_wkb([b for p in parts for b in p["wkb"]])
    pid = np.concatenate([p["polygon_id"] for p in parts])
    klass = np.concatenate([p["class_id"] for p in parts])
    n_pix = np.concatenate([p["n_pixels"] for p in parts])
    conf = np.concatenate([p["conf_sum"] for p in parts])
    if len(np.unique(klass)) != 1:
        raise ValueError(f"merge_pieces takes the pieces of one class, got classes {sorted(set(klass.tolist()))}")
    union = shapely.get_parts(shapely.union_all(geoms))
    tree = shapely.STRtree(union)
    probe, target = tree.query(shapely.point_on_surface(geoms), predicate="within")
    owner = np.full(len(geoms), -1, dtype=np.int64)
    owner[probe] = target
    if (owner < 0).any():  # cannot happen for pixel-aligned pieces; say so rather than drop area
        raise RuntimeError(f"{int((owner < 0).sum())} polygon pieces fell outside their union")
    m = len(union)
    tot_pix = np.bincount(owner, weights=n_pix, minlength=m).astype(np.int64)
    tot_conf = np.bincount(owner, weights=conf, minlength=m)
    first = np.full(m, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, owner, pid)
    sel = tot_pix * pixel_area > min_area
    merged = shapely.simplify(union[sel], 0.0)  # drop the collinear vertices where chunk borders were
    return {"polygon_id": first[sel], "class_id": np.full(int(sel.sum()), klass[0], dtype=np.int64),
            "n_pixels": tot_pix[sel], "conf_sum": tot_conf[sel], "wkb": list(shapely.to_wkb(merged))}


def quantize_probabilities(probs: np.ndarray, total: int = 255) -> np.ndarray:
    """(K, y, x) probabilities -> uint8 ``round(p x total)`` whose bands sum to exactly ``total``.

    Largest-remainder rounding per pixel: every band gets ``floor(p x total)``, and the units
    still missing go to the bands with the largest remainders (the smaller class id first on
    ties). Each band is within 1 of ``p x total``.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, None)
    K = p.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        p = p / np.where(p.sum(axis=0) > 0, p.sum(axis=0), 1.0)  # float32 softmax sums drift by ~1e-7
    x = p * total
    base = np.floor(x)
    missing = np.clip(np.rint(total - base.sum(axis=0)), 0, K).astype(np.int64)
    order = np.argsort(-(x - base), axis=0, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(K).reshape((K,) + (1,) * (p.ndim - 1)), axis=0)
    return (base + (rank < missing[None])).astype(np.uint8)
