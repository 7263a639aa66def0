"""Tests of crop2seg_pipeline.parcels: reading, validating, repairing and mapping LPIS parcels."""

from __future__ import annotations

import logging
import re
import warnings

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from parcel_cases import X0, Y0, utm_parcels, write_parcels_gpkg
from crop2seg_pipeline.errors import CRSError, Crop2SegError, ParcelError, ReadError
from crop2seg_pipeline.parcels import ParcelReport, read_parcels

# rasterio sometimes emits a spurious NotGeoreferencedWarning when several threads rasterize
# into MEM datasets at once (results are unaffected; see opendatacube/odc-geo#131).
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.fixture
def parcels_gpkg(tmp_path):
    return write_parcels_gpkg(tmp_path)


# --------------------------------------------------------------------------------------------
# Geometry checks and formats
# --------------------------------------------------------------------------------------------
def test_repair_and_drop(tmp_path, caplog):
    bowtie = shapely.Polygon(
        [(X0 + 100, Y0 - 100), (X0 + 500, Y0 - 500), (X0 + 500, Y0 - 100), (X0 + 100, Y0 - 500)]
    )
    assert not bowtie.is_valid
    gdf = gpd.GeoDataFrame(
        {"ID_DPB": [1, 2, 3, 4, 5], "KOD_PLODINY": ["PSE_O", "TTP", "TTP", "TTP", "KUK_S"]},
        geometry=[bowtie, shapely.Polygon(), None, shapely.Point(X0 + 5, Y0 - 5),
                  shapely.box(X0 + 600, Y0 - 700, X0 + 900, Y0 - 600)],
        crs=32633,
    )
    path = tmp_path / "dirty.gpkg"
    gdf.to_file(path)
    with caplog.at_level(logging.INFO, logger="crop2seg_pipeline.parcels"):
        parcels, report = read_parcels(path, target_crs="EPSG:32633")
    assert report.n_read == 5
    assert report.n_repaired == 1
    assert report.n_dropped_empty == 2
    assert report.n_dropped_non_polygon == 1
    assert report.n_kept == 2
    assert parcels["parcel_id"].tolist() == [1, 5]
    repaired = parcels.geometry.iloc[0]
    assert repaired.is_valid and repaired.geom_type in ("Polygon", "MultiPolygon")
    assert repaired.area == pytest.approx(2 * 400 * 200 / 2, rel=1e-6)  # two triangles
    assert "repaired 1 invalid" in caplog.text and "non-polygon" in caplog.text


def test_only_non_polygons_is_an_error(tmp_path):
    gdf = gpd.GeoDataFrame({"ID_DPB": [1], "KOD_PLODINY": ["TTP"]},
                           geometry=[shapely.LineString([(0, 0), (1, 1)])], crs=32633)
    gdf.to_file(tmp_path / "lines.gpkg")
    with pytest.raises(ParcelError, match="no polygon geometries"):
        read_parcels(tmp_path / "lines.gpkg")


def test_formats_read_the_same(tmp_path):
    gdf = utm_parcels().to_crs(5514)
    gpkg, geojson, shp, parquet, fgb = (
        tmp_path / n for n in ("p.gpkg", "p.geojson", "p.shp", "p.parquet", "p.fgb")
    )
    gdf.to_file(gpkg)
    gdf.to_file(geojson, driver="GeoJSON")
    with warnings.catch_warnings():  # KOD_PLODINY is cut to KOD_PLODIN in a DBF
        warnings.simplefilter("ignore")
        gdf.to_file(shp)
    gdf.to_parquet(parquet)
    gdf.to_file(fgb, driver="FlatGeobuf")
    base, base_report = read_parcels(gpkg, target_crs=32633)
    for path in (geojson, shp, parquet, fgb):
        other, report = read_parcels(path, target_crs=32633)
        assert report == base_report, path
        # FlatGeobuf's spatial index reorders features: compare in id order
        other = other.sort_values("parcel_id").set_index(base.index[np.argsort(base["parcel_id"])])
        other = other.loc[base.index]
        pd.testing.assert_frame_equal(
            pd.DataFrame(other.drop(columns="geometry")),
            pd.DataFrame(base.drop(columns="geometry")),
        )
        assert other.crs == base.crs
        # a Shapefile turns exterior rings clockwise: compare normalized coordinates
        assert shapely.equals_exact(shapely.normalize(other.geometry.values),
                                    shapely.normalize(base.geometry.values),
                                    tolerance=1e-6).all(), path


def test_bbox_filters_parcels(parcels_gpkg):
    # the upper-left 1500 m square of the grid: some parcels cross it, some lie outside
    bbox = (X0, Y0 - 1500, X0 + 1500, Y0)
    parcels, report = read_parcels(parcels_gpkg, target_crs=32633, bbox=bbox)
    kept = set(parcels["parcel_id"])
    expected = {
        pid for pid, g in zip(utm_parcels()["ID_DPB"], utm_parcels().geometry)
        if g.intersects(shapely.box(*bbox))
    }
    assert kept == expected and 0 < len(kept) < 5
    assert report.n_kept == len(kept)
    assert report.n_read - report.n_outside == report.n_kept


def test_ids_not_usable_are_renumbered(tmp_path, caplog):
    gdf = utm_parcels()
    gdf["ID_DPB"] = ["a-1", "b-2", "c-3", "d-4", "e-5"]
    gdf.to_file(tmp_path / "strids.gpkg")
    with caplog.at_level(logging.WARNING, logger="crop2seg_pipeline.parcels"):
        parcels, report = read_parcels(tmp_path / "strids.gpkg")
    assert parcels["parcel_id"].tolist() == [1, 2, 3, 4, 5]
    assert parcels["source_id"].tolist() == ["a-1", "b-2", "c-3", "d-4", "e-5"]
    assert report.ids_renumbered and "source_id" in caplog.text


def test_too_large_ids_are_renumbered_and_duplicates_warned(tmp_path, caplog):
    gdf = utm_parcels()
    gdf["ID_DPB"] = [1, 2, 3, 4, 2**40]
    gdf.to_file(tmp_path / "big.gpkg")
    parcels, report = read_parcels(tmp_path / "big.gpkg")
    assert report.ids_renumbered and parcels["source_id"].tolist()[-1] == 2**40

    gdf["ID_DPB"] = [1, 2, 2, 4, 5]
    gdf.to_file(tmp_path / "dup.gpkg")
    with caplog.at_level(logging.WARNING, logger="crop2seg_pipeline.parcels"):
        parcels, report = read_parcels(tmp_path / "dup.gpkg")
    assert parcels["parcel_id"].tolist() == [1, 2, 2, 4, 5]
    assert report.n_duplicate_ids == 2 and "duplicate ids" in caplog.text


# --------------------------------------------------------------------------------------------
# Bad inputs: each a clear error
# --------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.gpkg"
    with pytest.raises(ReadError, match="not found: .*nowhere.gpkg"):
        read_parcels(path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.gpkg"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ReadError, match="corrupt.gpkg"):
        read_parcels(path)
    pq = tmp_path / "corrupt.parquet"
    pq.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(ReadError, match="corrupt.parquet"):
        read_parcels(pq)


def test_empty_layer(tmp_path):
    path = tmp_path / "empty.gpkg"
    gpd.GeoDataFrame(
        {"ID_DPB": np.array([], "int64"), "KOD_PLODINY": np.array([], object)},
        geometry=gpd.GeoSeries([], crs=5514),
    ).to_file(path)
    with pytest.raises(ParcelError, match="empty.gpkg is empty"):
        read_parcels(path)


def test_missing_crop_column(parcels_gpkg):
    with pytest.raises(ParcelError) as info:
        read_parcels(parcels_gpkg, crop_column="PLODINA")
    msg = str(info.value)
    assert "'PLODINA'" in msg and "--crop-column" in msg
    assert "['ID_DPB', 'KOD_PLODINY', 'NAZEV_PLODINY']" in msg
    with pytest.raises(ParcelError, match="--id-column"):
        read_parcels(parcels_gpkg, id_column="ID")


def test_parcels_not_overlapping_the_scene(parcels_gpkg):
    far = (700_000.0, 5_000_000.0, 710_000.0, 5_010_000.0)
    with pytest.raises(ParcelError, match="do not overlap the scene") as info:
        read_parcels(parcels_gpkg, target_crs=32633, bbox=far)
    msg = str(info.value)
    assert "scene bbox (700000.0, 5000000.0, 710000.0, 5010000.0)" in msg
    assert "EPSG:32633" in msg
    # the parcels' own extent is given in the same CRS (UTM metres around the grid)
    extent = re.search(r"parcels extent \(([^)]*)\)", msg).group(1)
    got = np.array([float(v) for v in extent.split(",")])
    # (the file's EPSG:5514 envelope transformed to UTM: a slightly larger box, as the two
    # CRSs are rotated against each other)
    true = utm_parcels().total_bounds
    assert (got[:2] <= true[:2]).all() and (got[2:] >= true[2:]).all()
    np.testing.assert_allclose(got, true, atol=500)


def test_bbox_near_but_not_touching_parcels(parcels_gpkg):
    # inside the envelope of the rotated parcel (so the reader's pre-filter keeps it) but off
    # every parcel: only the precise filter finds that nothing overlaps
    rotated = utm_parcels().geometry.iloc[0]
    minx, _, _, maxy = rotated.bounds
    bbox = (minx + 1, maxy - 11, minx + 11, maxy - 1)
    assert not utm_parcels().intersects(shapely.box(*bbox)).any()
    with pytest.raises(ParcelError, match="do not overlap"):
        read_parcels(parcels_gpkg, target_crs=32633, bbox=bbox)


def test_file_without_crs(tmp_path):
    gdf = utm_parcels().set_crs(None, allow_override=True)
    path = tmp_path / "nocrs.shp"
    with warnings.catch_warnings():  # no CRS, long column names: pyogrio warns
        warnings.simplefilter("ignore")
        gdf.to_file(path)
    assert not path.with_suffix(".prj").exists()
    with pytest.raises(CRSError, match="ogr2ogr -a_srs"):
        read_parcels(path)


def test_errors_share_the_package_base():
    for exc in (ReadError, CRSError, ParcelError):
        assert issubclass(exc, Crop2SegError)
    assert ParcelReport(1, 0, 0, 1, 0, {}, {}).to_dict()["n_kept"] == 1
