"""Workflow YAML files: shipped workflows map onto every command, flags override, STAC queries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from crop2seg_pipeline.cli.build import build_dataset_cmd
from crop2seg_pipeline.cli.demo import demo_scene_cmd
from crop2seg_pipeline.cli.cluster import cluster_cmd
from crop2seg_pipeline.cli.evaluate import evaluate_cmd
from crop2seg_pipeline.cli.train import train_cmd
from crop2seg_pipeline.cli.predict import predict_cmd
from crop2seg_pipeline.search import Window, search_windows
from crop2seg_pipeline.cli.report import report_cmd
from crop2seg_pipeline.store import open_store
from crop2seg_pipeline.workflow import WorkflowError, defaults_for, load

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"build-dataset": build_dataset_cmd, "train": train_cmd, "evaluate": evaluate_cmd,
            "predict": predict_cmd, "demo-scene": demo_scene_cmd, "cluster": cluster_cmd, "report": report_cmd}


@pytest.mark.parametrize("name", ["demo.yaml", "czech-2019.yaml"])
def test_shipped_workflows_fit_every_command(name):
    doc = load(ROOT / "workflows" / name)
    if isinstance(doc.get("items"), dict):  # a STAC query needs the network: tested below on loopback
        doc = {**doc, "items": None}
    for command, cmd in COMMANDS.items():
        params = {p.name for p in cmd.params}
        defaults = defaults_for(doc, command, params)
        assert set(defaults) <= params
    d = defaults_for(doc, "train", {p.name for p in train_cmd.params})
    assert d["store"] == doc["build"]["out"]  # steps are chained
    assert defaults_for(doc, "predict", {p.name for p in predict_cmd.params})["weights"] == doc["train"]["out"]


def test_czech_workflow_is_the_s2tsczcrop_recipe():
    q = load(ROOT / "workflows" / "czech-2019.yaml")["items"]["stac"]
    windows = [Window.parse(w) for w in q["windows"]]
    assert [w.max_cloud for w in windows] == [65, 65, 65, 65, 65, 35, 65, 20, 55, 15, 25, 55, 45, 35]
    assert windows[0].start.isoformat() == "2018-09-01" and windows[-1].end.isoformat() == "2019-10-31"
    assert len(q["tiles"]) == 12 and q["max_per_window"] == 5


def test_cluster_command_takes_the_workflow_cluster(tmp_path):
    wf = tmp_path / "wf.yaml"
    wf.write_text("cluster: slurm\n")
    res = CliRunner().invoke(cluster_cmd, ["--workflow", str(wf), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "#SBATCH" in res.output and "--lifetime" in res.output


def test_bad_workflows_are_named(tmp_path):
    bad = tmp_path / "w.yaml"
    bad.write_text("itmes: x.json\n")
    with pytest.raises(WorkflowError, match="unknown key"):
        load(bad)
    bad.write_text("build: {patch_sise: 64}\n")
    with pytest.raises(WorkflowError, match="--patch-sise"):
        defaults_for(load(bad), "build-dataset", {p.name for p in build_dataset_cmd.params})
    bad.write_text("build: [1, 2\n")
    with pytest.raises(WorkflowError, match="not valid YAML"):
        load(bad)
    res = CliRunner().invoke(build_dataset_cmd, ["--workflow", str(tmp_path / "missing.yaml")])
    assert res.exit_code != 0 and "cannot read workflow" in res.output


@pytest.mark.slow
def test_build_from_workflow_with_flag_override(demo_scene, tmp_path):
    wf = tmp_path / "wf.yaml"
    out = tmp_path / "p.zarr"
    wf.write_text(yaml.safe_dump({
        "items": str(demo_scene.items), "parcels": str(demo_scene.parcels), "mapping": str(demo_scene.mapping),
        "build": {"out": str(out), "patch_size": 64, "chunksize": 256, "seed": 1, "min_crop_cover": 0.3},
    }))
    res = CliRunner().invoke(build_dataset_cmd, ["--workflow", str(wf), "--seed", "7", "--workers", "1", "-q"])
    assert res.exit_code == 0, res.output
    params = open_store(out).attrs["build_parameters"]
    assert params["patch_size"] == 64 and params["seed"] == 7  # the flag won over the workflow


def _provider_items(scene):
    """Demo items as a STAC API returns them (absolute hrefs, a collection)."""
    doc = json.loads(Path(scene.items).read_text())
    root = Path(scene.items).parent
    for it in doc["features"]:
        it["collection"] = "sentinel-2-l2a"
        for a in it["assets"].values():
            a["href"] = str(root / a["href"])
    return doc["features"]


def test_stac_query_windows_per_tile_limits(small_scene, tmp_path):
    from stacapi import serve

    items = _provider_items(small_scene)
    other_tile = json.loads(json.dumps(items[0]))
    other_tile["id"] = other_tile["id"].replace("T33UWQ", "T33UVQ")
    other_tile["properties"]["grid:code"] = "MGRS-33UVQ"
    other_tile["properties"].pop("s2:mgrs_tile", None)
    with serve(items + [other_tile]) as api:
        windows = [Window.parse({"start": "2021-09-01", "end": "2022-02-28", "max_cloud": 50}),
                   Window.parse({"start": "2022-03-01", "end": "2022-10-31", "max_cloud": 100})]
        got = search_windows(api.url, "sentinel-2-l2a", bbox=[10, 45, 20, 55], windows=windows,
                             tiles=["33UWQ"], max_per_window=2, limit=1)
        assert len(api.bodies) > 2  # limit=1: paging through next links
    assert all("T33UVQ" not in it["id"] for it in got)
    first = [it for it in got if it["properties"]["datetime"] < "2022-03"]
    assert len(first) <= 2 and all(it["properties"]["eo:cloud_cover"] <= 50 for it in first)
    expected = sorted((it for it in items if it["properties"]["datetime"] < "2022-03"
                       and it["properties"]["eo:cloud_cover"] <= 50), key=lambda i: i["properties"]["eo:cloud_cover"])[:2]
    assert {i["id"] for i in first} == {i["id"] for i in expected}
    assert len(got) - len(first) == 2


def test_workflow_with_stac_query_caches_items(small_scene, tmp_path, monkeypatch):
    from stacapi import serve

    monkeypatch.chdir(tmp_path)
    with serve(_provider_items(small_scene)) as api:
        wf = tmp_path / "wf.yaml"
        wf.write_text(yaml.safe_dump({
            "workdir": str(tmp_path / "work"),
            "items": {"stac": {"api": api.url, "collection": "sentinel-2-l2a", "bbox": [10, 45, 20, 55],
                               "windows": [{"start": "2021-09-01", "end": "2022-10-31", "max_cloud": 100}]}},
            "parcels": str(small_scene.parcels),
        }))
        d = defaults_for(load(wf), "build-dataset", {p.name for p in build_dataset_cmd.params})
        n_calls = len(api.bodies)
        again = defaults_for(load(wf), "build-dataset", {p.name for p in build_dataset_cmd.params})
        assert len(api.bodies) == n_calls  # cached: no second search
    cached = Path(d["items"])
    assert cached == Path(again["items"]) and cached.parent == tmp_path / "work"
    feats = json.loads(cached.read_text())["features"]
    assert len(feats) == len(small_scene.dates)
    from crop2seg_pipeline.cube import load_cube
    assert load_cube(str(cached)).sizes["time"] == len(small_scene.dates)
