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
    "read_parcels": "crop2seg_pipeline.labels",
    "rasterize_labels": "crop2seg_pipeline.labels",
    "CropMapping": "crop2seg_pipeline.labels",
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
    "Grid": "crop2seg_pipeline.grid",
}

__all__ = [*sorted(_LAZY), "load_model", "__version__"]


def load_model(weights_dir: Any, device: str = "cpu"):
    """Load a weights folder (``weights.pt`` + ``model.json``) as a ``torch.nn.Module`` in eval mode.

    The folder's metadata (bands, normalization, class names, reference date) is on
    ``model.meta``. Weights are read with ``torch.load(..., weights_only=True)``.
    """
    from .models.checkpoint import load_model as _load

    model, meta = _load(weights_dir, device=device)
    model.meta = meta
    return model


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crop2seg_pipeline' has no attribute {name!r}")
