"""Models by name: ``build_model("timeunet", n_classes=15)``; architectures by ``model.json`` name.

The names and their configurations are in :mod:`.presets` (with a table of parameter counts).
"""

from __future__ import annotations

from typing import Any

from .base import ModelConfigError, SegmentationModel
from .presets import MODEL_NAMES, MODELS
from .timeunet import TimeUNet
from .unet3d import UNet3D
from .utae import UTAE
from .wtae import WTAE

__all__ = ["ARCHITECTURES", "MODELS", "MODEL_NAMES", "build_model"]

#: ``model.json["architecture"]`` -> class
ARCHITECTURES: dict[str, type[SegmentationModel]] = {
    cls.architecture: cls for cls in (UTAE, TimeUNet, WTAE, UNet3D)
}


def build_model(name: str, n_classes: int, input_dim: int = 10,
                **overrides: Any) -> SegmentationModel:
    """Build a named model.

    Args:
        name: one of :data:`~.presets.MODEL_NAMES` (see the table in :mod:`.presets`).
        n_classes: number of output classes (appended to the preset's ``out_conv``; UNet3D's
            ``n_classes``).
        input_dim: number of input bands.
        **overrides: any constructor argument of the architecture. An ``out_conv`` override is
            used as given when it ends with ``n_classes``, else ``n_classes`` is appended.

    Raises:
        ModelConfigError: unknown name, unknown argument or inconsistent configuration.
    """
    if name not in MODELS:
        raise ModelConfigError(f"unknown model {name!r}: choose one of {list(MODEL_NAMES)}")
    architecture, preset = MODELS[name]
    cls = ARCHITECTURES[architecture]
    config = {**preset, **overrides}
    if architecture == "unet3d":
        config["n_classes"] = int(n_classes)
    else:
        out_conv = [int(v) for v in config["out_conv"]]
        if not out_conv or out_conv[-1] != n_classes or "out_conv" not in overrides:
            out_conv = out_conv + [int(n_classes)]
        config["out_conv"] = out_conv
    try:
        return cls(input_dim=input_dim, **config)
    except TypeError as exc:  # an override the architecture does not take
        raise ModelConfigError(f"model {name!r} ({cls.display_name}): {exc}") from None
