"""Cutting an area into model chunks: the queue model and the balanced chunk side."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from crop2seg_pipeline.kernels.chunking import (
    axis_chunks,
    balanced_chunksize,
    chunk_costs,
    queue_makespan,
)
from crop2seg_pipeline.kernels.windows import plan_axis

PROPERTY = settings(max_examples=60, deadline=None)


@PROPERTY
@given(costs=st.lists(st.floats(0.1, 50), min_size=1, max_size=40), workers=st.integers(1, 6),
       slots=st.integers(1, 3))
def test_makespan_bounds(costs, workers, slots):
    t = queue_makespan(costs, workers, slots)
    assert t >= max(costs) - 1e-9 and t >= sum(costs) / workers - 1e-9
    assert t <= sum(costs) + 1e-9
    if workers == 1:
        assert np.isclose(t, sum(costs))


def test_the_queue_that_unbalanced_512px():
    # 2 x 2 chunks of 256 px owning 9, 6, 6 and 4 windows, two one-thread workers holding two
    # tasks each: 9 + 6 on one, 6 + 4 on the other (what the task stream of a 512 px predict showed)
    assert queue_makespan([9, 6, 6, 4], 2) == 15
    assert queue_makespan([9, 6, 6, 4], 2, slots=1) == 13  # one task at a time: largest first balances


@PROPERTY
@given(n=st.integers(1, 3000), size=st.integers(16, 1024), minimum=st.integers(16, 256))
def test_axis_chunks_cover_the_axis_none_below_the_minimum(n, size, minimum):
    chunks = axis_chunks(n, size, minimum)
    assert sum(chunks) == max(n, minimum)
    assert min(chunks) >= min(minimum, max(n, minimum))


@PROPERTY
@given(h=st.integers(64, 2500), w=st.integers(64, 2500), patch=st.sampled_from([32, 64, 128]),
       overlap_share=st.sampled_from([0.0, 0.25, 0.5]), size=st.sampled_from([256, 512]))
def test_chunk_costs_count_every_window_once(h, w, patch, overlap_share, size):
    stride = patch - int(patch * overlap_share)
    costs = chunk_costs(h, w, size, patch, stride, task_cost=0.0)
    n = len(plan_axis(max(h, patch), patch, stride)) * len(plan_axis(max(w, patch), patch, stride))
    assert sum(costs) == n


@PROPERTY
@given(h=st.integers(64, 3000), w=st.integers(64, 3000), threads=st.integers(1, 8))
def test_the_balanced_side_is_never_slower_and_at_least_a_window(h, w, threads):
    P, stride, chunk = 128, 96, 512
    side = balanced_chunksize(h, w, chunk, P, stride, threads)
    assert P <= side <= chunk
    before = queue_makespan(chunk_costs(h, w, chunk, P, stride), threads)
    after = queue_makespan(chunk_costs(h, w, side, P, stride), threads)
    assert after <= before + 1e-9
    if threads == 1:
        assert side == chunk
