"""Sliding-window inference kernels (pure numpy/torch: no dask, xarray or I/O).

The pieces of whole-tile inference, each testable on its own:

* :func:`preprocess` and :func:`date_positions` (from :mod:`.dates`): *the* model input transform,
  shared by training (the torch ``Dataset``) and inference so that a model is always fed the way
  it was trained;
* :func:`plan_axis`: where the ``size`` x ``size``
  windows sit. Windows are planned once on the *global* grid of the scene (origins ``0, stride,
  2 * stride, ...``, the last one shifted back to end exactly on the edge, never dropped), so the
  windows -- and therefore the predictions -- do not depend on how the scene is chunked;
* :func:`blend_weights`: separable ramp weights that fall off towards window edges (with a floor
  > 0, so a pixel covered by a single window edge still gets a prediction);
* :func:`owner_of` / :func:`owned_windows` / :func:`owned_halo`: each window belongs to the one
  block holding its origin, so a chunked run computes every window exactly once and a block's
  halo reaches only forward;
* :func:`accumulate_windows`: run a model over windows in batches, softmax, and add the weighted
  probabilities into accumulators in place.

Pixel convention: array index ``[..., i, j]``; a window with origin ``(r, c)`` covers rows
``r .. r + size - 1`` and columns ``c .. c + size - 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .dates import date_positions

__all__ = [
    "accumulate_windows",
    "blend_weights",
    "classes_of",
    "confidence_of",
    "date_positions",
    "masked_softmax",
    "owned_halo",
    "owned_windows",
    "owner_of",
    "plan_axis",
    "preprocess",
]


# ----------------------------------------------------------------------------- model inputs


def preprocess(
    s2: np.ndarray, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray, out: np.ndarray | None = None,
) -> np.ndarray:
    """Standardize uint16 DN reflectance per band: ``(x - mean) / std`` as float32.

    Parameters
    ----------
    s2
        ``(..., time, band, y, x)`` reflectance DN (uint16; 0 = nodata is standardized like any
        value, exactly as during training).
    mean, std
        Per-band statistics (``band`` entries, in the order of the band axis). A ``std`` of 0
        (a constant band) is replaced by 1.

    out
        Optional float32 array of ``s2``'s shape to write into (may be ``s2`` itself when that is
        float32 already): no temporary is allocated. Same arithmetic, bit for bit.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape (``out`` when given).
    """
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    if mean.ndim != 1 or mean.shape != std.shape:
        raise ValueError(f"mean and std must be 1-D of equal length, got {mean.shape} and {std.shape}")
    if s2.ndim < 4 or s2.shape[-3] != mean.size:
        raise ValueError(f"s2 must be (..., time, band, y, x) with {mean.size} bands, got {s2.shape}")
    std = np.where(std > 0, std, np.float32(1.0)).astype(np.float32)
    if out is None:
        x = np.asarray(s2, dtype=np.float32)
        return (x - mean[:, None, None]) / std[:, None, None]
    if out.dtype != np.float32 or out.shape != s2.shape:
        raise ValueError(f"out must be float32 of shape {s2.shape}, got {out.dtype} {out.shape}")
    np.subtract(s2, mean[:, None, None], out=out, dtype=np.float32)
    np.divide(out, std[:, None, None], out=out)
    return out


# ----------------------------------------------------------------------------- window planning


def plan_axis(n: int, size: int, stride: int) -> np.ndarray:
    """Window origins along an axis of ``n`` pixels: ``0, stride, ...``, last one ending at ``n``.

    Every pixel is covered. When ``n <= size`` there is one window at 0 (which extends beyond
    ``n`` when ``n < size``: the caller pads the data).
    """
    if size < 1 or not 1 <= stride <= size:
        raise ValueError(f"need 1 <= stride <= size, got size={size}, stride={stride}")
    if n < 1:
        raise ValueError(f"axis length must be >= 1, got {n}")
    if n <= size:
        return np.zeros(1, dtype=np.int64)
    last = n - size
    origins = np.arange(0, last + 1, stride, dtype=np.int64)
    if origins[-1] != last:
        origins = np.append(origins, last)  # shifted back to the edge, never dropped
    return origins


def owner_of(origins: np.ndarray, size: int, bounds: Sequence[int]) -> np.ndarray:
    """The block owning each window: the one holding its origin (top/left) pixel.

    Every window belongs to exactly one block, so a chunked run computes each window once
    (windows straddling a block edge are not run by both blocks). A block's windows then reach
    only forward (down/right), by less than ``size``: its haloed read is the block plus the next
    ``size - 1`` pixels, which on block-aligned chunks touches 2 x 2 file tiles instead of the
    3 x 3 a centred halo would (each tile is decompressed whole).
    """
    origins = np.asarray(origins, dtype=np.int64)
    b = np.asarray(bounds, dtype=np.int64)
    return np.searchsorted(b, np.minimum(origins, b[-1] - 1), side="right") - 1


def owned_windows(origins: np.ndarray, size: int, bounds: Sequence[int], block: int) -> np.ndarray:
    """The origins owned by block number ``block`` (see :func:`owner_of`), in order."""
    origins = np.asarray(origins, dtype=np.int64)
    return origins[owner_of(origins, size, bounds) == block]


def owned_halo(origins: np.ndarray, size: int, bounds: Sequence[int]) -> tuple[int, int]:
    """(before, after): how far the windows *owned* by any block reach beyond that block.

    ``before`` is 0 and ``after`` at most ``size - 1`` (a window's origin lies in its block) --
    the overlap depth of the one-owner scheme, and how far a block's blended sums spill into its
    neighbours.
    """
    origins = np.asarray(origins, dtype=np.int64)
    own = owner_of(origins, size, bounds)
    before = after = 0
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        w = origins[own == k]
        if w.size:
            before = max(before, int(a - w.min()))
            after = max(after, int(w.max() + size - b))
    return before, after


def blend_weights(size: int, overlap: int, floor: float = 0.05) -> np.ndarray:
    """``(size, size)`` float32 weights: 1 in the middle, a linear ramp over ``overlap`` pixels
    at each edge down to ``floor`` (> 0); the outer product of a 1-D ramp.

    ``w1(i) = clip((min(i, size - 1 - i) + 1) / (overlap + 1), floor, 1)``.
    """
    if not 0 < floor <= 1:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    i = np.arange(size, dtype=np.float64)
    d = np.minimum(i, size - 1 - i) + 1
    w1 = np.clip(d / (max(int(overlap), 0) + 1), floor, 1.0)
    return np.outer(w1, w1).astype(np.float32)


# ----------------------------------------------------------------------------- inference


def masked_softmax(logits, ignore_index: int | None = None):
    """Softmax over the class axis (1) of a torch tensor; ``ignore_index`` gets probability 0."""
    import torch

    if ignore_index is not None and 0 <= ignore_index < logits.shape[1]:
        logits = logits.clone()
        logits[:, ignore_index] = float("-inf")
    return torch.softmax(logits.float(), dim=1)


def accumulate_windows(
    s2: np.ndarray,
    positions: np.ndarray,
    forward: Callable,
    *,
    mean: np.ndarray,
    std: np.ndarray,
    windows: Sequence[tuple[int, int]],
    size: int,
    weights: np.ndarray,
    acc: np.ndarray,
    wsum: np.ndarray,
    origin: tuple[int, int] = (0, 0),
    batch_size: int = 8,
    ignore_index: int | None = None,
    device=None,
) -> int:
    """Run ``forward`` over ``windows`` of ``s2`` in batches and add their weighted softmax
    probabilities into ``acc`` (and the weights into ``wsum``), in place.

    Per batch: the windows are copied straight into one float32 buffer and standardized in
    place (:func:`preprocess` with ``out``), the forward and softmax run under
    ``torch.inference_mode``, the blend weights multiply the batch's probabilities in place,
    and each window's part inside ``acc`` is added in place (no temporaries of the block's
    size; ``acc``/``wsum`` may be float32 or float64).

    Parameters
    ----------
    s2
        ``(time, band, h, w)`` block; window origins are local to it.
    positions
        ``(time,)`` float32 days since the model's reference date.
    forward
        ``forward(x, positions) -> logits``: x ``(n, time, band, size, size)`` float32 tensor,
        positions ``(n, time)``; logits ``(n, class, size, size)``.
    mean, std
        Per-band normalization (see :func:`preprocess`).
    windows
        ``(row, col)`` local origins, accumulated in this order.
    size, weights
        Window side and its ``(size, size)`` blend weights (:func:`blend_weights`).
    acc, wsum
        ``(class, H, W)`` and ``(H, W)`` accumulators; ``acc[:, 0, 0]`` is pixel ``origin`` of
        ``s2``. Window parts outside them are dropped.
    batch_size, ignore_index, device
        Windows per forward pass, class never predicted (probability 0), torch device.

    Returns
    -------
    int
        The number of windows run.
    """
    import torch

    h, w = s2.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"block {h}x{w} is smaller than the {size} px window; pad it first")
    oy, ox = origin
    H, W = wsum.shape
    wins = [(int(r), int(c)) for r, c in windows]
    if not wins:
        return 0
    pos = torch.from_numpy(np.asarray(positions, dtype=np.float32))
    wt = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))
    buf = np.empty((min(batch_size, len(wins)), *s2.shape[:-2], size, size), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, len(wins), batch_size):
            part = wins[s : s + batch_size]
            n = len(part)
            xb = buf[:n]
            for k, (r, c) in enumerate(part):
                xb[k] = s2[..., r : r + size, c : c + size]  # uint16 -> float32, no stacked copy
            x = torch.from_numpy(preprocess(xb, mean, std, out=xb))
            bp = pos[None].expand(n, -1)
            if device is not None and torch.device(device).type != "cpu":
                x, bp = x.to(device), bp.to(device)
            logits = forward(x, bp).float()
            if ignore_index is not None and 0 <= ignore_index < logits.shape[1]:
                logits[:, ignore_index] = float("-inf")  # in place: an inference tensor we own
            prob = torch.softmax(logits, dim=1)
            prob.mul_(wt.to(prob.device))  # weighted, in place (elementwise: same values as p * w)
            prob = prob.cpu().numpy()
            for k, (r, c) in enumerate(part):
                # intersection of the window with the accumulator, in accumulator coordinates
                y0, y1 = max(r, oy), min(r + size, oy + H)
                x0, x1 = max(c, ox), min(c + size, ox + W)
                if y0 >= y1 or x0 >= x1:
                    continue
                dst = acc[:, y0 - oy : y1 - oy, x0 - ox : x1 - ox]
                np.add(dst, prob[k, :, y0 - r : y1 - r, x0 - c : x1 - c], out=dst)
                dws = wsum[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
                np.add(dws, weights[y0 - r : y1 - r, x0 - c : x1 - c], out=dws)
    return len(wins)


def classes_of(probabilities: np.ndarray) -> np.ndarray:
    """``(class, y, x)`` probabilities -> ``(y, x)`` uint8 class ids (first maximum on ties)."""
    return np.argmax(probabilities, axis=0).astype(np.uint8)


def confidence_of(probabilities: np.ndarray) -> np.ndarray:
    """``(class, y, x)`` probabilities -> ``(y, x)`` uint8 ``round(255 * max probability)``."""
    return np.rint(np.clip(probabilities.max(axis=0), 0.0, 1.0) * 255.0).astype(np.uint8)
