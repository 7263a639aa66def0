"""Pure numpy kernels: the per-parcel decision rules of predict's parcel table.

Three ways to give a parcel one predicted class, from what predict sums per parcel (pixel counts
per class, and probability sums per class, over the pixels whose centre lies in the parcel):

- **area majority** (:func:`majority_classes`): the class with the most pixels (smallest id on
  ties);
- **homogenization** (:func:`homogenized_classes`), Crop2Seg's rule (``src/helpers/postprocess.py``
  ``homogenize``, read at Many98/Crop2Seg aee7827): it intersects each parcel with the polygons of
  the class map and keeps, per parcel, the class covering the largest area, where Background is a
  candidate only when it covers more than 0.75 of the parcel. (The code's "0.75 x mean parcel
  area" is ``area / (sum of the parcel's area over its pieces / number of pieces)``: the mean of
  one parcel's own area repeated, i.e. 0.75 of that parcel's area.) So: Background when its share
  of the parcel is > 0.75, else the non-background class covering most of it. Here areas are
  pixel counts (pixel centres in the parcel, as the other columns), so the share's denominator is
  the parcel's pixels in the raster, not its whole polygon area (Crop2Seg counted parts outside
  the raster as not covered);
- **soft** (:func:`soft_classes`), Crop2Seg's ``soften``: the class of highest *mean probability*
  over the parcel's pixels, except that when it is Background with a mean probability <= 0.7 the
  second-highest class wins ("top-2 fallback"); the second class is reported too.

And the order in which an inspector checks disagreeing parcels (:func:`disagreement_rank`): the
most confident disagreements first.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "HOMOGENIZE_BACKGROUND_SHARE",
    "SOFT_BACKGROUND_MIN_PROBABILITY",
    "majority_classes",
    "homogenized_classes",
    "soft_classes",
    "disagreement_rank",
]

#: Crop2Seg: Background wins a parcel only when it covers more than this share of it.
HOMOGENIZE_BACKGROUND_SHARE = 0.75
#: Crop2Seg: a soft Background label needs a mean probability above this, else the 2nd class wins.
SOFT_BACKGROUND_MIN_PROBABILITY = 0.7


def majority_classes(counts: np.ndarray) -> np.ndarray:
    """(n, K) pixel counts -> (n,) class with the most pixels (smallest id on ties), -1 without pixels."""
    counts = np.asarray(counts)
    out = np.argmax(counts, axis=1).astype(np.int64)
    out[counts.sum(axis=1) == 0] = -1
    return out


def homogenized_classes(counts: np.ndarray, background: int = 0,
                        share: float = HOMOGENIZE_BACKGROUND_SHARE) -> np.ndarray:
    """(n, K) pixel counts -> (n,) Crop2Seg's homogenized class, -1 without pixels.

    Background when its pixels are more than ``share`` of the parcel's pixels (or the parcel has
    no other class); otherwise the non-background class with the most pixels (smallest id on ties).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = counts.sum(axis=1)
    other = counts.copy()
    other[:, background] = -1
    best = np.argmax(other, axis=1).astype(np.int64)
    has_other = other.max(axis=1) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        bg_share = counts[:, background] / np.maximum(total, 1)
    out = np.where((bg_share > share) | ~has_other, background, best)
    out[total == 0] = -1
    return out


def soft_classes(prob_sums: np.ndarray, n_pixels: np.ndarray, background: int = 0,
                 min_background: float = SOFT_BACKGROUND_MIN_PROBABILITY) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop2Seg's soft label from per-parcel probability sums.

    Parameters
    ----------
    prob_sums : (n, K) sums of the class probabilities over each parcel's pixels
    n_pixels : (n,) the parcel's pixel counts

    Returns
    -------
    label : (n,) top-1 class of the mean probabilities, or the top-2 class when top-1 is
        ``background`` with a mean probability <= ``min_background``; -1 without pixels
    top2 : (n,) the second class of the mean probabilities; -1 without pixels
    probability : (n,) mean probability of ``label`` (NaN without pixels)

    Ties between classes go to the smaller class id.
    """
    sums = np.asarray(prob_sums, dtype=np.float64)
    n = np.asarray(n_pixels, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / n[:, None]
    order = np.argsort(-np.nan_to_num(mean, nan=-1.0), axis=1, kind="stable")
    top1, top2 = order[:, 0].astype(np.int64), order[:, 1].astype(np.int64)
    rows = np.arange(len(n))
    p1 = mean[rows, top1]
    fallback = (top1 == background) & ~(p1 > min_background)
    label = np.where(fallback, top2, top1)
    prob = mean[rows, label]
    none = n <= 0
    label[none], top2[none] = -1, -1
    prob = np.where(none, np.nan, prob)
    return label, top2, prob


def disagreement_rank(disagree: np.ndarray, confidence: np.ndarray, share: np.ndarray,
                      parcel_id: np.ndarray) -> np.ndarray:
    """Rank (1 = check first) of the disagreeing parcels; 0 for the others.

    Order: mean confidence descending, then the predicted class's share of the parcel descending,
    then parcel id ascending (so the rank is deterministic).
    """
    disagree = np.asarray(disagree, dtype=bool)
    idx = np.flatnonzero(disagree)
    rank = np.zeros(len(disagree), dtype=np.int64)
    if idx.size:
        conf = np.nan_to_num(np.asarray(confidence, dtype=np.float64)[idx], nan=-1.0)
        sh = np.nan_to_num(np.asarray(share, dtype=np.float64)[idx], nan=-1.0)
        order = np.lexsort((np.asarray(parcel_id)[idx], -sh, -conf))
        rank[idx[order]] = np.arange(1, idx.size + 1)
    return rank
