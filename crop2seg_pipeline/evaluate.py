"""Evaluate a weights folder on a split of a Zarr patch store: metrics.json + confusion matrix PNG.

Preprocessing has a single code path: the :class:`~crop2seg_pipeline.dataset.PatchDataset` is
built with the *checkpoint's* normalization (``model.json["normalization"]``), reference date
(``model.json["reference_date"]``) and date encoding (``model.json["date_encoding"]``, ``days``
when absent), never the store's, so a model is always fed the way it was trained, whatever store
it is evaluated on.

Predictions are the argmax over every class except ``Not classified`` (14): that id means "label
unknown" and is never a valid answer (it has weight 0 in the training loss).

>>> from crop2seg_pipeline.evaluate import evaluate
>>> m = evaluate("patches.zarr", "weights/", split="test", region="boundary", out_dir="eval/")  # doctest: +SKIP
>>> m["miou"], m["per_class"]["Maize"]["iou"]                                                  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dataset import PatchDataset, collate_patches
from .device import resolve_device
from .errors import Crop2SegError, StoreError
from .kernels.dates import DATE_ENCODINGS, DEFAULT_DATE_ENCODING
from .kernels.metrics import REGIONS, confusion_matrix, metrics_from_confusion, region_mask
from .loss import weighted_cross_entropy
from .malloc import tune_malloc
from .models import CheckpointError, load_model
from .nomenclature import CLASS_NAMES, N_CLASSES, NOT_CLASSIFIED
from . import storage
from .store import open_store

__all__ = ["evaluate", "confusion_over", "predict_classes", "plot_confusion_matrix",
           "METRICS_FILE", "PLOT_FILE"]

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PLOT_FILE = "confusion_matrix.png"


def predict_classes(logits: torch.Tensor, ignore_index: int | None = NOT_CLASSIFIED) -> torch.Tensor:
    """``(batch, class, y, x)`` logits -> ``(batch, y, x)`` int64 class ids, never ``ignore_index``."""
    if ignore_index is not None and 0 <= ignore_index < logits.shape[1]:
        logits = logits.clone()
        logits[:, ignore_index] = float("-inf")
    return logits.argmax(dim=1)


def confusion_over(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    n_classes: int = N_CLASSES,
    ignore_index: int = NOT_CLASSIFIED,
    region: str = "all",
    loss_weight: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Run ``model`` (eval mode, no grad) over ``loader`` and count the confusion matrix.

    Returns ``{"confusion": (n, n) int64, "loss": weighted CE or None, "n_patches",
    "ignored_pixels", "seconds"}``. ``loss`` is computed on all valid pixels (not only
    ``region``) when ``loss_weight`` is given.
    """
    was_training = model.training
    model.eval()
    cm = np.zeros((n_classes, n_classes), np.int64)
    loss_sum, weight_sum, n_patches, ignored = 0.0, 0.0, 0, 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            x = batch["s2"].to(device, non_blocking=True)
            pos = batch["positions"].to(device, non_blocking=True)
            label = batch["label"]
            logits = model(x, pos)
            if loss_weight is not None:
                s, w = weighted_cross_entropy(logits, label.to(device), loss_weight, ignore_index)
                loss_sum, weight_sum = loss_sum + float(s), weight_sum + float(w)
            pred = predict_classes(logits, ignore_index).cpu().numpy()
            lab = label.numpy()
            cm += confusion_matrix(lab, pred, n_classes, ignore_index,
                                   mask=None if region == "all" else region_mask(lab, region, ignore_index))
            ignored += int((lab == ignore_index).sum())
            n_patches += lab.shape[0]
    model.train(was_training)
    return {
        "confusion": cm,
        "loss": loss_sum / weight_sum if weight_sum > 0 else None,
        "n_patches": n_patches,
        "ignored_pixels": ignored,
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- plot


def _compact(n: int) -> str:
    if n >= 10_000_000:
        return f"{n / 1e6:.0f}M"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                          title: str = "", ignore_index: int | None = NOT_CLASSIFIED) -> Path:
    """Row-normalized confusion matrix as a PNG: colour = share of the true class, text = count.

    Classes absent from both the truth and the predictions, and ``ignore_index``, are left out.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, np.int64)
    keep = [c for c in range(cm.shape[0])
            if c != ignore_index and (cm[c].sum() > 0 or cm[:, c].sum() > 0)]
    if not keep:
        keep = [c for c in range(cm.shape[0]) if c != ignore_index]
    sub = cm[np.ix_(keep, keep)]
    rows = sub.sum(axis=1, keepdims=True)
    share = np.divide(sub, rows, out=np.zeros(sub.shape, float), where=rows > 0)
    k = len(keep)
    size = max(5.0, 0.62 * k + 3.2)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    try:
        im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(k), [class_names[c] for c in keep], rotation=45, ha="right")
        ax.set_yticks(range(k), [f"{class_names[c]} ({_compact(int(cm[c].sum()))})" for c in keep])
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class (support, pixels)")
        fontsize = 9 if k <= 10 else 7
        for i in range(k):
            for j in range(k):
                if sub[i, j] == 0:
                    continue
                colour = "white" if share[i, j] > 0.55 else "black"
                ax.text(j, i, f"{100 * share[i, j]:.0f}%\n{_compact(int(sub[i, j]))}", ha="center",
                        va="center", color=colour, fontsize=fontsize,
                        fontweight="bold" if i == j else "normal")
        ax.set_xticks(np.arange(-0.5, k), minor=True)
        ax.set_yticks(np.arange(-0.5, k), minor=True)
        ax.grid(which="minor", color="0.85", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cbar.set_label("share of the true class (row-normalized)")
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _write_json(path: Path, doc: Any) -> None:
    storage.write_local_atomic(path, lambda fh: fh.write((json.dumps(doc, indent=2) + "\n").encode("utf-8")))


# ----------------------------------------------------------------------------- evaluate


def evaluate(
    dataset_store: str | os.PathLike,
    weights_dir: str | os.PathLike,
    split: str = "test",
    region: str = "all",
    out_dir: str | os.PathLike | None = None,
    *,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    progress: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Score the model of ``weights_dir`` on the ``split`` patches of ``dataset_store``.

    Args:
        dataset_store: a complete Zarr patch store (a path or an object-store URL).
        weights_dir: a weights folder (``weights.pt`` + ``model.json``) for the store's bands
            and the 15 classes (a path, or a URL: downloaded once, :func:`crop2seg_pipeline.storage.cached_copy`).
        split: ``train``, ``val`` or ``test``.
        region: ``all`` pixels, ``boundary`` pixels (3x3 cross holds another class) or
            ``interior`` pixels; ``Not classified`` pixels are never counted.
        out_dir: where to write ``metrics.json`` and ``confusion_matrix.png`` (None: nothing is
            written).
        batch_size, device, num_workers: inference settings (``device="auto"``: CUDA if any).
        progress: callable receiving progress messages (default: logging).

    Returns:
        the content of ``metrics.json``: ``overall_accuracy``, ``miou``, ``macro_f1``,
        ``per_class`` {name: {iou, f1, precision, recall, support, predicted}},
        ``confusion_matrix`` (rows true, columns predicted), and the run's context (split,
        region, store, weights, patch and pixel counts).

    Raises:
        StoreError: not a complete patch store, or no patch in ``split``.
        CheckpointError: unusable weights folder, or trained for other bands/classes, or
            lacking the normalization/reference date needed to feed it.
    """
    say = progress or log.info
    if region not in REGIONS:
        raise Crop2SegError(f"unknown region {region!r}: choose one of {', '.join(REGIONS)}")
    if batch_size < 1:
        raise Crop2SegError(f"batch size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    ds = open_store(dataset_store)
    if storage.is_url(weights_dir):  # downloaded once into the local cache
        weights_dir = storage.cached_copy(str(weights_dir))
    bands = [str(b) for b in ds["band"].values]
    tune_malloc()  # batch tensors from the heap, not fresh mmaps (see .malloc)
    model = load_model(weights_dir, device=dev, expect_bands=bands, expect_classes=N_CLASSES)
    meta = model.meta
    norm = meta.get("normalization") or {}
    mean, std, ref = norm.get("mean"), norm.get("std"), meta.get("reference_date")
    if mean is None or std is None or ref is None:
        raise CheckpointError(
            f"{Path(weights_dir) / 'model.json'} lacks "
            f"{', '.join(k for k, v in (('normalization.mean', mean), ('normalization.std', std), ('reference_date', ref)) if v is None)}"
            ": the model cannot be fed the way it was trained; use a weights folder written by crop2seg-train")
    try:
        dt.date.fromisoformat(str(ref))
    except ValueError:
        raise CheckpointError(f"{Path(weights_dir) / 'model.json'}: reference_date {ref!r} is not an "
                              "ISO date (YYYY-MM-DD)") from None
    patch = int(ds.sizes["y"])
    if patch % model.downscale or int(ds.sizes["x"]) % model.downscale:
        raise StoreError(f"patches of {dataset_store} are {ds.sizes['y']} x {ds.sizes['x']} px; this "
                         f"model needs multiples of {model.downscale}")
    encoding = meta.get("date_encoding", DEFAULT_DATE_ENCODING)
    if encoding not in DATE_ENCODINGS:
        raise CheckpointError(f"{Path(weights_dir) / 'model.json'}: date_encoding {encoding!r} is not one of "
                              f"{', '.join(DATE_ENCODINGS)}; use a weights folder written by crop2seg-train")
    data = PatchDataset(dataset_store, split=split, mean=mean, std=std, reference_date=str(ref),
                        date_encoding=encoding)
    class_names = list(meta.get("class_names") or CLASS_NAMES)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, collate_fn=collate_patches,
                                         pin_memory=dev.type == "cuda")
    say(f"evaluating {weights_dir} on {len(data)} {split} patches of {dataset_store} "
        f"(region {region}, device {dev})")
    res = confusion_over(model, loader, dev, N_CLASSES, NOT_CLASSIFIED, region)
    metrics = metrics_from_confusion(res["confusion"], class_names, NOT_CLASSIFIED)
    doc = {
        "overall_accuracy": metrics["overall_accuracy"],
        "miou": metrics["miou"],
        "macro_f1": metrics["macro_f1"],
        "per_class": metrics["per_class"],
        "confusion_matrix": metrics["confusion_matrix"],
        "confusion_matrix_axes": "rows: true class id, columns: predicted class id",
        "class_names": class_names,
        "classes_averaged": metrics["classes_averaged"],
        "averaging": ("macro over classes other than 'Not classified' with support > 0 or "
                      "predicted at least once"),
        "ignore_index": NOT_CLASSIFIED,
        "split": split,
        "region": region,
        "store": str(dataset_store),
        "weights": str(weights_dir),
        "n_patches": res["n_patches"],
        "n_pixels": metrics["n_pixels"],
        "ignored_pixels": res["ignored_pixels"],
        "seconds": round(res["seconds"], 3),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / METRICS_FILE, doc)
        fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        plot_confusion_matrix(
            res["confusion"], class_names, out / PLOT_FILE,
            title=(f"{Path(weights_dir).name} on {split} ({region} pixels): OA {fmt(doc['overall_accuracy'])}, "
                   f"mIoU {fmt(doc['miou'])}, {doc['n_pixels']:,} px"),
        )
        say(f"wrote {out / METRICS_FILE} and {out / PLOT_FILE}")
    return doc
