"""Tests of crop2seg_pipeline.labels: reading parcels and per-chunk label rasterization."""

from __future__ import annotations

import json
import logging
import pickle
import re
import warnings

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio.features
import shapely
from shapely.affinity import rotate

from crop2seg_pipeline.errors import CRSError, Crop2SegError, ParcelError, ReadError
from crop2seg_pipeline.grid import Grid
from crop2seg_pipeline.kernels.rasterize import rasterize_parcels
from crop2seg_pipeline.labels import (
    CropMapping,
    ParcelReport,
    _ChunkParcels,
    rasterize_labels,
    read_parcels,
)
from crop2seg_pipeline.nomenclature import NOT_CLASSIFIED

# rasterio sometimes emits a spurious NotGeoreferencedWarning when several threads rasterize
# into MEM datasets at once (results are unaffected; see opendatacube/odc-geo#131).
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

GRID = Grid(32633, 505980.0, 5494020.0, 10.0, 256, 256)
X0, Y0 = GRID.x0, GRID.y0
#: Class ids the shipped mapping gives these codes, written out independently of the CSV.
EXPECTED_CLASS = {"PSE_O": 4, "KUK_S": 6, "TTP": 1, "REP_O": 5, "NOPE": NOT_CLASSIFIED}


def _utm_parcels() -> gpd.GeoDataFrame:
    """Irregular, non-overlapping parcels in UTM 33N; several cross the 64 and 100 px chunk
    borders (at 640 m / 1000 m from the corner), one sticks out of the grid."""
    polys = [
        rotate(shapely.box(X0 + 500, Y0 - 1200, X0 + 1400, Y0 - 300), 17),  # crosses 64 & 100
        shapely.Polygon(
            [(X0 + 1700, Y0 - 200), (X0 + 2300, Y0 - 260), (X0 + 2100, Y0 - 1300),
             (X0 + 1550, Y0 - 900)]
        ),
        shapely.Point(X0 + 900, Y0 - 1900).buffer(420),  # crosses the 1000/1280 m borders
        shapely.box(X0 + 2300, Y0 - 2700, X0 + 2700, Y0 - 1800),  # beyond the right edge
        shapely.box(X0 + 1604, Y0 - 1637, X0 + 1677, Y0 - 1583),  # tiny, inside one chunk
    ]
    return gpd.GeoDataFrame(
        {
            "ID_DPB": [101, 7, 55, 3000, 12],
            "KOD_PLODINY": ["PSE_O", "KUK_S", "TTP", "NOPE", "REP_O"],
            "NAZEV_PLODINY": ["pšenice", "kukuřice", "TTP", "?", "řepka"],
        },
        geometry=polys,
        crs=32633,
    )


@pytest.fixture
def parcels_gpkg(tmp_path):
    path = tmp_path / "dpb.gpkg"
    _utm_parcels().to_crs(5514).to_file(path)
    return path


def _reference(path) -> tuple[np.ndarray, np.ndarray]:
    """Independent expectation: geopandas reprojection + one rasterio.features.rasterize."""
    gdf = gpd.read_file(path).to_crs(GRID.epsg)
    label = rasterio.features.rasterize(
        [(g, EXPECTED_CLASS[c]) for g, c in zip(gdf.geometry, gdf["KOD_PLODINY"])],
        out_shape=GRID.shape, transform=GRID.transform, fill=0, dtype="uint8",
    )
    pid = rasterio.features.rasterize(
        list(zip(gdf.geometry, gdf["ID_DPB"])),
        out_shape=GRID.shape, transform=GRID.transform, fill=0, dtype="int32",
    )
    return label, pid


def _payloads(ds) -> dict[tuple[int, int], _ChunkParcels]:
    """The parcels embedded in each rasterization task of the graph, by block index."""
    out = {}
    for name, layer in ds["label"].data.dask.layers.items():
        if not name.startswith("rasterize-parcels"):
            continue
        for key, task in layer.items():
            args = task[1:] if isinstance(task, tuple) else getattr(task, "args", ())
            found = [a for a in args if isinstance(a, _ChunkParcels)]
            if not found:  # Task objects wrap literal arguments in DataNodes
                found = [getattr(a, "value", None) for a in args]
                found = [a for a in found if isinstance(a, _ChunkParcels)]
            assert len(found) == 1, f"no parcel payload in task {key}: {task!r}"
            out[key[1:]] = found[0]
    assert out, "no rasterization layer found in the graph"
    return out


# --------------------------------------------------------------------------------------------
# End to end: file in EPSG:5514 -> labels on a UTM grid
# --------------------------------------------------------------------------------------------
def test_read_and_rasterize_matches_independent_reference(parcels_gpkg):
    parcels, report = read_parcels(parcels_gpkg, target_crs=32633)
    assert parcels.crs.to_epsg() == 32633
    assert list(parcels.columns) == ["parcel_id", "crop_code", "class_id", "geometry"]
    assert parcels["parcel_id"].dtype == np.int32
    assert parcels["class_id"].dtype == np.uint8
    assert report.n_read == report.n_kept == 5

    ds = rasterize_labels(parcels, GRID, chunks=64)
    assert ds["label"].dims == ("y", "x") and ds["label"].dtype == np.uint8
    assert ds["parcel_id"].dtype == np.int32
    assert ds["label"].data.chunks == ((64,) * 4, (64,) * 4)
    assert ds.attrs["epsg"] == 32633 and "spatial_ref" not in ds.coords
    np.testing.assert_array_equal(ds["x"].values, GRID.x_coords())
    np.testing.assert_array_equal(ds["y"].values, GRID.y_coords())

    out = ds.compute()
    ref_label, ref_pid = _reference(parcels_gpkg)
    np.testing.assert_array_equal(out["label"].values, ref_label)
    np.testing.assert_array_equal(out["parcel_id"].values, ref_pid)
    # every parcel is actually burnt (the test would pass vacuously on an empty raster)
    assert set(np.unique(ref_pid)) == {0, 101, 7, 55, 3000, 12}
    assert set(np.unique(ref_label)) == {0, 4, 6, 1, 14, 5}


def test_chunk_invariance_with_overlaps_and_partial_chunks():
    gdf = _utm_parcels()
    # overlapping parcels straddling the 640 m and 1000 m chunk borders
    extra = gpd.GeoDataFrame(
        {"parcel_id": [500, 900, 40], "class_id": [3, 8, 13]},
        geometry=[
            shapely.box(X0 + 600, Y0 - 1100, X0 + 1100, Y0 - 600),
            shapely.Point(X0 + 1000, Y0 - 1000).buffer(300),
            shapely.box(X0 + 950, Y0 - 2000, X0 + 1800, Y0 - 1500),
        ],
        crs=32633,
    )
    parcels = pd.concat(
        [
            gpd.GeoDataFrame(
                {"parcel_id": gdf["ID_DPB"].astype("int32"), "class_id": np.uint8(2)},
                geometry=gdf.geometry, crs=32633,
            ),
            extra,
        ],
        ignore_index=True,
    )
    whole_label, whole_pid = rasterize_parcels(
        parcels.geometry.values, parcels["class_id"], parcels["parcel_id"],
        GRID.transform, GRID.shape,
    )
    # the overlap rule: the largest id wins where parcels overlap
    row, col = (1000 - 5) // 10, (1000 - 5) // 10  # pixel whose center is (X0+995, Y0-995)
    assert whole_pid[row, col] == 900 and whole_label[row, col] == 8
    assert (whole_pid == 500).any() and (whole_pid == 40).any()
    assert whole_pid[65, 62] == 500  # 500 over 101, under 900

    results = {}
    for chunks in (64, 100, (37, 100), 256, (256, 50)):
        ds = rasterize_labels(parcels, GRID, chunks=chunks)
        results[chunks] = ds.compute()
        np.testing.assert_array_equal(results[chunks]["label"].values, whole_label)
        np.testing.assert_array_equal(results[chunks]["parcel_id"].values, whole_pid)
    assert rasterize_labels(parcels, GRID, chunks=100)["label"].data.chunks == (
        (100, 100, 56),
        (100, 100, 56),
    )


def test_tasks_carry_only_the_parcels_of_their_chunk():
    # 400 small parcels in the upper-left 640 x 640 m only (chunk (0, 0) of 64 px chunks) and
    # a few along the 640 m borders
    polys, ids = [], []
    for i in range(20):
        for j in range(20):
            x, y = X0 + 5 + j * 30, Y0 - 5 - i * 30
            polys.append(shapely.box(x, y - 25, x + 25, y))
            ids.append(i * 20 + j + 1)
    polys.append(shapely.box(X0 + 620, Y0 - 300, X0 + 700, Y0 - 250))  # crosses x = 640 m
    ids.append(10_000)
    parcels = gpd.GeoDataFrame(
        {"parcel_id": np.array(ids, "int32"), "class_id": np.uint8(4)},
        geometry=polys, crs=32633,
    )
    ds = rasterize_labels(parcels, GRID, chunks=64)
    payloads = _payloads(ds)
    assert set(payloads) == {(i, j) for i in range(4) for j in range(4)}
    assert len(payloads[(0, 0)]) == 401
    assert list(payloads[(0, 1)].parcel_ids) == [10_000]
    far = payloads[(3, 3)]
    assert len(far) == 0 and far.wkb == b""
    assert sum(len(p) for p in payloads.values()) == 402  # no task carries a stranger
    # the whole table is not in any task: a far task pickles to a few hundred bytes
    assert len(pickle.dumps(far)) < 1_000 < len(pickle.dumps(payloads[(0, 0)]))
    assert len(pickle.dumps(payloads[(0, 1)])) * 20 < len(pickle.dumps(parcels))
    # and the graph still computes the same as the whole-grid kernel
    ref = rasterize_parcels(parcels.geometry.values, parcels["class_id"], parcels["parcel_id"],
                            GRID.transform, GRID.shape)
    np.testing.assert_array_equal(ds["parcel_id"].values, ref[1])


def test_rasterize_labels_refuses_parcels_in_another_crs():
    parcels = gpd.GeoDataFrame(
        {"parcel_id": np.int32([1]), "class_id": np.uint8([1])},
        geometry=[shapely.box(0, 0, 1, 1)], crs=5514,
    )
    with pytest.raises(CRSError, match="target_crs=32633"):
        rasterize_labels(parcels, GRID)


def test_rasterize_labels_without_parcels_is_background():
    empty = gpd.GeoDataFrame(
        {"parcel_id": np.array([], "int32"), "class_id": np.array([], "uint8")},
        geometry=gpd.GeoSeries([], crs=32633),
    )
    ds = rasterize_labels(empty, GRID, chunks=(100, 128)).compute()
    assert ds["label"].shape == GRID.shape and not ds["label"].values.any()


def test_rasterize_labels_skips_missing_geometries_and_checks_ids():
    parcels = gpd.GeoDataFrame(
        {"parcel_id": np.int32([1, 2, 3]), "class_id": np.uint8([4, 5, 6])},
        geometry=[None, shapely.Polygon(), shapely.box(X0, Y0 - 100, X0 + 100, Y0)],
        crs=32633,
    )
    ds = rasterize_labels(parcels, GRID, chunks=64).compute()
    assert set(np.unique(ds["parcel_id"].values)) == {0, 3}
    assert int((ds["label"].values == 6).sum()) == 100
    parcels["parcel_id"] = np.int32([0, 2, 3])
    with pytest.raises(ParcelError, match="1..2"):
        rasterize_labels(parcels, GRID)


def test_kernel_burn_order_is_by_id_not_input_order():
    a, b = shapely.box(0, 0, 10, 10), shapely.box(5, 0, 15, 10)
    from affine import Affine

    t, shape = Affine(1, 0, 0, 0, -1, 10), (10, 15)
    l1, p1 = rasterize_parcels([a, b], [1, 2], [9, 3], t, shape)
    l2, p2 = rasterize_parcels([b, a], [2, 1], [3, 9], t, shape)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(l1, l2)
    assert p1[5, 7] == 9 and l1[5, 7] == 1 and p1[5, 12] == 3
    with pytest.raises(ValueError, match="same length"):
        rasterize_parcels([a], [1, 2], [1], t, shape)
    with pytest.raises(ValueError, match="parcel_ids"):
        rasterize_parcels([a], [1], [0], t, shape)


# --------------------------------------------------------------------------------------------
# Crop mapping
# --------------------------------------------------------------------------------------------
def test_shipped_mapping_reads():
    m = CropMapping.read()
    assert m.codes["PSE_O"] == 4 and m.codes["TTP"] == 1
    assert all(0 <= v <= 13 for v in m.codes.values())
    assert m.names["TTP"].startswith("trval")


def test_mapping_unknown_codes_and_int_codes(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("crop_code,class_id\n123,4\n 45 ,6\nABC,1\n", encoding="utf-8")
    m = CropMapping.read(csv)
    assert m.names == {} and m.source == str(csv)
    got = m.map(pd.Series([123, 45.0, " ABC ", "abc", None, np.nan, "999", "123"]))
    assert got.dtype == np.uint8
    assert got.tolist() == [4, 6, 1, 14, 14, 14, 14, 4]


def test_mapping_int_codes_in_file_and_report(tmp_path):
    gdf = gpd.GeoDataFrame(
        {"ID_DPB": [1, 2, 3, 4], "KOD_PLODINY": [123, 45, 777, 777]},
        geometry=[shapely.box(X0 + i * 100, Y0 - 100, X0 + i * 100 + 50, Y0 - 50)
                  for i in range(4)],
        crs=32633,
    )
    path = tmp_path / "int_codes.gpkg"
    gdf.to_file(path)
    csv = tmp_path / "m.csv"
    csv.write_text("crop_code,crop_name,class_id\n123,wheat,4\n45,maize,6\n", encoding="utf-8")
    parcels, report = read_parcels(path, mapping=CropMapping.read(csv))
    assert parcels["class_id"].tolist() == [4, 6, 14, 14]
    assert parcels["crop_code"].tolist() == ["123", "45", "777", "777"]
    assert report.unmapped_codes == {"777": 2}
    assert report.class_counts == {4: 1, 6: 1, 14: 2}
    # the report is JSON-serializable
    assert json.loads(json.dumps(report.to_dict()))["class_counts"] == {"4": 1, "6": 1, "14": 2}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("code,class\nA,1\n", r"lacks column\(s\) \['crop_code', 'class_id'\]"),
        (
            "crop_code,class_id\nA,1\nB,2\nA,3\n",
            r"lines 2 and 4: crop_code 'A' maps to both 1 and 3",
        ),
        ("crop_code,class_id\nA,15\n", r"line 2 \(A\): class_id 15 is not in 0..13"),
        ("crop_code,class_id\nA,x\n", r"line 2 \(A\): class_id 'x' is not an integer"),
        ("crop_code,class_id\n,3\n", r"line 2: empty crop_code"),
        ("crop_code,class_id\n", r"has no rows"),
    ],
)
def test_bad_mapping_csv(tmp_path, text, match):
    csv = tmp_path / "bad.csv"
    csv.write_text(text, encoding="utf-8")
    with pytest.raises(ParcelError, match=match):
        CropMapping.read(csv)


def test_mapping_duplicates_agreeing_are_fine(tmp_path):
    csv = tmp_path / "dup.csv"
    csv.write_text("crop_code,class_id\nA,3\nA,3\n", encoding="utf-8")
    assert CropMapping.read(csv).codes == {"A": 3}


def test_missing_mapping_file(tmp_path):
    with pytest.raises(ReadError, match="nope.csv"):
        CropMapping.read(tmp_path / "nope.csv")


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
    with caplog.at_level(logging.INFO, logger="crop2seg_pipeline.labels"):
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
    gdf = _utm_parcels().to_crs(5514)
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
        pid for pid, g in zip(_utm_parcels()["ID_DPB"], _utm_parcels().geometry)
        if g.intersects(shapely.box(*bbox))
    }
    assert kept == expected and 0 < len(kept) < 5
    assert report.n_kept == len(kept)
    assert report.n_read - report.n_outside == report.n_kept


def test_ids_not_usable_are_renumbered(tmp_path, caplog):
    gdf = _utm_parcels()
    gdf["ID_DPB"] = ["a-1", "b-2", "c-3", "d-4", "e-5"]
    gdf.to_file(tmp_path / "strids.gpkg")
    with caplog.at_level(logging.WARNING, logger="crop2seg_pipeline.labels"):
        parcels, report = read_parcels(tmp_path / "strids.gpkg")
    assert parcels["parcel_id"].tolist() == [1, 2, 3, 4, 5]
    assert parcels["source_id"].tolist() == ["a-1", "b-2", "c-3", "d-4", "e-5"]
    assert report.ids_renumbered and "source_id" in caplog.text


def test_too_large_ids_are_renumbered_and_duplicates_warned(tmp_path, caplog):
    gdf = _utm_parcels()
    gdf["ID_DPB"] = [1, 2, 3, 4, 2**40]
    gdf.to_file(tmp_path / "big.gpkg")
    parcels, report = read_parcels(tmp_path / "big.gpkg")
    assert report.ids_renumbered and parcels["source_id"].tolist()[-1] == 2**40

    gdf["ID_DPB"] = [1, 2, 2, 4, 5]
    gdf.to_file(tmp_path / "dup.gpkg")
    with caplog.at_level(logging.WARNING, logger="crop2seg_pipeline.labels"):
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
    true = _utm_parcels().total_bounds
    assert (got[:2] <= true[:2]).all() and (got[2:] >= true[2:]).all()
    np.testing.assert_allclose(got, true, atol=500)


def test_bbox_near_but_not_touching_parcels(parcels_gpkg):
    # inside the envelope of the rotated parcel (so the reader's pre-filter keeps it) but off
    # every parcel: only the precise filter finds that nothing overlaps
    rotated = _utm_parcels().geometry.iloc[0]
    minx, _, _, maxy = rotated.bounds
    bbox = (minx + 1, maxy - 11, minx + 11, maxy - 1)
    assert not _utm_parcels().intersects(shapely.box(*bbox)).any()
    with pytest.raises(ParcelError, match="do not overlap"):
        read_parcels(parcels_gpkg, target_crs=32633, bbox=bbox)


def test_file_without_crs(tmp_path):
    gdf = _utm_parcels().set_crs(None, allow_override=True)
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
