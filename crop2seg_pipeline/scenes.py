"""Several demo scenes (one per tile) as one build input: one items JSON, one parcel file.

``crop2seg-build-dataset`` takes one ItemCollection and one parcel file and groups the items by
tile, so a patch store of many scenes needs their items in one collection and their parcels in
one file. :func:`merge_scenes` writes exactly that from demo scene folders
(``crop2seg-demo-scene`` output): every asset ``href`` made absolute (a scene's are relative to
its own folder), the parcels concatenated in the first scene's CRS, the crop mapping copied
(all scenes must share it). Each scene must stand for its own tile (``--tile``): two scenes of
one tile would become one tile's time series in the build.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import storage
from .demo import TILE, read_scene_marker, scene_is_complete
from .errors import Crop2SegError

__all__ = ["MergedScenes", "merge_scenes", "MergeError"]

#: The files :func:`merge_scenes` writes into its output folder.
OUTPUT_NAMES = ("items.json", "parcels.gpkg", "crop_mapping.csv", "scenes.json")


class MergeError(Crop2SegError):
    """Scenes that cannot be merged (missing files, a tile twice, another mapping, a used folder)."""


@dataclass(frozen=True)
class MergedScenes:
    """What :func:`merge_scenes` wrote: the build's ``items``, ``parcels`` and ``mapping``."""

    root: Path
    items: Path
    parcels: Path
    mapping: Path
    tiles: tuple[str, ...]
    n_items: int
    n_parcels: int


def _read_scene(root: Path) -> dict:
    meta = read_scene_marker(root)
    if meta is None:
        raise MergeError(f"{root} is not a demo scene folder (no readable scene.json); make it with "
                         "crop2seg-demo-scene")
    if not scene_is_complete(root, meta):
        raise MergeError(f"demo scene {root} is incomplete (files its scene.json names are missing); run its "
                         "crop2seg-demo-scene command again")
    return meta


def _absolute_hrefs(item: dict, base: Path) -> dict:
    for asset in item.get("assets", {}).values():
        href = asset.get("href", "")
        if href and "://" not in href and not os.path.isabs(href):
            asset["href"] = str((base / href).resolve())
    return item


def merge_scenes(scenes: Sequence[str | os.PathLike], outdir: str | os.PathLike) -> MergedScenes:
    """Write ``outdir/items.json``, ``parcels.gpkg``, ``crop_mapping.csv`` and ``scenes.json``
    from the demo scene folders ``scenes`` (at least one; each on its own tile).

    Everything is checked before anything is written; ``outdir`` may exist but must not hold any
    of those files (nothing is overwritten).

    Raises
    ------
    MergeError
        A folder is not a complete demo scene, two scenes share a tile, the crop mappings
        differ, or ``outdir`` already holds merged files.
    """
    import geopandas as gpd
    import pandas as pd

    roots = [Path(s) for s in scenes]
    if not roots:
        raise MergeError("give at least one demo scene folder")
    metas = [_read_scene(r) for r in roots]
    tiles: dict[str, Path] = {}
    for r, m in zip(roots, metas):
        tile = m.get("tile", TILE)
        if tile in tiles:
            raise MergeError(f"{tiles[tile]} and {r} both stand for tile {tile}: a store groups items by tile, so "
                             "make each scene on its own tile (crop2seg-demo-scene --tile)")
        tiles[tile] = r
    mapping = (roots[0] / "crop_mapping.csv").read_bytes()
    for r in roots[1:]:
        if (r / "crop_mapping.csv").read_bytes() != mapping:
            raise MergeError(f"{r}/crop_mapping.csv differs from {roots[0]}/crop_mapping.csv: merged scenes share "
                             "one crop mapping")
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise MergeError(f"{out} exists and is not a folder")
    taken = [n for n in OUTPUT_NAMES if (out / n).exists()]
    if taken:
        raise MergeError(f"{out} already holds {', '.join(taken)}: give an empty or new folder (nothing is "
                         "overwritten)")

    features: list[dict] = []
    frames = []
    for r in roots:
        doc = json.loads((r / "items.json").read_text(encoding="utf-8"))
        features += [_absolute_hrefs(it, r) for it in doc.get("features", [])]
        frames.append(gpd.read_file(r / "parcels.gpkg"))
    crs = frames[0].crs
    parcels = gpd.GeoDataFrame(pd.concat([f.to_crs(crs) for f in frames], ignore_index=True), crs=crs)

    # each file written whole under a temporary name, then renamed: an interrupted merge leaves
    # none of the names a re-run refuses to overwrite half-written
    out.mkdir(parents=True, exist_ok=True)
    tmp_parcels = out / f".parcels.{os.getpid()}.tmp.gpkg"
    try:
        parcels.to_file(tmp_parcels, layer="parcels", driver="GPKG", index=False)
        os.replace(tmp_parcels, out / "parcels.gpkg")
    finally:
        tmp_parcels.unlink(missing_ok=True)
    storage.write_bytes(out / "crop_mapping.csv", mapping)
    summary = {"scenes": [{"root": str(r.resolve()), "tile": m.get("tile", TILE), **m.get("parameters", {}),
                           "n_dates": len(m.get("dates", [])), "n_parcels": m.get("n_parcels")}
                          for r, m in zip(roots, metas)],
               "n_items": len(features), "n_parcels": int(len(parcels))}
    storage.write_bytes(out / "scenes.json", json.dumps(summary, indent=1).encode())
    # items last: the build's input is complete once it exists
    doc = {"type": "FeatureCollection", "features": features}
    storage.write_bytes(out / "items.json", json.dumps(doc, indent=1).encode())
    return MergedScenes(root=out, items=out / "items.json", parcels=out / "parcels.gpkg",
                        mapping=out / "crop_mapping.csv", tiles=tuple(tiles), n_items=len(features),
                        n_parcels=int(len(parcels)))
