"""Properties of the window kernels: planning covers every pixel, one owner per window, and
blending over owned windows is independent of the chunking."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crop2seg_pipeline.kernels.windows import (
    accumulate_windows,
    blend_weights,
    owned_halo,
    owned_windows,
    owner_of,
    plan_axis,
)

PROPERTY = settings(max_examples=60, deadline=None)


@st.composite
def axes(draw, max_n: int = 600):
    """(n, size, stride, chunk bounds) of one axis: every chunk at least one window long."""
    size = draw(st.integers(4, 40))
    n = draw(st.integers(1, max_n))
    stride = draw(st.integers(1, size))
    cuts: list[int] = []
    pos = 0
    while n - pos >= 2 * size and draw(st.booleans()):
        pos = draw(st.integers(pos + size, n - size))
        cuts.append(pos)
    return n, size, stride, [0, *cuts, max(n, size)]


@PROPERTY
@given(axes())
def test_plan_covers_every_pixel_and_ends_on_the_edge(axis):
    n, size, stride, _ = axis
    o = plan_axis(n, size, stride)
    covered = np.zeros(max(n, size), int)
    for v in o:
        covered[v : v + size] += 1
    assert (covered[:n] > 0).all()
    assert o[0] == 0 and (o[-1] + size == n if n >= size else o[-1] == 0)
    assert np.all(np.diff(o) > 0) and np.all(np.diff(o) <= stride)


@PROPERTY
@given(axes())
def test_every_window_has_one_owner_holding_its_origin(axis):
    n, size, stride, bounds = axis
    o = plan_axis(n, size, stride)
    owners = owner_of(o, size, bounds)
    per_block = [owned_windows(o, size, bounds, k) for k in range(len(bounds) - 1)]
    assert sorted(np.concatenate(per_block).tolist()) == sorted(o.tolist())  # each window exactly once
    before, after = owned_halo(o, size, bounds)
    assert before == 0 and 0 <= after < size
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        w = per_block[k]
        assert np.all(owners[np.isin(o, w)] == k)
        assert np.all((w >= a) & (w < b))  # the origin lies in the block
        assert np.all(w + size <= b + after)  # the halo reaches every owned window


def _forward(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in model: 3 classes from local band values (any shape-correct map)."""
    m = x.mean(dim=1)  # (n, band, y, x)
    return torch.stack([m[:, 0], m[:, 1] - m[:, 0], 0.5 * m[:, 0] * m[:, 1]], dim=1)


@st.composite
def chunked_axis(draw, size: int, max_n: int = 90):
    """(n, chunk bounds) of an area axis of at least one window, every chunk at least one window."""
    n = draw(st.integers(size, max_n))
    cuts: list[int] = []
    pos = 0
    while n - pos >= 2 * size and draw(st.booleans()):
        pos = draw(st.integers(pos + size, n - size))
        cuts.append(pos)
    return n, [0, *cuts, n]


@st.composite
def blending_cases(draw):
    size = draw(st.integers(4, 16))
    return size, draw(st.integers(0, size - 1)), draw(chunked_axis(size)), draw(chunked_axis(size))


@settings(max_examples=15, deadline=None)
@given(case=blending_cases(), seed=st.integers(0, 2**16))
def test_blending_owned_windows_is_independent_of_the_chunking(case, seed):
    """Sums of each block's owned windows over its haloed block, added up, equal the whole-area run."""
    size, overlap, (H, yb), (W, xb) = case
    stride = size - overlap
    rng = np.random.default_rng(seed)
    s2 = rng.integers(1, 3000, (2, 2, H, W)).astype(np.uint16)
    rows, cols = plan_axis(H, size, stride), plan_axis(W, size, stride)
    kw = dict(mean=np.zeros(2), std=np.ones(2) * 1000, size=size, weights=blend_weights(size, overlap), batch_size=3)
    pos = np.arange(2, dtype=np.float32)

    whole_acc, whole_w = np.zeros((3, H, W)), np.zeros((H, W))
    accumulate_windows(s2, pos, _forward, windows=[(r, c) for r in rows for c in cols], acc=whole_acc,
                       wsum=whole_w, **kw)
    acc, wsum = np.zeros((3, H, W)), np.zeros((H, W))
    dy, dx = owned_halo(rows, size, yb)[1], owned_halo(cols, size, xb)[1]
    for i in range(len(yb) - 1):
        for j in range(len(xb) - 1):
            y0, y1 = yb[i], min(yb[i + 1] + dy, H)
            x0, x1 = xb[j], min(xb[j + 1] + dx, W)
            r = owned_windows(rows, size, yb, i) - y0
            c = owned_windows(cols, size, xb, j) - x0
            a, w = np.zeros((3, y1 - y0, x1 - x0)), np.zeros((y1 - y0, x1 - x0))
            accumulate_windows(s2[..., y0:y1, x0:x1], pos, _forward, windows=[(p, q) for p in r for q in c],
                               acc=a, wsum=w, **kw)
            acc[:, y0:y1, x0:x1] += a
            wsum[y0:y1, x0:x1] += w
    assert (wsum > 0).all()
    np.testing.assert_allclose(wsum, whole_w, rtol=1e-12)
    np.testing.assert_allclose((acc / wsum).astype(np.float32), (whole_acc / whole_w).astype(np.float32),
                               rtol=0, atol=1e-6)
