"""The training loss: class-weighted cross-entropy that ignores ``Not classified`` pixels.

Training (:mod:`crop2seg_pipeline.train`) optimises it; evaluation reports it on validation
patches (:func:`crop2seg_pipeline.evaluate.confusion_over` with ``loss_weight=``).

>>> w = class_weights(store_attrs["class_pixel_counts"]["train"])          # doctest: +SKIP
>>> s, n = weighted_cross_entropy(logits, labels, w)                         # doctest: +SKIP
>>> (s / n).backward()                                                       # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .nomenclature import NOT_CLASSIFIED

__all__ = ["class_weights", "weighted_cross_entropy"]


def class_weights(counts: Sequence[int], ignore_index: int | None = NOT_CLASSIFIED) -> torch.Tensor:
    """Inverse square root class frequencies, normalized to a mean of 1 per labelled pixel.

    ``w_c = 1 / sqrt(n_c)`` for classes with pixels, 0 for absent classes and ``ignore_index``;
    then scaled so that ``sum(w_c n_c) / sum(n_c) = 1`` (the loss keeps the scale of an
    unweighted cross-entropy).
    """
    n = np.asarray(counts, dtype=np.float64)
    if ignore_index is not None and 0 <= ignore_index < len(n):
        n[ignore_index] = 0
    w = np.where(n > 0, 1.0 / np.sqrt(np.maximum(n, 1)), 0.0)
    if n.sum() > 0:
        w /= (w * n).sum() / n.sum()
    return torch.tensor(w, dtype=torch.float32)


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                           ignore_index: int = NOT_CLASSIFIED) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of class-weighted pixel losses and sum of their weights.

    ``sum / weights`` equals ``nn.CrossEntropyLoss(weight, ignore_index)`` (mean reduction);
    returning both lets callers skip batches with no weighted pixel (0/0) and average exactly
    over an epoch.
    """
    s = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="sum")
    valid = target != ignore_index
    return s, weight[target[valid]].sum()
