"""Which dates have clear sky over an area: SCL-only tasks, one per chunk (never reflectance)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dask
import numpy as np

from ..blocks import CubeSource, read_scl
from ..kernels.s2 import clear_mask

__all__ = ["clear_pixels", "clear_tasks"]

Window = tuple[int, int, int, int]


def clear_pixels(src: CubeSource, window: Window, unclear: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """Dask task: ``(clear pixels per date, pixels)`` of one window, from its SCL alone."""
    scl = read_scl(src, window)
    return clear_mask(scl, unclear).sum(axis=(1, 2)), int(scl.shape[1] * scl.shape[2])


def clear_tasks(src: Any, windows: Mapping[Any, Window] | Sequence[Window], unclear: Sequence[int]) -> list:
    """One :func:`clear_pixels` task per window (``src`` may be a shared graph key)."""
    wins = windows.values() if isinstance(windows, Mapping) else windows
    return [dask.delayed(clear_pixels, pure=True)(src, w, tuple(int(v) for v in unclear)) for w in wins]
