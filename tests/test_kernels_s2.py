"""The SCL clear-sky mask: a lookup table, equal to the set test it replaces."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from crop2seg_pipeline.kernels.s2 import clear_mask
from crop2seg_pipeline.nomenclature import DEFAULT_UNCLEAR_SCL


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from([np.uint8, np.uint16, np.int32]),
    unclear=st.lists(st.integers(0, 300), max_size=8),
    seed=st.integers(0, 2**16),
    top=st.sampled_from([11, 15, 16, 255, 300]),  # SCL's 0..11 (a shift of one 16-bit word), or any value
)
def test_clear_mask_equals_isin(dtype, unclear, seed, top):
    top = min(top, 255) if dtype == np.uint8 else top
    scl = np.random.default_rng(seed).integers(0, top + 1, (3, 7, 5)).astype(dtype)
    got = clear_mask(scl, unclear)
    assert got.dtype == bool and got.shape == scl.shape
    expected = ~np.isin(scl.astype(np.int64), np.asarray(unclear, np.int64))
    np.testing.assert_array_equal(got, expected)


def test_clear_mask_default_classes():
    scl = np.arange(12, dtype=np.uint8)[None, None]
    clear = clear_mask(scl, DEFAULT_UNCLEAR_SCL)
    assert set(np.flatnonzero(~clear[0, 0]).tolist()) == set(DEFAULT_UNCLEAR_SCL)
