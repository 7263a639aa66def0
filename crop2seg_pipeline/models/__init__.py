"""Neural networks (U-TAE, L-TAE) and weights folders.

>>> from crop2seg_pipeline.models import load_model
>>> model, meta = load_model("weights/")          # doctest: +SKIP
>>> logits = model(x, batch_positions)            # doctest: +SKIP  (B, T, C, H, W) -> (B, K, H, W)

The torch parts are imported on first use, so that the presets (:mod:`.presets`: what inputs
the models need) are read by argument checks without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .presets import PRESETS, downscale_of, patch_multiple

_LAZY = {
    "CheckpointError": ".checkpoint",
    "load_model": ".checkpoint",
    "load_reference_state_dict": ".checkpoint",
    "save_weights": ".checkpoint",
    "LTAE2d": ".ltae",
    "UTAE": ".utae",
    "ModelConfigError": ".utae",
    "UTAEOutput": ".utae",
    "boundary_target": ".utae",
    "build_model": ".utae",
}

__all__ = [
    "UTAE",
    "UTAEOutput",
    "LTAE2d",
    "PRESETS",
    "build_model",
    "boundary_target",
    "save_weights",
    "load_model",
    "load_reference_state_dict",
    "CheckpointError",
    "ModelConfigError",
    "downscale_of",
    "patch_multiple",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
