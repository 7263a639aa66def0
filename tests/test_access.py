"""Read-time access: Planetary Computer-style signing against a loopback token endpoint, S3 paths."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from assetserver import remote_items, serve_assets, serve_tokens
from crop2seg_pipeline.access import AccessError, Signer, SigningConfig, redact, resolve_href
from crop2seg_pipeline.cube import load_cube
from crop2seg_pipeline.errors import ReadError

SECRET = "loopback-secret"


@pytest.fixture
def signing_env(monkeypatch):
    """Point the signer at loopback servers by configuration (environment), as a user would."""
    with serve_tokens(SECRET) as tokens:
        def configure(assets):
            monkeypatch.setenv("PC_SDK_SAS_URL", tokens.url)
            monkeypatch.setenv("CROP2SEG_SIGN_HOSTS", assets.host)
            return tokens
        yield configure


def _bbox(scene, n=64):
    g = scene.grid
    return (g.x0 + 320, g.y0 - 320 - n * 10, g.x0 + 320 + n * 10, g.y0 - 320)


def test_which_hrefs_are_signed():
    c = SigningConfig.from_env({})
    assert c.sas_url.startswith("https://planetarycomputer.microsoft.com/api/sas/v1/token")
    assert c.needs_signing("https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/06/V/VN/x_B02_10m.tif")
    assert not c.needs_signing("https://sentinel2l2a01.blob.core.windows.net/c/x.tif?st=1&se=2&sp=r&sig=abc")
    assert not c.needs_signing("https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/B02.tif")
    assert not c.needs_signing("/data/B02.tif")
    c = SigningConfig.from_env({"CROP2SEG_SIGN_HOSTS": "127.0.0.1:8080, .example.org", "PC_SDK_SAS_URL": "http://t/token/"})
    assert c.needs_signing("http://127.0.0.1:8080/c/a.tif") and not c.needs_signing("http://127.0.0.1:8081/c/a.tif")
    assert c.needs_signing("https://a.example.org/c/x.tif") and c.sas_url == "http://t/token"
    assert redact("cannot read 'https://h/c/a.tif?se=1&sig=SECRET': 403") == "cannot read 'https://h/c/a.tif?<redacted>': 403"


def test_tokens_are_cached_per_container_and_renewed_before_expiry():
    with serve_tokens(SECRET, ttl_s=3600) as tokens:
        now = [time.time()]
        signer = Signer(SigningConfig(sas_url=tokens.url, hosts=("h.test",), refresh_margin_s=600), clock=lambda: now[0])
        a1 = signer.sign("https://h.test/c1/a.tif")
        a2 = signer.sign("https://h.test/c1/b.tif")
        assert a1.split("?")[1] == a2.split("?")[1] and len(tokens.requests) == 1  # one token per container
        signer.sign("https://h.test/c2/a.tif")
        assert len(tokens.requests) == 2 and tokens.requests[-1] == "/token/h.test/c2"
        now[0] += 3600 - 600 - 1  # still more than the margin left: cached
        signer.sign("https://h.test/c1/a.tif")
        assert len(tokens.requests) == 2
        now[0] += 2  # less than the margin left: renewed before it expires
        signer.sign("https://h.test/c1/a.tif")
        assert len(tokens.requests) == 3 and tokens.requests[-1] == "/token/h.test/c1"


def test_expired_and_refused_tokens_are_clear_errors():
    with serve_tokens(SECRET, ttl_s=-60) as tokens:
        signer = Signer(SigningConfig(sas_url=tokens.url, hosts=("h.test",)))
        with pytest.raises(AccessError, match="handed out a token that expired.*check the machine's clock"):
            signer.sign("https://h.test/c/a.tif")
        tokens.refuse = True
        with pytest.raises(AccessError, match="HTTP 403.*PC_SDK_SUBSCRIPTION_KEY"):
            Signer(SigningConfig(sas_url=tokens.url, hosts=("h.test",))).sign("https://h.test/c/a.tif")
    with pytest.raises(AccessError, match="cannot get a token from http://127.0.0.1:9/token"):
        Signer(SigningConfig(sas_url="http://127.0.0.1:9/token", hosts=("h.test",))).token("h.test", "c")


def test_cube_reads_signed_assets_and_never_keeps_the_token(small_scene, signing_env, caplog, monkeypatch):
    reference = load_cube(small_scene.items, bbox=_bbox(small_scene), bbox_crs=32633, chunksize=64).compute()
    with serve_assets(small_scene.root, "scene", secret=SECRET) as assets:
        items = remote_items(small_scene, assets.url)
        # without a signer configured for this host, the server refuses: a clear ReadError
        monkeypatch.delenv("CROP2SEG_SIGN_HOSTS", raising=False)
        with pytest.raises(ReadError, match=r"cannot read 'http://127\.0\.0\.1.*403"):
            load_cube(items, bbox=_bbox(small_scene), bbox_crs=32633, chunksize=64).compute()
        tokens = signing_env(assets)
        with caplog.at_level(logging.DEBUG):
            cube = load_cube(items, bbox=_bbox(small_scene), bbox_crs=32633, chunksize=64).compute()
        assert all(r["token"] for r in assets.requests[-5:])
    np.testing.assert_array_equal(cube["s2"].values, reference["s2"].values)
    np.testing.assert_array_equal(cube["scl"].values, reference["scl"].values)
    assert 1 <= len(tokens.requests) <= 4  # per-process cache: not one token per file
    assert all("sig=" not in a["href"] for it in items for a in it["assets"].values())  # items untouched
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("crop2seg_pipeline")]
    assert not any("sig=" in m for m in ours)  # (rasterio's own DEBUG log names datasets)


def test_s3_hrefs_become_gdal_paths_and_cdse_needs_its_endpoint(monkeypatch):
    monkeypatch.delenv("AWS_S3_ENDPOINT", raising=False)
    assert resolve_href("s3://sentinel-cogs/a/B02.tif") == "/vsis3/sentinel-cogs/a/B02.tif"
    with pytest.raises(AccessError, match="AWS_S3_ENDPOINT=eodata.dataspace.copernicus.eu"):
        resolve_href("s3://eodata/Sentinel-2/MSI/L2A/x.jp2")
    monkeypatch.setenv("AWS_S3_ENDPOINT", "eodata.dataspace.copernicus.eu")
    assert resolve_href("s3://eodata/Sentinel-2/MSI/L2A/x.jp2") == "/vsis3/eodata/Sentinel-2/MSI/L2A/x.jp2"
    assert resolve_href("/data/x.tif") == "/data/x.tif" and resolve_href("gs://b/k.tif") == "/vsigs/b/k.tif"
