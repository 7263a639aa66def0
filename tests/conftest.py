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


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-compatible server on loopback (moto, its own process; see ``tests/s3server.py``),
    with a bucket and the keys of a ``writer``, a read-only ``reader`` and an unknown ``nobody``.
    The writer's keys and the endpoint are in this process's environment from then on (so that
    in-process builds and the Dask workers this process starts use them, as on a cloud machine)."""
    from s3server import start_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("moto"))
    with pytest.MonkeyPatch.context() as mp:
        for k in ("AWS_PROFILE", "AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING"):
            mp.delenv(k, raising=False)
        for k, v in server.env("writer").items():
            mp.setenv(k, v)
        try:
            yield server
        finally:
            server.stop()
