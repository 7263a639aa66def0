"""The model configurations by name, and what they need of their inputs (no torch needed).

Argument checks (``--patch-size``) read :func:`patch_multiple` before anything starts, without
importing torch.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["PRESETS", "downscale_of", "patch_multiple"]

#: Named configurations (without the class count): "utae" is the published PASTIS setup,
#: "utae-small" (~90 k parameters) trains in minutes on a laptop CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "utae": dict(
        encoder_widths=[64, 64, 64, 128], decoder_widths=[32, 32, 64, 128], out_conv=[32],
        str_conv_k=4, str_conv_s=2, str_conv_p=1, agg_mode="att_group", encoder_norm="group",
        n_head=16, d_model=256, d_k=4, pad_value=0, padding_mode="reflect",
    ),
    "utae-small": dict(
        encoder_widths=[16, 16, 16, 32], decoder_widths=[16, 16, 16, 32], out_conv=[16],
        str_conv_k=4, str_conv_s=2, str_conv_p=1, agg_mode="att_group", encoder_norm="group",
        n_head=8, d_model=64, d_k=4, pad_value=0, padding_mode="reflect",
    ),
}


def downscale_of(config: dict[str, Any]) -> int:
    """The spatial divisor of a U-TAE configuration (``UTAE.downscale``): inputs must be a
    multiple of it (8 for the presets: three stride-2 down-convolutions)."""
    return int(config.get("str_conv_s", 2)) ** (len(config.get("encoder_widths", (64, 64, 64, 128))) - 1)


def patch_multiple() -> int:
    """What every model architecture's input side must be a multiple of (patches, windows).

    The least common multiple of the presets' spatial divisors (8 today); an architecture added
    to the package adds its divisor here.
    """
    return math.lcm(*(downscale_of(c) for c in PRESETS.values()))
