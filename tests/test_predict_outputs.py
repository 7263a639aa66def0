"""crop2seg-predict's extra outputs: the probability COG, polygons of the class map (merged across
chunk borders, chunking-invariant), the parcel rules (Crop2Seg's homogenization, the soft rule,
the disagreement rank) and the quicklook layout.

Predictions run the shipped demo weights on the 512 px, 10-date demo scene (dates the weights
were not trained with: a varied class map, many polygons cut by chunk borders), once in 128 px
chunks without the area rule and once in 256 px chunks with Crop2Seg's 5000 m2.
"""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.features
import xarray as xr
from click.testing import CliRunner
from scipy import ndimage

from crop2seg_pipeline.kernels.parcel_rules import disagreement_rank, homogenized_classes, soft_classes
from crop2seg_pipeline.kernels.polygons import quantize_probabilities
from crop2seg_pipeline.mapping import CropMapping
from crop2seg_pipeline.parcels import read_parcels
from crop2seg_pipeline.nomenclature import CLASS_NAMES
from crop2seg_pipeline.outputs import quicklook_figure, validate_cog
from crop2seg_pipeline.predict import default_demo_weights, predict
from crop2seg_pipeline.predict_outputs import parcel_rule_columns


def _predict(scene, out, chunksize, min_area):
    return predict(scene.items, default_demo_weights(), out, parcels=scene.parcels, mapping=scene.mapping,
                   chunksize=chunksize, probabilities=True, polygons=True, min_polygon_area=min_area,
                   progress=lambda m: None)


@pytest.fixture(scope="module")
def runs(demo_scene, tmp_path_factory):
    """128 px chunks without the area rule, 256 px chunks with Crop2Seg's 5000 m2."""
    base = tmp_path_factory.mktemp("predict-outputs")
    return {
        128: (_predict(demo_scene, base / "c128", 128, 0.0), base / "c128"),
        256: (_predict(demo_scene, base / "c256", 256, 5000.0), base / "c256"),
    }


def _classes(folder):
    with rasterio.open(folder / "classes.tif") as ds:
        return ds.read(1), ds.transform


def _burn(polys: gpd.GeoDataFrame, shape, transform) -> np.ndarray:
    if not len(polys):
        return np.zeros(shape, np.uint8)
    return rasterio.features.rasterize(zip(polys.geometry, polys["class_id"].astype(int)), out_shape=shape,
                                       transform=transform, fill=0, dtype="uint8")


# ----------------------------------------------------------------------------- probabilities


def test_quantized_probabilities_sum_to_255_and_stay_within_one():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(15, 40, 50)) * 3
    p = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    q = quantize_probabilities(p)
    assert q.dtype == np.uint8 and (q.astype(int).sum(0) == 255).all()
    assert np.abs(q - p * 255).max() < 1
    assert (quantize_probabilities(np.eye(3)[:, :, None]) == np.eye(3)[:, :, None] * 255).all()


def test_probability_cog_is_valid_and_matches_the_zarr(runs):
    from rio_cogeo.cogeo import cog_validate

    _, out = runs[128]
    tif = out / "probabilities.tif"
    assert validate_cog(tif) == []
    valid, errors, _ = cog_validate(str(tif))
    assert valid and errors == []
    with rasterio.open(tif) as ds:
        assert ds.count == 15 and ds.dtypes[0] == "uint8"
        assert list(ds.descriptions) == list(CLASS_NAMES)
        assert json.loads(ds.tags()["class_names"]) == list(CLASS_NAMES)
        q = ds.read()
        with rasterio.open(out / "classes.tif") as c:
            assert ds.transform == c.transform and ds.crs == c.crs
    assert (q.astype(int).sum(0) == 255).all()
    p = xr.open_zarr(out / "probabilities.zarr")["probabilities"].values
    assert np.abs(q - p * 255).max() < 1
    with rasterio.open(runs[256][1] / "probabilities.tif") as ds:
        other = ds.read()  # another chunking: probabilities agree to ~1e-6, so bytes to the rounding step
    assert np.abs(other.astype(int) - q).max() <= 1 and (other == q).mean() > 0.999


# ----------------------------------------------------------------------------- polygons


def test_polygons_rasterized_back_are_the_class_map(runs):
    for key in (128,):
        summary, out = runs[key]
        classes, transform = _classes(out)
        polys = gpd.read_file(out / "polygons.gpkg")
        assert list(polys.columns[:6]) == ["polygon_id", "class_id", "class_name", "area_m2", "n_pixels",
                                           "mean_confidence"]
        assert (polys["class_id"] > 0).all()  # background dropped
        assert np.array_equal(_burn(polys, classes.shape, transform), classes)
        assert (polys["area_m2"] == polys["n_pixels"] * 100).all()
        assert np.allclose(polys.geometry.area, polys["area_m2"])
        assert polys["polygon_id"].is_unique
        # one polygon per 4-connected component of a class: no seams left by the chunk borders
        n = sum(ndimage.label(classes == k)[1] for k in range(1, 15))
        assert len(polys) == n > 50
        assert summary.files["polygons"] == str(out / "polygons.gpkg")


def test_polygons_do_not_depend_on_the_chunking(runs):
    """128 px chunks and no area rule, filtered here to > 5000 m2, equal 256 px chunks with the rule."""
    a = gpd.read_file(runs[128][1] / "polygons.gpkg")
    a = a[a["area_m2"] > 5000].sort_values("polygon_id").reset_index(drop=True)
    b = gpd.read_file(runs[256][1] / "polygons.gpkg").sort_values("polygon_id").reset_index(drop=True)
    assert len(a) == len(b) > 20
    for col in ("polygon_id", "class_id", "n_pixels"):
        assert a[col].tolist() == b[col].tolist(), col
    assert np.allclose(a["mean_confidence"], b["mean_confidence"], atol=1e-6)
    assert all(ga.equals(gb) for ga, gb in zip(a.geometry, b.geometry))
    # and the chunk borders left no extra vertices: same vertex counts
    assert [len(g.exterior.coords) for g in a.geometry] == [len(g.exterior.coords) for g in b.geometry]


def test_polygon_mean_confidence(runs):
    _, out = runs[128]
    classes, transform = _classes(out)
    p = xr.open_zarr(out / "probabilities.zarr")["probabilities"].values.max(axis=0)
    polys = gpd.read_file(out / "polygons.gpkg")
    for r in polys.sample(20, random_state=0).itertuples():
        mask = rasterio.features.rasterize([(r.geometry, 1)], out_shape=classes.shape, transform=transform,
                                           fill=0, dtype="uint8").astype(bool)
        assert mask.sum() == r.n_pixels
        assert r.mean_confidence == pytest.approx(p[mask].mean(), rel=1e-5)


def test_minimum_area_drops_small_components_only(runs):
    _, out = runs[256]
    classes, transform = _classes(out)
    expected = np.zeros_like(classes)
    for k in range(1, 15):
        lab, n = ndimage.label(classes == k)
        sizes = np.bincount(lab.ravel())
        big = np.flatnonzero(sizes * 100 > 5000)  # Crop2Seg: area > 5000 m2
        big = big[big > 0]
        expected[np.isin(lab, big)] = k
    polys = gpd.read_file(out / "polygons.gpkg")
    assert (polys["area_m2"] > 5000).all() and len(polys) > 0
    assert np.array_equal(_burn(polys, classes.shape, transform), expected)
    assert (expected != classes).any()  # the rule removed something


def test_cli_polygons_and_bad_minimum_area(small_scene, tmp_path):
    from crop2seg_pipeline.cli.predict import predict_cmd

    args = ["--items", str(small_scene.items), "--chunksize", "128", "--workers", "1", "-q"]
    res = CliRunner().invoke(predict_cmd, [*args, "--out", str(tmp_path / "bad"), "--polygons",
                                           "--min-polygon-area", "-1"])
    assert res.exit_code == 2 and "--min-polygon-area" in res.output
    assert not (tmp_path / "bad").exists()
    res = CliRunner().invoke(predict_cmd, [*args, "--out", str(tmp_path / "o"), "--polygons", "--probabilities"])
    assert res.exit_code == 0, res.output
    names = {p.name for p in (tmp_path / "o").iterdir()}
    assert {"polygons.gpkg", "probabilities.tif", "probabilities.zarr", "classes.tif"} <= names
    assert not [n for n in names if "partial" in n]


# ----------------------------------------------------------------------------- parcel rules


def test_homogenization_and_soft_rule_on_a_hand_computed_case():
    #                 bg  grass maize wheat rape     (classes 0, 1, 6, 4, 5 of 15)
    K = 15
    rows = {
        "A": {0: 80, 6: 20},         # background share 0.80 > 0.75: Background
        "B": {0: 70, 6: 20, 4: 10},  # 0.70: Maize, although Background is the area majority
        "C": {0: 75, 5: 25},         # exactly 0.75 is not more: Rapeseed
        "D": {6: 30, 4: 30},         # a tie: the smaller id (Winter cereals, 4)
        "E": {0: 100},               # only Background
        "F": {},                     # no pixel
    }
    counts = np.zeros((len(rows), K), np.int64)
    for i, r in enumerate(rows.values()):
        for k, v in r.items():
            counts[i, k] = v
    assert homogenized_classes(counts).tolist() == [0, 6, 5, 4, 0, -1]
    # soft: mean probabilities; Background needs more than 0.7, else the second class
    mean = np.zeros((4, K))
    mean[0, [0, 1]] = [0.65, 0.35]   # Background 0.65 <= 0.7: Permanent grassland
    mean[1, [0, 1]] = [0.75, 0.25]   # Background 0.75: Background
    mean[2, [6, 0]] = [0.5, 0.45]    # top-1 is a crop: Maize, top-2 Background
    mean[3, [0, 5]] = [0.70, 0.30]   # exactly 0.7: Rapeseed
    n = np.array([10, 4, 2, 5])
    label, top2, prob = soft_classes(mean * n[:, None], n)
    assert label.tolist() == [1, 0, 6, 5] and top2.tolist() == [1, 1, 0, 5]
    assert prob == pytest.approx([0.35, 0.75, 0.5, 0.30])
    # the disagreement rank: confident first, then the larger share, then the smaller id
    rank = disagreement_rank(np.array([True, False, True, True, True]), np.array([0.6, 0.99, 0.9, 0.6, 0.6]),
                             np.array([0.5, 1.0, 0.7, 0.9, 0.5]), np.array([7, 1, 9, 8, 3]))
    assert rank.tolist() == [4, 0, 1, 2, 3]


def test_parcel_rule_columns_on_a_hand_computed_table():
    table = gpd.GeoDataFrame({
        "parcel_id": [11, 12, 13], "declared_class": [6, 0, 14], "predicted_class": pd.array([0, 0, 5], "Int64"),
        "predicted_share": [0.7, 1.0, 1.0], "mean_confidence": [0.9, 0.8, 0.7],
        "agreement": pd.array([False, True, pd.NA], "boolean"),
    }, geometry=gpd.points_from_xy([0, 1, 2], [0, 1, 2]))
    # two chunks: parcel 11 is cut in two
    hists = [(np.array([11, 11, 12]), np.array([0, 6, 0]), np.array([40, 20, 5])),
             (np.array([11, 13]), np.array([0, 5]), np.array([30, 3]))]
    p = np.zeros((4, 15))
    p[0, [0, 6]] = [60.0, 30.0]   # parcel 11, first chunk (60 px)
    p[1, [0, 1]] = [4.0, 1.0]     # parcel 12 (5 px): Background 0.8
    p[2, [0, 6]] = [25.0, 5.0]    # parcel 11, second chunk (30 px)
    p[3, [0, 5]] = [2.4, 0.6]     # parcel 13 (3 px): Background 0.8
    sums = [(np.array([11, 12]), p[:2]), (np.array([11, 13]), p[2:])]
    out = parcel_rule_columns(table, hists, sums, CLASS_NAMES, ignore_index=14)
    # parcel 11: 70 bg / 90 px = 0.78 > 0.75: Background (disagrees with Maize); soft: bg mean 85/90 = 0.94
    assert out["homogenized_class"].tolist() == [0, 0, 5]
    assert out["homogenized_agreement"].tolist()[:2] == [False, True] and pd.isna(out["homogenized_agreement"][2])
    assert out["soft_class"].tolist() == [0, 0, 0] and out["soft_probability"][0] == pytest.approx(85 / 90)
    assert out["soft_top2_class"][0] == 6 and out["soft_top2_name"][0] == "Maize"
    assert out["soft_agreement"].tolist()[:2] == [False, True] and pd.isna(out["soft_agreement"][2])
    assert out["disagreement_rank"].tolist()[0] == 1 and out["disagreement_rank"][1:].isna().all()
    assert out.columns[-1] == "geometry"


def test_parcel_table_rules_against_the_rasters(demo_scene, runs):
    _, out = runs[128]
    table = gpd.read_file(out / "parcels.gpkg")
    classes, transform = _classes(out)
    probs = xr.open_zarr(out / "probabilities.zarr")["probabilities"].values
    with rasterio.open(out / "classes.tif") as ds:
        crs = ds.crs
    gdf, _ = read_parcels(demo_scene.parcels, mapping=CropMapping.read(demo_scene.mapping), target_crs=crs.to_epsg())
    order = np.argsort(gdf["parcel_id"].to_numpy(), kind="stable")
    pid = rasterio.features.rasterize(
        ((g, int(v)) for g, v in zip(gdf.geometry.to_numpy()[order], gdf["parcel_id"].to_numpy()[order])),
        out_shape=classes.shape, transform=transform, fill=0, dtype="int32")
    rows = table.set_index("parcel_id")
    checked = 0
    for p in np.unique(pid[pid > 0]):
        m = pid == p
        counts = np.bincount(classes[m], minlength=15)
        bg_share = counts[0] / counts.sum()
        nonbg = counts.copy()
        nonbg[0] = -1
        expected = 0 if bg_share > 0.75 or nonbg.max() <= 0 else int(np.argmax(nonbg))
        r = rows.loc[p]
        assert r["homogenized_class"] == expected
        mean = probs[:, m].mean(axis=1)
        top = np.argsort(-mean, kind="stable")
        soft = top[1] if top[0] == 0 and mean[0] <= 0.7 else top[0]
        assert r["soft_class"] == soft and r["soft_top2_class"] == top[1]
        assert r["soft_probability"] == pytest.approx(mean[soft], rel=1e-5)
        checked += 1
    assert checked > 10
    dis = table[table["agreement"].astype("boolean") == False]  # noqa: E712
    assert len(dis) > 3
    ranked = dis.sort_values("disagreement_rank")
    assert ranked["disagreement_rank"].tolist() == list(range(1, len(dis) + 1))
    assert (np.diff(ranked["mean_confidence"].to_numpy()) <= 1e-12).all()
    assert table.loc[table["agreement"].astype("boolean") != False, "disagreement_rank"].isna().all()  # noqa: E712


# ----------------------------------------------------------------------------- quicklook


def labels_outside(fig) -> list[str]:
    """Texts of the figure (legend entries, titles) whose drawn extent leaves the figure."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    fb = fig.bbox
    texts = [t for leg in fig.legends for t in leg.get_texts()] + list(fig.texts)
    for ax in fig.axes:
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
        texts.append(ax.title)
    out = []
    for t in texts:
        if not t.get_text():
            continue
        e = t.get_window_extent(r)
        if e.x0 < fb.x0 - 0.5 or e.x1 > fb.x1 + 0.5 or e.y0 < fb.y0 - 0.5 or e.y1 > fb.y1 + 0.5:
            out.append(t.get_text())
    return out


@pytest.mark.parametrize("shape", [(768, 768), (4, 1024), (1024, 4), (3, 3), (300, 1000)])
def test_every_quicklook_label_lies_inside_the_figure(shape):
    img = (np.arange(shape[0] * shape[1]).reshape(shape) % 14).astype(np.uint8)
    counts = np.r_[np.arange(1, 15) * 1000, 0]  # 14 classes present, long percentages
    fig = quicklook_figure(img, CLASS_NAMES, counts, title=f"crop classes, {shape[0]} x {shape[1]} px, EPSG:32633")
    assert len(fig.legends[0].get_texts()) == 14
    assert labels_outside(fig) == []


def test_the_label_check_catches_the_old_layout():
    """The former quicklook (legend anchored right of a 9 x 6.5 in map, tight_layout) cut its labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(9, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(np.zeros((768, 768)))
    ax.legend(handles=[Patch(label=f"{n} (4.3%)") for n in CLASS_NAMES], loc="center left",
              bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    assert "Annual fruit & vegetable (4.3%)" in labels_outside(fig)
