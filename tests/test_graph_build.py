"""The build's pass-1 task bodies: grouping chunks into one SCL read changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crop2seg_pipeline.blocks import cube_source
from crop2seg_pipeline.cube import cube_grid_of, load_cube
from crop2seg_pipeline.graph.build import chunk_windows, group_windows, pass1_chunks
from crop2seg_pipeline.items import normalize_items
from crop2seg_pipeline.nomenclature import DEFAULT_UNCLEAR_SCL

PROPERTY = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def source(small_scene):
    cube = load_cube(small_scene.items, chunksize=128)
    return cube_source(normalize_items(small_scene.items), cube_grid_of(cube))


@PROPERTY
@given(chunk=st.sampled_from([32, 48, 64, 96]), group=st.sampled_from([32, 100, 128, 256, 1024]))
def test_groups_cover_every_chunk_once(chunk, group):
    windows = chunk_windows(250, 230, chunk)
    groups = group_windows(windows, group)
    keys = [k for g in groups.values() for k in g]
    assert sorted(keys) == sorted(windows) and len(keys) == len(set(keys))
    for cell, members in groups.items():
        assert all((w[0] // group, w[2] // group) == cell for w in members.values())
    if group <= chunk:  # a chunk at least as large as a group is a group of its own
        assert all(len(g) == 1 for g in groups.values())


@PROPERTY
@given(chunk=st.sampled_from([32, 64, 96]), patch=st.sampled_from([16, 32]))
def test_a_group_gives_each_chunk_what_it_alone_gives(source, chunk, patch):
    windows = chunk_windows(*source.grid.shape, chunk)
    rng = np.random.default_rng(chunk + patch)
    labels = {k: rng.integers(0, 15, (w[1] - w[0], w[3] - w[2])).astype(np.uint8) for k, w in windows.items()}
    for members in group_windows(windows, 128).values():
        keys = list(members)
        together = pass1_chunks(source, [members[k] for k in keys], [labels[k] for k in keys], patch_size=patch,
                                unclear=DEFAULT_UNCLEAR_SCL)
        for k, got in zip(keys, together):
            (alone,) = pass1_chunks(source, [members[k]], [labels[k]], patch_size=patch, unclear=DEFAULT_UNCLEAR_SCL)
            assert got.keys() == alone.keys()
            for name in got:
                np.testing.assert_array_equal(got[name], alone[name], err_msg=f"{name} of chunk {k}")
