"""Tests of crop2seg_pipeline.mapping: crop code -> class id tables."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from parcel_cases import X0, Y0, write_parcels_gpkg
from crop2seg_pipeline.errors import ParcelError, ReadError
from crop2seg_pipeline.mapping import CropMapping
from crop2seg_pipeline.parcels import read_parcels

# rasterio sometimes emits a spurious NotGeoreferencedWarning when several threads rasterize
# into MEM datasets at once (results are unaffected; see opendatacube/odc-geo#131).
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.fixture
def parcels_gpkg(tmp_path):
    return write_parcels_gpkg(tmp_path)


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


