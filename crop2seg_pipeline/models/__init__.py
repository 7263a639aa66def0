"""Neural networks (U-TAE, Time-Unet, W-TAE, UNet3D) and weights folders.

>>> from crop2seg_pipeline.models import build_model, load_model
>>> model = build_model("timeunet", n_classes=15)   # doctest: +SKIP  any of MODEL_NAMES
>>> model = load_model("weights/")                  # doctest: +SKIP  eval mode, model.meta
>>> logits = model(x, batch_positions)              # doctest: +SKIP  (B, T, C, H, W) -> (B, K, H, W)

Names are imported lazily, so ``crop2seg_pipeline.models.presets`` (the model names, plain data)
can be read without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SegmentationModel": "base",
    "ModelConfigError": "base",
    "UTAE": "utae",
    "UTAEOutput": "utae",
    "PRESETS": "utae",
    "boundary_target": "utae",
    "TimeUNet": "timeunet",
    "WTAE": "wtae",
    "UNet3D": "unet3d",
    "LTAE2d": "ltae",
    "Crop2SegLTAE": "ltae",
    "MODELS": "presets",
    "MODEL_NAMES": "presets",
    "downscale_of": "presets",
    "patch_multiple": "presets",
    "ARCHITECTURES": "registry",
    "build_model": "registry",
    "save_weights": "checkpoint",
    "load_model": "checkpoint",
    "load_reference_state_dict": "checkpoint",
    "CheckpointError": "checkpoint",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
