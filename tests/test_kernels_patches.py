"""Patch kernels: views, masks and stacks agree; moments of a masked block equal those of its patches."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from crop2seg_pipeline.kernels.patches import Moments, cut_patches, patch_mask, patch_views


@st.composite
def blocks(draw):
    p = draw(st.sampled_from([2, 4, 8]))
    nr, nc = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    pos = draw(st.lists(st.tuples(st.integers(0, nr - 1), st.integers(0, nc - 1)), min_size=1, max_size=nr * nc,
                        unique=True))
    seed = draw(st.integers(0, 2**31 - 1))
    return p, nr, nc, pos, seed


@settings(max_examples=60, deadline=None)
@given(blocks())
def test_views_mask_and_moments(case):
    p, nr, nc, pos, seed = case
    rng = np.random.default_rng(seed)
    t, b = 3, 2
    block = rng.integers(1, 3000, size=(t, b, nr * p, nc * p)).astype(np.uint16)
    clear = rng.random((t, nr * p, nc * p)) > 0.3
    rows, cols = [r for r, _ in pos], [c for _, c in pos]

    stacked = cut_patches(block, rows, cols, p)
    views = patch_views(block, rows, cols, p)
    assert len(views) == len(pos)
    for k, v in enumerate(views):
        np.testing.assert_array_equal(v, stacked[k])
        assert np.shares_memory(v, block)  # a view, not a copy

    mask = patch_mask(block.shape[-2:], rows, cols, p)
    assert mask.sum() == len(pos) * p * p
    np.testing.assert_array_equal(cut_patches(mask, rows, cols, p), True)

    on_block = Moments.of(block[None], (clear & mask)[None], step=1)
    on_patches = Moments.of(stacked, cut_patches(clear, rows, cols, p), step=1)
    for name, value in on_block.to_dict().items():
        np.testing.assert_allclose(np.asarray(value, dtype=float), np.asarray(on_patches.to_dict()[name], dtype=float),
                                   rtol=1e-9, err_msg=name)
