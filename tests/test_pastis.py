"""PASTIS in and out: export a demo store, read it back independently, train from it, fine-tune."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from click.testing import CliRunner
from patchstores import KW, make_store

from crop2seg_pipeline.build import build_dataset
from crop2seg_pipeline.cli.export_pastis import export_pastis_cmd
from crop2seg_pipeline.cli.train import train_cmd
from crop2seg_pipeline.errors import StoreError
from crop2seg_pipeline.models import build_model
from crop2seg_pipeline.nomenclature import CLASS_NAMES
from crop2seg_pipeline.pastis import (
    PASTIS_CLASSES,
    PASTIS_TO_CROP2SEG,
    PastisDataset,
    PastisError,
    PastisFolder,
    is_pastis_folder,
)
from crop2seg_pipeline.pastis_export import export_pastis
from crop2seg_pipeline.store import open_store, read_attrs
from crop2seg_pipeline.train import train

pytestmark = pytest.mark.slow

FOLD_OF_SPLIT = {"train": {1, 2, 3}, "val": {4}, "test": {5}}


@pytest.fixture(scope="module")
def demo_store(demo_scene, tmp_path_factory):
    """The 512 px, 10-date demo scene as a store of 16 128 px patches, all three splits."""
    out = tmp_path_factory.mktemp("pastis-store") / "patches.zarr"
    build_dataset(demo_scene.items, demo_scene.parcels, out, mapping=demo_scene.mapping, patch_size=128,
                  chunksize=2 * 128, min_crop_cover=0.0, split_block=1, seed=4, progress=lambda m: None)
    return out


@pytest.fixture(scope="module")
def exported(demo_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("pastis-out") / "PASTIS"
    manifest = export_pastis(demo_store, out, progress=lambda m: None)
    return out, manifest


# ----------------------------------------------------------------------------- export


def test_export_reads_back_equal_to_the_store(demo_store, exported):
    """An independent reader (geopandas + numpy, no code of ours) finds the store again."""
    out, manifest = exported
    ds = open_store(demo_store)
    g = zarr.open_group(str(demo_store), mode="r", zarr_format=3)
    meta = gpd.read_file(out / "metadata.geojson")
    n = int(ds.sizes["patch"])
    assert len(meta) == n == manifest["n_patches"] and meta.crs.to_epsg() == int(ds["epsg"].values[0])
    assert meta["ID_PATCH"].dtype.kind == "i" and meta["Fold"].dtype.kind == "i"
    assert sorted(meta["ID_PATCH"]) == list(range(n))
    splits = np.array(ds["split"].values.tolist(), dtype=str)
    assert set(splits) == {"train", "val", "test"}
    for _, row in meta.iterrows():
        i = int(row["ID_PATCH"])
        assert row["Fold"] in FOLD_OF_SPLIT[splits[i]]
        dates = ds["dates"].values[i]
        dates = dates[~np.isnat(dates)].astype("datetime64[D]")
        d = row["dates-S2"]
        assert list(d) == [str(k) for k in range(len(dates))]
        assert [dt.datetime.strptime(str(d[k]), "%Y%m%d").date() for k in d] == dates.astype(object).tolist()
        data = np.load(out / "DATA_S2" / f"S2_{i}.npy")
        target = np.load(out / "ANNOTATIONS" / f"TARGET_{i}.npy")
        assert data.dtype == np.uint16 and data.shape == (len(dates), 10, 128, 128)
        np.testing.assert_array_equal(data, np.asarray(g["s2"][i, :len(dates)]))
        assert target.dtype == np.uint8 and target.shape == (1, 128, 128)
        np.testing.assert_array_equal(target[0], np.asarray(g["label"][i]))
        x0, y0 = float(ds["x0"].values[i]), float(ds["y0"].values[i])
        assert row.geometry.bounds == pytest.approx((x0, y0 - 1280, x0 + 1280, y0))
        np.testing.assert_allclose([row["clear-S2"][k] for k in d], ds["clear"].values[i, :len(dates)], atol=1e-4)
    folds = set(meta["Fold"])
    assert {4, 5} <= folds and folds & {1, 2, 3}
    norm = json.loads((out / "NORM_S2_patch.json").read_text())
    train = read_attrs(demo_store)["normalization"]["train"]
    assert sorted(norm) == [f"Fold_{k}" for k in range(1, 6)]
    for k in range(1, 6):
        assert norm[f"Fold_{k}"]["mean"] == pytest.approx(train["mean"]) and norm[f"Fold_{k}"]["std"] == pytest.approx(train["std"])
    assert manifest["status"] == "complete" and manifest["reference_date"] == "2021-09-01"
    assert manifest["class_names"] == list(CLASS_NAMES)


def _reference_like(folder: Path, folds: list[int], reference_date: str) -> dict[int, tuple]:
    """An independent re-implementation of the reference PASTIS_Dataset (norm=True, semantic):
    geopandas metadata, a day table over -200..599 from reference_date, fold-averaged norms,
    target channel 0."""
    meta = gpd.read_file(folder / "metadata.geojson")
    meta.index = meta["ID_PATCH"].astype(int)
    meta = meta.sort_index()
    ref = dt.datetime(*map(int, reference_date.split("-")))
    day_range = np.arange(-200, 600)
    table = {}
    for pid, seq in meta["dates-S2"].items():
        days = [(dt.datetime(int(str(v)[:4]), int(str(v)[4:6]), int(str(v)[6:])) - ref).days for v in seq.values()]
        row = np.zeros(len(day_range), int)
        row[np.searchsorted(day_range, days)] = 1
        table[pid] = day_range[row == 1]
    meta = pd.concat([meta[meta["Fold"] == f] for f in folds])
    norm = json.loads((folder / "NORM_S2_patch.json").read_text())
    mean = np.stack([norm[f"Fold_{f}"]["mean"] for f in folds]).mean(0)
    std = np.stack([norm[f"Fold_{f}"]["std"] for f in folds]).mean(0)
    out = {}
    for pid in meta.index:
        x = np.load(folder / "DATA_S2" / f"S2_{pid}.npy").astype(np.float32)
        x = (torch.from_numpy(x) - torch.from_numpy(mean).float()[None, :, None, None]) \
            / torch.from_numpy(std).float()[None, :, None, None]
        y = np.load(folder / "ANNOTATIONS" / f"TARGET_{pid}.npy")[0].astype(int)
        out[int(pid)] = (x.numpy(), table[pid], y)
    return out


def test_reference_loader_logic_and_our_reader_give_the_same_samples(exported):
    out, manifest = exported
    ref = _reference_like(out, [1, 2, 3], manifest["reference_date"])
    ours = PastisDataset(out, folds=[1, 2, 3])
    assert sorted(ref) == ours.indices.tolist() and len(ours) == len(ref)
    for i in range(len(ours)):
        s = ours[i]
        x, days, y = ref[s["index"]]
        np.testing.assert_allclose(s["s2"].numpy(), x, rtol=1e-6, atol=1e-5)
        np.testing.assert_array_equal(s["positions"].numpy(), days.astype(np.float32))
        np.testing.assert_array_equal(s["label"].numpy(), y)


def test_train_one_epoch_from_an_exported_folder(demo_store, exported, tmp_path):
    out, manifest = exported
    res = CliRunner().invoke(train_cmd, ["--dataset", str(out), "--out", str(tmp_path / "run"), "--epochs", "1",
                                         "--batch-size", "4", "--device", "cpu", "--workers", "0", "-q"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["class_names"] == list(CLASS_NAMES) and meta["ignore_index"] == 14
    assert meta["reference_date"] == manifest["reference_date"] and meta["patch_size"] == 128
    assert meta["normalization"]["mean"] == pytest.approx(read_attrs(demo_store)["normalization"]["train"]["mean"])
    t = meta["training"]
    assert t["source_kind"] == "pastis" and t["train_folds"] == [1, 2, 3] and t["val_folds"] == [4]
    folds = [f["properties"]["Fold"] for f in json.loads((out / "metadata.geojson").read_text())["features"]]
    assert t["n_train_patches"] == sum(f in (1, 2, 3) for f in folds)
    assert t["validation"] == {"kind": "folds", "folds": [4], "n_patches": folds.count(4)}


def test_interrupted_export_is_not_taken_for_complete_and_resumes(demo_store, exported, tmp_path):
    full, _ = exported
    out = tmp_path / "PASTIS"
    seen = []

    def stop_after_5(msg):
        seen.append(msg)
        if msg.startswith("exported"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_pastis(demo_store, out, progress=stop_after_5)
    assert not (out / "metadata.geojson").exists() and not (out / "NORM_S2_patch.json").exists()
    assert json.loads((out / "crop2seg_export.json").read_text())["status"] == "writing"
    assert is_pastis_folder(out)
    with pytest.raises(PastisError, match="unfinished export"):
        PastisFolder(out)
    with pytest.raises(PastisError, match="unfinished export"):
        train(out, tmp_path / "run", epochs=1, **KW)
    done_before = len(list((out / "DATA_S2").glob("*.npy")))
    assert 0 < done_before < 16
    again = export_pastis(demo_store, out, progress=lambda m: None)
    assert again["status"] == "complete" and again["written"] == 16 - done_before
    for f in sorted(full.rglob("*.npy")):
        np.testing.assert_array_equal(np.load(f), np.load(out / f.relative_to(full)))
    assert json.loads((out / "metadata.geojson").read_text()) == json.loads((full / "metadata.geojson").read_text())
    assert export_pastis(demo_store, out, progress=lambda m: None)["written"] == 0   # complete: nothing to do
    assert not list(out.rglob("*.tmp"))


def test_export_refuses_targets_it_did_not_write(demo_store, exported, tmp_path):
    runner = CliRunner()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    res = runner.invoke(export_pastis_cmd, [str(demo_store), str(foreign)])
    assert res.exit_code == 1 and "not a PASTIS export of crop2seg-export-pastis" in res.output
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    other = make_store(tmp_path / "other.zarr")
    copy = tmp_path / "copy"
    shutil.copytree(exported[0], copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    res = runner.invoke(export_pastis_cmd, [str(other), str(copy)])
    assert res.exit_code == 1 and "export of another store" in res.output
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before
    (tmp_path / "file").write_text("x")
    res = runner.invoke(export_pastis_cmd, [str(demo_store), str(tmp_path / "file")])
    assert res.exit_code != 0 and (tmp_path / "file").read_text() == "x"
    res = runner.invoke(export_pastis_cmd, [str(tmp_path / "foreign"), str(tmp_path / "x")])
    assert res.exit_code == 1 and "not a crop2seg patch store" in res.output and not (tmp_path / "x").exists()
    res = runner.invoke(export_pastis_cmd, [str(demo_store), str(tmp_path / "cli")])
    assert res.exit_code == 0 and "16 patches in the PASTIS layout" in res.output, res.output


def test_patches_of_several_crs_get_wgs84_footprints(tmp_path):
    from pyproj import Transformer

    store = make_store(tmp_path / "zones.zarr", n=4, tiles=("33UWQ", "33UWQ", "34UCV", "34UCV"),
                       epsgs=(32633, 32633, 32634, 32634), splits=("train", "val", "test", "train"))
    export_pastis(store, tmp_path / "out", progress=lambda m: None)
    meta = gpd.read_file(tmp_path / "out" / "metadata.geojson")
    assert meta.crs.to_epsg() == 4326
    ds = open_store(store)
    for _, row in meta.iterrows():
        i = int(row["ID_PATCH"])
        tr = Transformer.from_crs(int(ds["epsg"].values[i]), 4326, always_xy=True)
        corner = tr.transform(float(ds["x0"].values[i]), float(ds["y0"].values[i]))
        assert row.geometry.exterior.coords[0] == pytest.approx(corner)
    assert sorted(meta["Fold"])[-2:] == [4, 5]


# ----------------------------------------------------------------------------- a PASTIS folder of PASTIS


def write_pastis_folder(path: Path, n: int = 10, size: int = 32, seed: int = 0) -> Path:
    """A folder in the reference layout written with numpy and json only: 20 PASTIS classes
    (blocks of classes whose series differ), dates of the 2018-19 season, folds 1..5."""
    rng = np.random.default_rng(seed)
    pool = np.arange(np.datetime64("2018-09-20"), np.datetime64("2019-10-20"), np.timedelta64(9, "D"))
    (path / "DATA_S2").mkdir(parents=True)
    (path / "ANNOTATIONS").mkdir()
    features = []
    for k in range(n):
        pid = 10000 + k
        t = int(rng.integers(6, 10))
        dates = np.sort(rng.choice(pool, t, replace=False))
        label = np.zeros((size, size), np.uint8)
        label[: size // 2] = (k * 3) % 20
        label[size // 2:] = (k * 7 + 1) % 20
        doy = (dates - np.datetime64("2018-09-01")).astype(int)
        series = 1000 + 2500 * np.sin(doy[:, None, None] / 60.0 + label[None] / 3.0)
        data = np.repeat(series[:, None], 10, axis=1) + rng.normal(0, 50, (t, 10, size, size))
        np.save(path / "DATA_S2" / f"S2_{pid}.npy", np.clip(data, 0, 10000).astype(np.int16))
        np.save(path / "ANNOTATIONS" / f"TARGET_{pid}.npy", np.stack([label, label, label]))  # 3 channels
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}, "properties": {
            "ID_PATCH": pid, "Fold": k % 5 + 1, "TILE": "T31TFM",
            "dates-S2": {str(j): int(str(d).replace("-", "")) for j, d in enumerate(dates)}}})
    (path / "metadata.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    norm = {f"Fold_{f}": {"mean": [1000.0 + f] * 10, "std": [1500.0] * 10} for f in range(1, 6)}
    (path / "NORM_S2_patch.json").write_text(json.dumps(norm))
    return path


@pytest.fixture(scope="module")
def pastis(tmp_path_factory):
    return write_pastis_folder(tmp_path_factory.mktemp("pastis") / "PASTIS")


def test_pastis_classes_dates_and_fold_normalization(pastis, tmp_path):
    ds = PastisDataset(pastis, folds=[1, 2])
    assert len(ds) == 4 and ds.reference_date == dt.date(2018, 9, 1)
    np.testing.assert_allclose(ds.mean, [1001.5] * 10)               # mean of Fold_1 and Fold_2
    s = ds[0]
    meta = json.loads((pastis / "metadata.geojson").read_text())["features"][0]["properties"]
    expected = [(dt.datetime.strptime(str(v), "%Y%m%d") - dt.datetime(2018, 9, 1)).days
                for v in meta["dates-S2"].values()]
    assert s["positions"].tolist() == expected and s["index"] == 10000
    raw = np.load(pastis / "ANNOTATIONS" / "TARGET_10000.npy")[0]
    np.testing.assert_array_equal(s["label"].numpy(), raw)            # native: PASTIS ids
    mapped = PastisDataset(pastis, folds=[1, 2], class_map="crop2seg")
    np.testing.assert_array_equal(mapped[0]["label"].numpy(), np.vectorize(PASTIS_TO_CROP2SEG.get)(raw))
    csv = tmp_path / "map.csv"
    csv.write_text("pastis_id,class_id\n0,0\n3,6\n")
    custom = PastisDataset(pastis, folds=[1, 2], class_map=str(csv))
    expected_custom = np.where(raw == 0, 0, np.where(raw == 3, 6, 14))   # unlisted -> Not classified
    np.testing.assert_array_equal(custom[0]["label"].numpy(), expected_custom)
    assert len(PASTIS_CLASSES) == 20 and set(PASTIS_TO_CROP2SEG) == set(range(20))


def test_pretrain_on_pastis_then_finetune_into_the_15_classes(pastis, tmp_path):
    from patchstores import make_store

    pre = train(pastis, tmp_path / "pre", epochs=1, **KW)
    meta = json.loads((tmp_path / "pre" / "model.json").read_text())
    assert meta["class_names"] == list(PASTIS_CLASSES) and meta["ignore_index"] == 19
    assert meta["reference_date"] == "2018-09-01" and pre["n_train"] == 6 and pre["n_val"] == 2
    store = make_store(tmp_path / "mine.zarr")
    messages = []
    tuned = train(store, tmp_path / "tuned", epochs=1, finetune=tmp_path / "pre", progress=messages.append, **KW)
    assert any("head re-initialised" in m for m in messages) and tuned["epochs"] == 1
    assert json.loads((tmp_path / "tuned" / "model.json").read_text())["class_names"] == list(CLASS_NAMES)
    mapped = train(pastis, tmp_path / "mapped", epochs=1, class_map="crop2seg", **KW)
    assert mapped["epochs"] == 1
    assert json.loads((tmp_path / "mapped" / "model.json").read_text())["class_names"] == list(CLASS_NAMES)


def test_finetune_from_a_reference_format_checkpoint(tmp_path):
    """A ``model.pth.tar`` as the reference training script writes it: epoch, state_dict, optimizer."""
    ref = build_model("utae-small", n_classes=20, input_dim=10)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    ref(torch.randn(1, 3, 10, 32, 32), torch.tensor([[1.0, 30.0, 60.0]])).sum().backward()
    opt.step()
    torch.save({"epoch": 12, "state_dict": ref.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "model.pth.tar")
    store = make_store(tmp_path / "mine.zarr")
    messages = []
    train(store, tmp_path / "tuned", epochs=1, finetune=tmp_path / "model.pth.tar", progress=messages.append,
          **{**KW, "lr": 1e-12})
    assert any("head re-initialised" in m for m in messages)
    tuned = torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)["model"]
    source = ref.state_dict()
    body = [k for k in tuned if tuned[k].shape == source[k].shape and not k.startswith("out_conv.conv.conv.3")
            and not k.startswith("out_conv.conv.conv.4")]
    assert len(body) > 0.9 * len(tuned)
    for k in body:  # lr 1e-12: the body is still the checkpoint's
        if tuned[k].dtype.is_floating_point and "running" not in k:
            torch.testing.assert_close(tuned[k], source[k], atol=1e-6, rtol=0)
    assert tuned["out_conv.conv.conv.3.weight"].shape[0] == 15


# ----------------------------------------------------------------------------- bad PASTIS folders


def _broken(pastis: Path, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    shutil.copytree(pastis, out)
    return out


def test_bad_pastis_folders_give_clear_errors(pastis, tmp_path):
    runner = CliRunner()

    def fails(folder, msg, *args):
        res = runner.invoke(train_cmd, ["--dataset", str(folder), "--out", str(tmp_path / "run"), "--epochs", "1",
                                        "--device", "cpu", "-q", *args])
        assert res.exit_code in (1, 2) and msg in res.output, res.output
        assert not (tmp_path / "run").exists()

    no_norm = _broken(pastis, tmp_path, "no-norm")
    (no_norm / "NORM_S2_patch.json").unlink()
    fails(no_norm, "NORM_S2_patch.json missing")
    no_target = _broken(pastis, tmp_path, "no-target")
    (no_target / "ANNOTATIONS" / "TARGET_10005.npy").unlink()
    fails(no_target, "TARGET_10005.npy is missing")
    t_mismatch = _broken(pastis, tmp_path, "t-mismatch")
    data = np.load(t_mismatch / "DATA_S2" / "S2_10001.npy")
    np.save(t_mismatch / "DATA_S2" / "S2_10001.npy", data[:-1])
    fails(t_mismatch, f"holds {len(data) - 1} dates but metadata.geojson lists {len(data)}")
    bad_fold = _broken(pastis, tmp_path, "bad-fold")
    doc = json.loads((bad_fold / "metadata.geojson").read_text())
    doc["features"][3]["properties"]["Fold"] = 7
    (bad_fold / "metadata.geojson").write_text(json.dumps(doc))
    fails(bad_fold, "patch 10003: Fold 7 is not one of the folds 1..5")
    unsorted = _broken(pastis, tmp_path, "unsorted")
    doc = json.loads((unsorted / "metadata.geojson").read_text())
    d = doc["features"][0]["properties"]["dates-S2"]
    d["0"], d["1"] = d["1"], d["0"]
    (unsorted / "metadata.geojson").write_text(json.dumps(doc))
    fails(unsorted, "unique and ascending")
    fails(pastis, "fold(s) [9] do not exist", "--train-folds", "1,9")
    fails(pastis, "both trained and validated", "--train-folds", "1,2", "--val-folds", "2")
    fails(pastis, "--val-folds", "--val-folds", "x")
    bad_map = tmp_path / "bad.csv"
    bad_map.write_text("from,to\n1,2\n")
    fails(pastis, "needs the columns pastis_id,class_id", "--class-map", str(bad_map))
    not_pastis = tmp_path / "not-pastis"
    not_pastis.mkdir()
    (not_pastis / "readme.txt").write_text("hello")
    fails(not_pastis, "is not a crop2seg patch store")
    assert not is_pastis_folder(not_pastis) and is_pastis_folder(pastis)
    with pytest.raises(StoreError, match="--val-folds, not --val-tiles"):
        train(pastis, tmp_path / "r", epochs=1, val_tiles=["T31TFM"], **KW)
