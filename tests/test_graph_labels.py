"""Tests of crop2seg_pipeline.graph.labels: per-chunk label rasterization (the label graph layer)."""

from __future__ import annotations

import pickle

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from parcel_cases import GRID, X0, Y0, reference_rasters, utm_parcels, write_parcels_gpkg
from crop2seg_pipeline.errors import CRSError, ParcelError
from crop2seg_pipeline.kernels.rasterize import rasterize_parcels
from crop2seg_pipeline.parcels import read_parcels
from crop2seg_pipeline.graph.labels import ChunkParcels, rasterize_labels

# rasterio sometimes emits a spurious NotGeoreferencedWarning when several threads rasterize
# into MEM datasets at once (results are unaffected; see opendatacube/odc-geo#131).
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.fixture
def parcels_gpkg(tmp_path):
    return write_parcels_gpkg(tmp_path)


def _payloads(ds) -> dict[tuple[int, int], ChunkParcels]:
    """The parcels embedded in each rasterization task of the graph, by block index."""
    out = {}
    for name, layer in ds["label"].data.dask.layers.items():
        if not name.startswith("rasterize-parcels"):
            continue
        for key, task in layer.items():
            args = task[1:] if isinstance(task, tuple) else getattr(task, "args", ())
            found = [a for a in args if isinstance(a, ChunkParcels)]
            if not found:  # Task objects wrap literal arguments in DataNodes
                found = [getattr(a, "value", None) for a in args]
                found = [a for a in found if isinstance(a, ChunkParcels)]
            assert len(found) == 1, f"no parcel payload in task {key}: {task!r}"
            out[key[1:]] = found[0]
    assert out, "no rasterization layer found in the graph"
    return out




# --------------------------------------------------------------------------------------------
# End to end: file in EPSG:5514 -> labels on a UTM grid
# --------------------------------------------------------------------------------------------
def test_read_and_rasterize_matches_independentreference_rasters(parcels_gpkg):
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
    ref_label, ref_pid = reference_rasters(parcels_gpkg)
    np.testing.assert_array_equal(out["label"].values, ref_label)
    np.testing.assert_array_equal(out["parcel_id"].values, ref_pid)
    # every parcel is actually burnt (the test would pass vacuously on an empty raster)
    assert set(np.unique(ref_pid)) == {0, 101, 7, 55, 3000, 12}
    assert set(np.unique(ref_label)) == {0, 4, 6, 1, 14, 5}


def test_chunk_invariance_with_overlaps_and_partial_chunks():
    gdf = utm_parcels()
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


