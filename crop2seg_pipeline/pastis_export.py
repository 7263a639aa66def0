"""Export a patch store in the PASTIS layout (``crop2seg-export-pastis``).

The folder is readable by the reference ``PASTIS_Dataset`` (VSainteuf/pastis-benchmark,
``norm=True, target="semantic"``) and by :class:`crop2seg_pipeline.pastis.PastisDataset`:

``DATA_S2/S2_{ID}.npy``
    (T, 10, H, W) uint16 reflectance DN exactly as in the store, T the patch's own dates (the
    store's NaT padding dropped); ``ID`` is the patch's index in the store.
``ANNOTATIONS/TARGET_{ID}.npy``
    (1, H, W) uint8: channel 0, the semantic class (the only channel the reference reads for
    ``target="semantic"``). The classes stay this pipeline's 15 (0 Background .. 13 Other crops,
    14 Not classified: ignore it, as PASTIS's 19 Void label); they are not PASTIS's classes.
``metadata.geojson``
    one feature per patch: its footprint (polygon in the store's CRS when all patches share
    one, else EPSG:4326), ``ID_PATCH`` (int), ``Fold`` (int), ``dates-S2`` ``{"0": YYYYMMDD,
    ...}`` (unique, ascending), plus ``TILE``, ``split``, ``row``, ``col`` and ``clear-S2`` (the
    store's per-date clear-sky share) which the reference ignores.
``NORM_S2_patch.json``
    ``Fold_1`` .. ``Fold_5``: each the store's train normalization (pooled per-band mean and
    std; a std of 0 written as 1, as the pipeline's preprocessing treats it), so the reference
    loader standardizes exactly as ``crop2seg-train`` does, whatever folds it is given.
``crop2seg_export.json``
    the manifest: source store and fingerprint, fold mapping, classes, reference date, status.

Splits map to folds: ``train`` -> 1, 2, 3 (by the store's spatial split blocks, so
neighbouring patches share a fold), ``val`` -> 4, ``test`` -> 5.

Dates: the reference loader counts days from its ``reference_date`` (default 2018-09-01) and
keeps days -200 .. 599 from it; give it the manifest's ``reference_date`` (the September 1st
before the store's first date) for data of another season.

Writing: the store is read patch by patch. The manifest is written first (``status:
"writing"``), every array atomically (temporary file + rename), ``metadata.geojson`` and
``NORM_S2_patch.json`` only after the last patch, and the manifest's ``status: "complete"`` last:
a half-written folder has no ``metadata.geojson`` and is never taken for a PASTIS dataset. Run
the same export again to finish it (written patches are kept); a complete export of the same
store is left as is. A folder that holds anything else is never written into.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from . import __version__
from .dataset import default_reference_date
from .errors import StoreError
from .nomenclature import BANDS, CLASS_NAMES, NOT_CLASSIFIED
from .pastis import (
    DATA_DIR,
    FOLDS,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    METADATA_FILE,
    NORM_FILE,
    SPLIT_FOLDS,
    TARGET_DIR,
)
from .storage import write_local_atomic
from .store import open_store, read_attrs

__all__ = ["export_pastis", "ExportError", "fold_of"]

log = logging.getLogger(__name__)


class ExportError(StoreError):
    """The export target cannot be written (holds other files, or an export of another store)."""


def fold_of(split: str, tile: str, row: int, col: int, block: int) -> int:
    """The PASTIS fold of a patch: train -> 1..3 by its spatial block, val -> 4, test -> 5."""
    folds = SPLIT_FOLDS.get(split)
    if folds is None:
        raise ExportError(f"split {split!r} has no PASTIS fold (splits: {', '.join(SPLIT_FOLDS)})")
    if len(folds) == 1:
        return folds[0]
    key = f"{tile}/{row // block}/{col // block}".encode()
    return folds[zlib.crc32(key) % len(folds)]


def _write_json(path: Path, doc: Any) -> None:
    write_local_atomic(path, lambda fh: fh.write(json.dumps(doc, indent=1).encode("utf-8")))


def _source_fingerprint(store: str | os.PathLike, attrs: dict[str, Any]) -> str:
    if attrs.get("fingerprint"):
        return str(attrs["fingerprint"])
    return hashlib.sha256((Path(store) / "zarr.json").read_bytes()).hexdigest()[:16]


def _check_target(out: Path, fingerprint: str) -> dict[str, Any] | None:
    """The manifest of an earlier export of this store into ``out`` (None: a fresh folder)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; choose another OUT")
    if not out.exists() or not any(out.iterdir()):
        return None
    manifest = out / MANIFEST_FILE
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"{out} is not empty and is not a PASTIS export of crop2seg-export-pastis; choose an "
                          "empty or new OUT folder (nothing was written)")
    if doc.get("source_fingerprint") != fingerprint:
        raise ExportError(f"{out} holds an export of another store ({doc.get('source')}); choose another OUT or "
                          "remove that export yourself (nothing was written)")
    return doc


def export_pastis(store: str | os.PathLike, out: str | os.PathLike, *,
                  progress: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Write ``store`` (a complete patch store) into ``out`` in the PASTIS layout.

    Returns:
        the manifest (``n_patches``, ``written`` now, ``folds`` per split, ``reference_date``...).

    Raises:
        StoreError: not a complete patch store, or dates that are not unique and ascending.
        ExportError: ``out`` is a file, a non-empty folder that is not an export of ours, or an
            export of another store.
    """
    say = progress or log.info
    t0 = time.perf_counter()
    ds = open_store(store)
    attrs = read_attrs(store)
    fingerprint = _source_fingerprint(store, attrs)
    out = Path(out)
    previous = _check_target(out, fingerprint)
    if previous is not None and previous.get("status") == "complete":
        say(f"{out} already holds the complete export of {store}; nothing to do")
        return {**previous, "written": 0}

    n = int(ds.sizes["patch"])
    bands = [str(b) for b in ds["band"].values]
    if bands != list(BANDS):
        raise StoreError(f"{store} has bands {bands}; the PASTIS layout needs {list(BANDS)}")
    dates = ds["dates"].values.astype("datetime64[D]")
    clear = ds["clear"].values
    splits = np.array(ds["split"].values.tolist(), dtype=str)
    tiles = np.array(ds["tile"].values.tolist(), dtype=str)
    rows, cols = ds["row"].values.astype(int), ds["col"].values.astype(int)
    block = int((attrs.get("build_parameters") or {}).get("split_block", 2))
    folds = np.array([fold_of(s, t, r, c, block) for s, t, r, c in zip(splits, tiles, rows, cols)], int)
    counts = (~np.isnat(dates)).sum(axis=1)
    for i in range(n):
        d = dates[i, :counts[i]]
        if counts[i] == 0 or np.isnat(dates[i, counts[i]:]).sum() != dates.shape[1] - counts[i] \
                or (len(d) > 1 and not (np.diff(d) > np.timedelta64(0, "D")).all()):
            raise StoreError(f"{store}: patch {i} has no dates, padding inside its dates, or dates that are not "
                             "unique and ascending; the PASTIS layout needs one ascending date list per patch")
    first = dates[~np.isnat(dates)].min()
    reference_date = default_reference_date(first).isoformat()
    norm = (attrs.get("normalization") or {}).get("train") or {}
    if norm.get("mean") is None or norm.get("std") is None:
        raise StoreError(f"{store} has no train normalization statistics (normalization.train.mean/std)")

    manifest = {
        "format": MANIFEST_FORMAT, "format_version": 1, "status": "writing",
        "source": str(Path(store).resolve()), "source_fingerprint": fingerprint, "n_patches": n,
        "written": 0, "folds": {s: list(f) for s, f in SPLIT_FOLDS.items()},
        "patches_per_fold": {str(f): int((folds == f).sum()) for f in FOLDS},
        "class_names": list(attrs.get("class_names") or CLASS_NAMES), "ignore_index": NOT_CLASSIFIED,
        "reference_date": reference_date, "bands": bands,
        "normalization": {"mean": [float(v) for v in norm["mean"]],
                          "std": [float(v) if v > 0 else 1.0 for v in norm["std"]]},
        "preprocessing": {k: v for k, v in {
            "min_date_clear": (attrs.get("build_parameters") or {}).get("min_date_clear", 0.0),
            "unclear_scl": (attrs.get("build_parameters") or {}).get("unclear_scl"),
            "resampling_20m": (attrs.get("build_parameters") or {}).get("resampling_20m", "nearest"),
        }.items() if v is not None},
        "software": f"crop2seg-pipeline {__version__}",
    }
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / MANIFEST_FILE, manifest)
    (out / DATA_DIR).mkdir(exist_ok=True)
    (out / TARGET_DIR).mkdir(exist_ok=True)

    g = zarr.open_group(str(store), mode="r", zarr_format=3)
    s2, label = g["s2"], g["label"]
    written = kept = 0
    every = max(1, n // 20)
    for i in range(n):
        data_file, target_file = out / DATA_DIR / f"S2_{i}.npy", out / TARGET_DIR / f"TARGET_{i}.npy"
        if data_file.is_file() and target_file.is_file():  # written (atomically) by an earlier run
            kept += 1
            continue
        t = int(counts[i])
        patch = np.asarray(s2[i, :t])                     # one patch at a time
        target = np.asarray(label[i])[None].astype(np.uint8)
        write_local_atomic(target_file, lambda fh: np.save(fh, target, allow_pickle=False))
        write_local_atomic(data_file, lambda fh: np.save(fh, patch, allow_pickle=False))
        written += 1
        if (written + kept) % every == 0 or i == n - 1:
            say(f"exported {written + kept}/{n} patches" + (f" ({kept} kept from an earlier run)" if kept else ""))
            if written % (every * 5) == 0:
                _write_json(out / MANIFEST_FILE, {**manifest, "written": written + kept})

    epsgs = sorted(set(int(e) for e in ds["epsg"].values))
    res = float(attrs.get("resolution", 10.0))
    h, w = int(ds.sizes["y"]), int(ds.sizes["x"])
    x0, y0 = ds["x0"].values.astype(float), ds["y0"].values.astype(float)
    rings = [[[x0[i], y0[i]], [x0[i] + w * res, y0[i]], [x0[i] + w * res, y0[i] - h * res],
              [x0[i], y0[i] - h * res], [x0[i], y0[i]]] for i in range(n)]
    if len(epsgs) == 1:
        crs = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsgs[0]}"}}
    else:  # one GeoJSON has one CRS: patches of several UTM zones go to WGS 84
        from pyproj import Transformer

        crs = None
        for i in range(n):
            tr = Transformer.from_crs(int(ds["epsg"].values[i]), 4326, always_xy=True)
            rings[i] = [list(tr.transform(x, y)) for x, y in rings[i]]
    features = [{
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [rings[i]]},
        "properties": {
            "ID_PATCH": i, "Fold": int(folds[i]), "TILE": str(tiles[i]), "split": str(splits[i]),
            "row": int(rows[i]), "col": int(cols[i]),
            "dates-S2": {str(k): int(str(d).replace("-", "")) for k, d in enumerate(dates[i, :counts[i]])},
            "clear-S2": {str(k): round(float(c), 4) for k, c in enumerate(clear[i, :counts[i]])},
        },
    } for i in range(n)]
    geo = {"type": "FeatureCollection", "name": "metadata", **({"crs": crs} if crs else {}), "features": features}
    # a std of 0 (a store without train pixels, a constant band) is 1, as the pipeline's preprocessing
    # does: the reference loader would divide by it
    stats = {"mean": [float(v) for v in norm["mean"]], "std": [float(v) if v > 0 else 1.0 for v in norm["std"]]}
    _write_json(out / NORM_FILE, {f"Fold_{f}": stats for f in FOLDS})
    _write_json(out / METADATA_FILE, geo)
    manifest.update(status="complete", written=n, seconds=round(time.perf_counter() - t0, 3))
    _write_json(out / MANIFEST_FILE, manifest)
    say(f"wrote the PASTIS layout of {n} patches into {out} (folds: train -> 1-3, val -> 4, test -> 5)")
    return {**manifest, "written": written}
