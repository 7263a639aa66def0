"""Declarative workflows: one YAML file names the inputs, outputs, cluster and parameters.

Every command takes ``--workflow FILE``; the file's values become that command's defaults and
flags given on the command line override them (click's ``default_map``). Layout::

    name: demo
    cluster: local                # spec name, spec path or tcp:// address
    items: items.json             # a path/URL, or a STAC query (see workflows/czech-2019.yaml)
    parcels: parcels.gpkg
    mapping: null                 # null: the shipped Czech table
    build:   {out: patches.zarr, patch_size: 128, min_crop_cover: 0.3, ...}
    train:   {out: weights, model: utae-small, epochs: 30}
    evaluate: {out: evaluation, split: test}
    predict: {out: maps, overlap: 32}
    app:     {cache_dir: app-cache, port: 5006}

Keys are the commands' option names (``patch_size`` or ``patch-size``). Relative paths are
relative to the current directory, as on the command line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import yaml

from .errors import Crop2SegError

#: Keys shared by the commands, at the top level of a workflow.
TOP_LEVEL = {"name", "description", "cluster", "items", "parcels", "mapping", "id_column", "crop_column",
             "layer", "bbox", "bbox_crs", "start", "end", "workdir", "demo_size",
             "build", "train", "evaluate", "predict", "demo_scene", "search", "download", "app", "report",
             "export_pastis"}
#: Which top-level keys each command takes, and where its own section is.
COMMANDS: dict[str, dict[str, Any]] = {
    "build-dataset": {"section": "build", "shared": ["cluster", "items", "parcels", "mapping", "id_column",
                                                     "crop_column", "layer", "bbox", "bbox_crs", "start", "end",
                                                     "demo_size"]},
    "predict": {"section": "predict", "shared": ["cluster", "items", "parcels", "mapping", "id_column",
                                                 "crop_column", "layer", "bbox", "bbox_crs", "start", "end",
                                                 "demo_size"]},
    "train": {"section": "train", "shared": []},
    "evaluate": {"section": "evaluate", "shared": []},
    "demo-scene": {"section": "demo_scene", "shared": []},
    "export-pastis": {"section": "export_pastis", "shared": []},
    "merge-scenes": {"section": None, "shared": []},
    "cluster": {"section": None, "shared": [], "rename": {"cluster": "spec"}},
    "search": {"section": "search", "shared": ["bbox", "start", "end"]},
    "download": {"section": "download", "shared": ["cluster", "items", "bbox", "bbox_crs"]},
    "index-safe": {"section": None, "shared": []},
    "app": {"section": "app", "shared": ["cluster", "items", "parcels", "mapping", "id_column", "crop_column", "layer",
                                         "demo_size"]},
    "report": {"section": "report", "shared": ["cluster"]},
}


class WorkflowError(Crop2SegError):
    """A workflow file is missing, not valid YAML, or has keys a command does not know."""


def load(path: str | Path) -> dict:
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as e:
        raise WorkflowError(f"cannot read workflow {p}: {e}") from e
    except yaml.YAMLError as e:
        raise WorkflowError(f"workflow {p} is not valid YAML: {e}") from e
    if not isinstance(doc, Mapping):
        raise WorkflowError(f"workflow {p} must be a mapping of keys to values")
    doc = {_key(k): v for k, v in doc.items()}
    unknown = sorted(set(doc) - TOP_LEVEL)
    if unknown:
        raise WorkflowError(f"workflow {p}: unknown key(s) {unknown}; known: {sorted(TOP_LEVEL)}")
    doc["_path"] = str(p)
    return doc


def _key(k: Any) -> str:
    return str(k).replace("-", "_")


def _option_value(v: Any) -> Any:
    if isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
        return ",".join(str(x) for x in v)  # bbox, split: the CLI's comma form
    return v


def defaults_for(doc: Mapping[str, Any], command: str, params: set[str]) -> dict[str, Any]:
    """The ``default_map`` of ``command`` from a loaded workflow; checks keys against ``params``."""
    spec = COMMANDS[command]
    out: dict[str, Any] = {k: doc[k] for k in spec["shared"] if doc.get(k) is not None}
    for src, dst in spec.get("rename", {}).items():  # e.g. the workflow's cluster is crop2seg-cluster's SPEC
        if doc.get(src) is not None:
            out[dst] = doc[src]
    section = doc.get(spec["section"]) if spec["section"] else None
    if section is not None:
        if not isinstance(section, Mapping):
            raise WorkflowError(f"workflow {doc['_path']}: '{spec['section']}' must be a mapping")
        out.update({_key(k): v for k, v in section.items()})
    # chain the steps: train reads what build wrote, evaluate/predict use what train wrote
    build_out = (doc.get("build") or {}).get("out")
    train_out = (doc.get("train") or {}).get("out")
    if "dataset" in out:  # --dataset is the 'store' parameter of train/evaluate
        out["store"] = out.pop("dataset")
    if command in ("train", "evaluate", "export-pastis") and "store" not in out and build_out:
        out["store"] = build_out
    if command in ("evaluate", "predict", "app") and "weights" not in out and train_out:
        out["weights"] = train_out
    unknown = sorted(set(out) - params)
    if unknown:
        raise WorkflowError(
            f"workflow {doc['_path']}: {command} has no option(s) {', '.join('--' + u.replace('_', '-') for u in unknown)}"
        )
    if isinstance(out.get("items"), Mapping):
        out["items"] = str(resolve_stac_items(out["items"], doc))
    return {k: _option_value(v) for k, v in out.items()}


def resolve_stac_items(query: Mapping[str, Any], doc: Mapping[str, Any]) -> Path:
    """Run a workflow's STAC query once (:mod:`crop2seg_pipeline.search`) and cache the ItemCollection under ``workdir``.

    Keys: ``provider`` (earth-search, planetary-computer, cdse) and/or ``api`` (a STAC API URL),
    ``collection`` (default: the provider's), ``bbox`` / ``tiles``, ``windows`` (each ``start``,
    ``end``, ``max_cloud``) and ``max_per_window``.
    """
    from .search import Window, provider_for, search_windows, write_items

    q = dict(query.get("stac", query))
    for req in ("windows",):
        if req not in q:
            raise WorkflowError(f"workflow {doc['_path']}: the STAC query needs '{req}'")
    if not (q.get("bbox") or q.get("tiles")):
        raise WorkflowError(f"workflow {doc['_path']}: the STAC query needs 'bbox' or 'tiles'")
    provider, url = provider_for(q.get("provider"), q.get("api"))
    collection = q.get("collection") or (provider.collection if provider else None)
    if not collection:
        raise WorkflowError(f"workflow {doc['_path']}: the STAC query needs 'collection' with a generic 'api'")
    try:
        windows = [Window.parse(w) for w in q["windows"]]
    except ValueError as e:
        raise WorkflowError(f"workflow {doc['_path']}: {e}") from None
    digest = hashlib.sha256(json.dumps(q, sort_keys=True, default=str).encode()).hexdigest()[:12]
    cache = Path(doc.get("workdir") or ".crop2seg-workflow") / f"items-{digest}.json"
    if cache.exists():
        return cache
    items = search_windows(url, collection, bbox=q.get("bbox"), windows=windows, tiles=q.get("tiles"),
                           max_per_window=q.get("max_per_window"), provider=provider)
    return write_items(items, cache)


def workflow_option(command: str):
    """``--workflow FILE`` for a click command: the file's values become its defaults."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if not value:
            return
        try:
            doc = load(value)
            names = {p.name for p in ctx.command.params if p.name}
            defaults = defaults_for(doc, command, names)
        except Crop2SegError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None
        ctx.default_map = {**(ctx.default_map or {}), **defaults}

    return click.option(
        "--workflow", type=click.Path(dir_okay=False), is_eager=True, expose_value=False, callback=callback,
        help="Workflow YAML (workflows/*.yaml) whose values become defaults; flags override them.",
    )
