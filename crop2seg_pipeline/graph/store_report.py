"""Dask layer of the store report: one task per patch, added up in a tree of small tasks.

:func:`patch_summary` (a task body) reads one patch's ``s2``, ``label`` and ``parcel_id`` chunks and
returns its per class/date/feature moments, class pixel counts and (class, parcel id) codes;
:func:`combine_summaries` adds summaries up; :func:`summary_tree` builds the graph, so a task holds
one patch or ``split_every`` small summaries, never the store. The driver is
:func:`crop2seg_pipeline.report.store_stats.store_statistics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import numpy as np

from ..kernels.profiles import class_date_moments, class_parcel_codes

__all__ = ["patch_summary", "combine_summaries", "summary_tree"]


def patch_summary(
    s2: np.ndarray, label: np.ndarray, parcel_id: np.ndarray, *, date_index: np.ndarray, split: int,
    n_splits: int, n_dates: int, n_classes: int, band_index: dict[str, int], features: tuple[str, ...],
) -> dict:
    """Dask task: the summary of one patch (blocks of one patch each: (1, T, B, y, x), (1, y, x))."""
    s2, label, parcel_id = s2[0], label[0], parcel_id[0]
    pixels = np.zeros((n_splits, n_classes), dtype=np.int64)
    lab = label.ravel()
    pixels[split] = np.bincount(lab[lab < n_classes], minlength=n_classes)
    return {
        "moments": class_date_moments(s2, label, date_index, n_dates, n_classes, band_index, features),
        "pixels": pixels,
        "parcels": {split: class_parcel_codes(label, parcel_id)},
    }


def combine_summaries(*parts: dict) -> dict:
    """Dask task: add up patch summaries (moments and pixels summed, parcel codes united per split)."""
    out = {"moments": parts[0]["moments"].copy(), "pixels": parts[0]["pixels"].copy(),
           "parcels": dict(parts[0]["parcels"])}
    for p in parts[1:]:
        out["moments"] += p["moments"]
        out["pixels"] += p["pixels"]
        for s, codes in p["parcels"].items():
            out["parcels"][s] = np.union1d(out["parcels"][s], codes) if s in out["parcels"] else codes
    return out


def summary_tree(s2_blocks: Sequence[Any], label_blocks: Sequence[Any], pid_blocks: Sequence[Any],
                 date_index: np.ndarray, split_ids: np.ndarray, *, n_splits: int, n_dates: int, n_classes: int,
                 band_index: dict[str, int], features: tuple[str, ...], name: str, split_every: int = 8) -> Any:
    """The delayed total summary of the patches whose (delayed) one-patch blocks are given.

    ``date_index`` (patch, time) places each patch's dates on the report's date axis (-1: left out).
    """
    level = [
        dask.delayed(patch_summary, pure=True)(
            s2_blocks[i], label_blocks[i], pid_blocks[i], date_index=date_index[i], split=int(split_ids[i]),
            n_splits=n_splits, n_dates=n_dates, n_classes=n_classes, band_index=band_index, features=features,
            dask_key_name=f"report-patch-{name}-{i}",
        )
        for i in range(len(s2_blocks))
    ]
    depth = 0
    while len(level) > 1:
        level = [
            dask.delayed(combine_summaries, pure=True)(*level[k : k + split_every],
                                                        dask_key_name=f"report-combine-{name}-{depth}-{k}")
            for k in range(0, len(level), split_every)
        ]
        depth += 1
    return level[0]
