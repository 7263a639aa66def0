"""Pure numpy kernels of the patch build: per-patch summaries, cutting, pooled moments, splits.

No dask, xarray or I/O: the build maps these over cube chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..nomenclature import N_CLASSES


def _patch_view(a: np.ndarray, p: int) -> np.ndarray:
    """(..., H, W) -> (..., nr, nc, p, p) over the whole patches of ``a`` (partial ones dropped)."""
    h, w = a.shape[-2:]
    nr, nc = h // p, w // p
    a = a[..., : nr * p, : nc * p]
    shape = a.shape[:-2] + (nr, p, nc, p)
    return np.moveaxis(a.reshape(shape), -3, -2)


def patch_class_counts(label: np.ndarray, patch_size: int, n_classes: int = N_CLASSES) -> np.ndarray:
    """Pixel count of each class in each whole patch of a label block.

    Parameters
    ----------
    label : (H, W) uint8
    Returns
    -------
    (nr, nc, n_classes) int64
    """
    v = _patch_view(label, patch_size)
    nr, nc = v.shape[:2]
    if nr * nc == 0:
        return np.zeros((nr, nc, n_classes), dtype=np.int64)
    flat = v.reshape(nr * nc, -1).astype(np.int64)
    offs = (np.arange(nr * nc, dtype=np.int64) * n_classes)[:, None]
    counts = np.bincount((flat + offs).ravel(), minlength=nr * nc * n_classes)
    return counts.reshape(nr, nc, n_classes)


def patch_fraction(mask: np.ndarray, patch_size: int) -> np.ndarray:
    """Fraction of True pixels in each whole patch: (T, H, W) bool -> (T, nr, nc) float32."""
    v = _patch_view(mask, patch_size)
    if v.size == 0:
        return np.zeros(v.shape[:-2], dtype=np.float32)
    # an exact count, then one division (= the float64 mean, at half its cost)
    return (v.sum(axis=(-1, -2), dtype=np.int32) / float(patch_size * patch_size)).astype(np.float32)


def patch_views(block: np.ndarray, rows: Sequence[int], cols: Sequence[int], patch_size: int) -> list[np.ndarray]:
    """Views (no copy) of the patches at local patch positions ``(rows[k], cols[k])`` of a (..., H, W) block."""
    p = patch_size
    return [block[..., r * p : (r + 1) * p, c * p : (c + 1) * p] for r, c in zip(rows, cols)]


def patch_mask(shape: tuple[int, int], rows: Sequence[int], cols: Sequence[int], patch_size: int) -> np.ndarray:
    """(H, W) bool: True on the pixels of the patches at ``(rows[k], cols[k])``."""
    p = patch_size
    mask = np.zeros(shape, dtype=bool)
    for r, c in zip(rows, cols):
        mask[r * p : (r + 1) * p, c * p : (c + 1) * p] = True
    return mask


def cut_patches(block: np.ndarray, rows: Sequence[int], cols: Sequence[int], patch_size: int) -> np.ndarray:
    """Stack the patches at local patch positions ``(rows[k], cols[k])`` of a (..., H, W) block."""
    p = patch_size
    out = [block[..., r * p : (r + 1) * p, c * p : (c + 1) * p] for r, c in zip(rows, cols)]
    if not out:
        return np.zeros((0,) + block.shape[:-2] + (p, p), dtype=block.dtype)
    return np.stack(out)


@dataclass
class Moments:
    """Per-band pooled count, mean and sum of squared deviations (Chan et al. combination)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray = field(default=None)  # type: ignore[assignment]

    @classmethod
    def zeros(cls, n_bands: int) -> "Moments":
        return cls(np.zeros(n_bands, np.int64), np.zeros(n_bands), np.zeros(n_bands))

    @classmethod
    def of(cls, s2: np.ndarray, clear: np.ndarray, step: int = 1) -> "Moments":
        """Moments of ``s2`` (k, T, B, y, x) uint16 over pixels that are clear (k, T, y, x) and > 0.

        ``step`` > 1 takes every ``step``-th pixel along y and x (a regular spatial sample, the
        same for every band and date). Exact: a histogram of the DNs per band (``bincount`` over
        the 65536 values) gives the count, sum and sum of squares as integers, and the moments
        are formed from them with Python integers (one rounding, no float64 copy of the pixels).
        """
        nb = s2.shape[2]
        out = cls.zeros(nb)
        values = np.arange(65536, dtype=np.int64)
        sel = (..., slice(None, None, step), slice(None, None, step))
        mask = clear[sel]
        for b in range(nb):
            x = np.where(mask, s2[:, :, b][sel], np.uint16(0))
            hist = np.bincount(x.ravel(), minlength=65536).astype(np.int64)
            hist[0] = 0  # nodata and cloudy pixels
            n = int(hist.sum())
            if n:
                s = int(hist @ values)
                ss = int(hist @ (values * values))
                out.count[b] = n
                out.mean[b] = s / n
                out.m2[b] = (ss * n - s * s) / n
        return out

    def __add__(self, other: "Moments") -> "Moments":
        n = self.count + other.count
        safe = np.where(n > 0, n, 1)
        delta = other.mean - self.mean
        mean = np.where(n > 0, self.mean + delta * other.count / safe, 0.0)
        m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / safe
        return Moments(n, mean, m2)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / np.where(self.count > 0, self.count, 1))

    def to_dict(self) -> dict:
        return {"count": self.count.tolist(), "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Moments":
        return cls(np.asarray(d["count"], np.int64), np.asarray(d["mean"], float), np.asarray(d["m2"], float))


def assign_splits(
    keys: Sequence[tuple], weights: Sequence[int], ratios: Sequence[float], seed: int
) -> dict[tuple, int]:
    """Assign spatial blocks to splits so that patch counts follow ``ratios``.

    Blocks are visited in a seeded random order; each goes to the split furthest below its
    target share. Deterministic for a given seed and set of blocks.

    Parameters
    ----------
    keys : block identifiers (sortable tuples)
    weights : number of patches in each block
    ratios : target shares of the splits (e.g. 0.7, 0.15, 0.15)

    Returns
    -------
    dict block key -> split index
    """
    ratios = np.asarray(ratios, dtype=float)
    ratios = ratios / ratios.sum()
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    rng = np.random.default_rng(seed)
    order = [order[i] for i in rng.permutation(len(order))]
    filled = np.zeros(len(ratios))
    out: dict[tuple, int] = {}
    total = 0
    for i in order:
        total += weights[i]
        deficit = ratios * total - filled
        s = int(np.argmax(deficit))
        out[keys[i]] = s
        filled[s] += weights[i]
    return out
