"""Neural networks (U-TAE, L-TAE) and weights folders.

>>> from crop2seg_pipeline.models import load_model
>>> model, meta = load_model("weights/")          # doctest: +SKIP
>>> logits = model(x, batch_positions)            # doctest: +SKIP  (B, T, C, H, W) -> (B, K, H, W)
"""

from .checkpoint import CheckpointError, load_model, load_reference_state_dict, save_weights
from .ltae import LTAE2d
from .utae import PRESETS, UTAE, ModelConfigError, UTAEOutput, boundary_target, build_model

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
]
