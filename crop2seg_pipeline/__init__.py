"""crop2seg-pipeline: Sentinel-2 time series + LPIS parcels -> crop-type maps, on Dask.

The public API, imported lazily (so ``import crop2seg_pipeline`` does not load torch or dask):

>>> import crop2seg_pipeline as c2s
>>> cube = c2s.load_cube("items.json", bbox=(15.1, 49.5, 15.2, 49.6))     # lazy (time, band, y, x)
>>> c2s.build_dataset("items.json", "parcels.gpkg", "patches.zarr")         # Zarr patch store
>>> model = c2s.load_model("weights/")                                      # nn.Module, eval mode
>>> logits = model(x, batch_positions)                                      # (B, class, y, x)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_cube": "crop2seg_pipeline.cube",
    "clear_sky": "crop2seg_pipeline.cube",
    "normalize_items": "crop2seg_pipeline.items",
    "read_items": "crop2seg_pipeline.items",
    "read_parcels": "crop2seg_pipeline.parcels",
    "rasterize_labels": "crop2seg_pipeline.graph.labels",
    "CropMapping": "crop2seg_pipeline.mapping",
    "build_dataset": "crop2seg_pipeline.build",
    "BuildConfig": "crop2seg_pipeline.build",
    "open_store": "crop2seg_pipeline.store",
    "PatchDataset": "crop2seg_pipeline.dataset",
    "collate_patches": "crop2seg_pipeline.dataset",
    "train": "crop2seg_pipeline.train",
    "TemporalAugment": "crop2seg_pipeline.augment",
    "export_pastis": "crop2seg_pipeline.pastis_export",
    "PastisDataset": "crop2seg_pipeline.pastis",
    "evaluate": "crop2seg_pipeline.evaluate",
    "predict": "crop2seg_pipeline.predict",
    "predict_cube": "crop2seg_pipeline.predict",
    "make_demo_scene": "crop2seg_pipeline.demo",
    "connect": "crop2seg_pipeline.cluster",
    "make_report": "crop2seg_pipeline.report",
    "Grid": "crop2seg_pipeline.grid",
    # a weights folder -> nn.Module in eval mode, metadata on model.meta (any architecture)
    "load_model": "crop2seg_pipeline.models.checkpoint",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crop2seg_pipeline' has no attribute {name!r}")
