"""Segmentation metrics from a confusion matrix (numpy only) and boundary/interior regions.

Conventions
-----------
* The confusion matrix is ``(n_classes, n_classes)`` int64, **rows = true class, columns =
  predicted class**. Pixels whose true label is ``ignore_index`` (14, "Not classified") are not
  counted at all: its row is always zero.
* A valid pixel predicted as ``ignore_index`` (possible when a model's argmax is taken over all
  classes) is counted in that column: an error for its true class (lower recall/IoU), never
  credited to anyone.
* Macro averages (``miou``, ``macro_f1``) run over the classes other than ``ignore_index`` that
  are **present in the ground truth (support > 0) or predicted at least once**. A class absent
  from both has no defined IoU/F1 (``None``) and is left out of the averages; a class never
  present but predicted has IoU = F1 = 0 and pulls the averages down (false alarms count).
* Undefined values (no pixel at all) are ``None`` so the result is valid JSON as is.

>>> cm = confusion_matrix(label, prediction, n_classes=15)              # doctest: +SKIP
>>> metrics_from_confusion(cm, CLASS_NAMES)["miou"]                      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["REGIONS", "confusion_matrix", "metrics_from_confusion", "region_mask"]

#: Pixel regions an evaluation can be restricted to.
REGIONS: tuple[str, ...] = ("all", "boundary", "interior")


def confusion_matrix(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int,
    ignore_index: int | None = 14,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Count (true, predicted) class pairs over pixels.

    Args:
        y_true: integer class ids, any shape.
        y_pred: integer class ids, same shape.
        n_classes: number of classes (ids ``0 .. n_classes - 1``).
        ignore_index: true label whose pixels are not counted (None: count everything).
        mask: optional bool array of the same shape; only True pixels are counted (a region).

    Returns:
        ``(n_classes, n_classes)`` int64, rows = true class, columns = predicted class.

    Raises:
        ValueError: shapes differ, or an id is outside ``0 .. n_classes - 1``.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must have the same shape")
    keep = np.ones(y_true.shape, bool) if mask is None else np.asarray(mask, bool)
    if keep.shape != y_true.shape:
        raise ValueError(f"mask {keep.shape} must have the shape of y_true {y_true.shape}")
    if ignore_index is not None:
        keep = keep & (y_true != ignore_index)
    t = y_true[keep].astype(np.int64, copy=False)
    p = y_pred[keep].astype(np.int64, copy=False)
    for name, v in (("y_true", t), ("y_pred", p)):
        if v.size and (v.min() < 0 or v.max() >= n_classes):
            raise ValueError(f"{name} holds class ids outside 0..{n_classes - 1} "
                             f"(min {v.min()}, max {v.max()})")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes).astype(np.int64)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def metrics_from_confusion(
    cm: np.ndarray,
    class_names: Sequence[str],
    ignore_index: int | None = 14,
) -> dict[str, Any]:
    """Overall accuracy, mean IoU, macro F1 and per-class scores of a confusion matrix.

    Args:
        cm: ``(n, n)`` counts, rows = true class, columns = predicted class (as returned by
            :func:`confusion_matrix`). A non-zero ``ignore_index`` row is disregarded.
        class_names: ``n`` names, in class id order.
        ignore_index: the class left out of every score (None: none).

    Returns:
        ``{"overall_accuracy", "miou", "macro_f1", "n_pixels", "classes_averaged",
        "per_class": {name: {"iou", "f1", "precision", "recall", "support", "predicted"}},
        "confusion_matrix": [[...], ...]}`` -- see the module docstring for the averaging rule.
        ``per_class`` lists every class but ``ignore_index``; ``confusion_matrix`` is the full
        matrix (ignore row zeroed) as lists of ints.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = cm.shape[0]
    if cm.ndim != 2 or cm.shape != (n, n):
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for a {n} x {n} confusion matrix")
    cm = cm.copy()
    classes = [c for c in range(n) if c != ignore_index]
    if ignore_index is not None and 0 <= ignore_index < n:
        cm[ignore_index, :] = 0
    tp = np.diag(cm)
    support = cm.sum(axis=1)      # true pixels per class
    predicted = cm.sum(axis=0)    # predicted pixels per class (on counted pixels)
    total = int(support.sum())

    per_class: dict[str, dict[str, Any]] = {}
    ious, f1s, averaged = [], [], []
    for c in classes:
        fp, fn = predicted[c] - tp[c], support[c] - tp[c]
        iou = _ratio(tp[c], tp[c] + fp + fn)
        f1 = _ratio(2 * tp[c], 2 * tp[c] + fp + fn)
        per_class[str(class_names[c])] = {
            "iou": iou,
            "f1": f1,
            "precision": _ratio(tp[c], predicted[c]),
            "recall": _ratio(tp[c], support[c]),
            "support": int(support[c]),
            "predicted": int(predicted[c]),
        }
        if support[c] > 0 or predicted[c] > 0:
            ious.append(iou)
            f1s.append(f1)
            averaged.append(str(class_names[c]))
    return {
        "overall_accuracy": _ratio(tp[classes].sum(), total),
        "miou": float(np.mean(ious)) if ious else None,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "n_pixels": total,
        "classes_averaged": averaged,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def region_mask(label, region: str = "all", ignore_index: int | None = 14) -> np.ndarray:
    """Pixels of ``label`` that belong to ``region``.

    Args:
        label: ``(y, x)`` or ``(batch, y, x)`` integer class ids (numpy array or torch tensor).
        region: ``"all"``; ``"boundary"``: pixels whose 3x3 cross holds more than one class
            (:func:`crop2seg_pipeline.models.boundary_target`, the Crop2Seg definition);
            ``"interior"``: the other pixels.
        ignore_index: ``ignore_index`` pixels are never boundary nor interior.

    Returns:
        bool numpy array shaped like ``label``.
    """
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}: choose one of {', '.join(REGIONS)}")
    import torch  # the boundary definition lives with the models (torch); imported on use

    from crop2seg_pipeline.models import boundary_target

    lab = label if isinstance(label, torch.Tensor) else torch.from_numpy(np.asarray(label))
    lab = lab.detach().cpu()
    valid = np.ones(tuple(lab.shape), bool) if ignore_index is None else (lab != ignore_index).numpy()
    if region == "all":
        return valid
    boundary = boundary_target(lab.to(torch.int64), ignore_index=ignore_index).numpy()
    return boundary if region == "boundary" else valid & ~boundary
