"""Named model configurations (plain data, no torch import: the CLI reads it for ``--model``).

=================  ============  ===========  ==============================================
name               architecture  parameters*  what
=================  ============  ===========  ==============================================
``utae``           ``utae``      1,085,805    U-TAE, the published PASTIS configuration
``utae-small``     ``utae``         89,213    U-TAE for a laptop CPU
``timeunet``       ``timeunet``  1,052,589    Crop2Seg's Time-Unet (``TimeUNet_v1``)
``timeunet-small`` ``timeunet``     87,053    Time-Unet for a laptop CPU
``wtae``           ``wtae``      1,114,157    Crop2Seg's W-TAE
``wtae-small``     ``wtae``         92,461    W-TAE for a laptop CPU
``unet3d``         ``unet3d``    1,551,631    UNet3D (Rustowicz et al.), the PASTIS baseline
``unet3d-small``   ``unet3d``      100,207    UNet3D with ``feats=2``
=================  ============  ===========  ==============================================

\\* with 10 input bands and 15 classes (pinned in ``tests/test_models.py``). The class count is
not part of a preset: :func:`~.registry.build_model` appends it to ``out_conv`` (UNet3D:
``n_classes``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MODELS", "MODEL_NAMES", "downscale_of", "patch_multiple"]

_FULL_UNET = dict(encoder_widths=[64, 64, 64, 128], decoder_widths=[32, 32, 64, 128], out_conv=[32],
                  str_conv_k=4, str_conv_s=2, str_conv_p=1, encoder_norm="group", n_head=16,
                  d_model=256, d_k=4, pad_value=0, padding_mode="reflect")
_SMALL_UNET = dict(encoder_widths=[16, 16, 16, 32], decoder_widths=[16, 16, 16, 32], out_conv=[16],
                   str_conv_k=4, str_conv_s=2, str_conv_p=1, encoder_norm="group", n_head=8,
                   d_model=64, d_k=4, pad_value=0, padding_mode="reflect")

#: model name -> (architecture, constructor arguments without the class count)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "utae": ("utae", {**_FULL_UNET, "agg_mode": "att_group"}),
    "utae-small": ("utae", {**_SMALL_UNET, "agg_mode": "att_group"}),
    "timeunet": ("timeunet", dict(_FULL_UNET)),
    "timeunet-small": ("timeunet", dict(_SMALL_UNET)),
    "wtae": ("wtae", {**_FULL_UNET, "agg_mode": "att_group"}),
    "wtae-small": ("wtae", {**_SMALL_UNET, "agg_mode": "att_group"}),
    "unet3d": ("unet3d", dict(feats=8, pad_value=0, zero_pad=True)),
    "unet3d-small": ("unet3d", dict(feats=2, pad_value=0, zero_pad=True)),
}

#: every name ``build_model`` and ``crop2seg-train --model`` accept, in table order
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def downscale_of(name: str) -> int:
    """What the input side of model ``name`` must be a multiple of (its ``downscale``), from its
    configuration alone (no torch): the U-Net-like architectures halve the input once per
    encoder stage after the first (``str_conv_s ** (len(encoder_widths) - 1)``, 8 for the
    presets); UNet3D pools twice (4). ``tests/test_bad_inputs.py`` pins this against
    ``build_model(name).downscale`` for every name."""
    architecture, config = MODELS[name]
    if architecture == "unet3d":
        return 4
    return int(config.get("str_conv_s", 2)) ** (len(config["encoder_widths"]) - 1)


def patch_multiple() -> int:
    """What a patch side must be a multiple of so that every model can train on it (8 today)."""
    import math

    return math.lcm(*(downscale_of(name) for name in MODELS))
