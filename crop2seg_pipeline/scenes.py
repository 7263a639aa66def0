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
    try:
        meta = json.loads((root / "scene.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise MergeError(f"{root} is not a demo scene folder (no readable scene.json); make it with "
                         "crop2seg-demo-scene") from None
    missing = [n for n in ("items.json", "parcels.gpkg", "crop_mapping.csv") if not (root / n).exists()]
    if missing:
        raise MergeError(f"demo scene {root} is incomplete (missing {', '.join(missing)}); run its "
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
        tile = m.get("tile", "33UWQ")
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

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "items.json.tmp"
    tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1), encoding="utf-8")
    os.replace(tmp, out / "items.json")
    parcels.to_file(out / "parcels.gpkg", layer="parcels", driver="GPKG", index=False)
    (out / "crop_mapping.csv").write_bytes(mapping)
    summary = {"scenes": [{"root": str(r.resolve()), "tile": m.get("tile", "33UWQ"), **m.get("parameters", {}),
                           "n_dates": len(m.get("dates", [])), "n_parcels": m.get("n_parcels")}
                          for r, m in zip(roots, metas)],
               "n_items": len(features), "n_parcels": int(len(parcels))}
    (out / "scenes.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return MergedScenes(root=out, items=out / "items.json", parcels=out / "parcels.gpkg",
                        mapping=out / "crop_mapping.csv", tiles=tuple(tiles), n_items=len(features),
                        n_parcels=int(len(parcels)))
