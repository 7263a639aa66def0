"""Shared fixtures: small deterministic demo scenes generated once per test session."""

from __future__ import annotations

import pytest

from crop2seg_pipeline.demo import make_demo_scene


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory):
    """A 256 x 256 px, 8-date demo scene (fast; used by item, cube and label tests)."""
    return make_demo_scene(tmp_path_factory.mktemp("scene-small"), size=256, n_dates=8, seed=1)


@pytest.fixture(scope="session")
def demo_scene(tmp_path_factory):
    """A 512 x 512 px, 10-date demo scene (build tests)."""
    return make_demo_scene(tmp_path_factory.mktemp("scene-demo"), size=512, n_dates=10, seed=2)
