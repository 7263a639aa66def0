"""What a training run learns from and is validated on: datasets, class weights, input settings.

:func:`open_training_data` turns the training source and the validation choice into a
:class:`TrainingData`:

* the source is a Zarr patch store (its ``train`` split) or a PASTIS folder (its train folds,
  :mod:`crop2seg_pipeline.pastis`);
* validation is, by default, the source's own ``val`` split (PASTIS: the val folds), i.e. held-out
  spatial blocks of the training scenes; or **held out scenes**: the patches of ``val_tiles``
  of the source store (never trained on) and/or every patch of other stores (``val_datasets``,
  e.g. a store built from another tile or year). The best epoch is picked on that validation.

Every validation sample is fed exactly like a training sample (the training normalization,
reference date and date encoding), without augmentation.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import zarr

from .augment import TrainTransform
from .dataset import PatchDataset
from .errors import StoreError
from .loss import class_weights
from .nomenclature import CLASS_NAMES, N_CLASSES, NOT_CLASSIFIED
from . import storage
from .store import open_store

__all__ = ["TrainingData", "open_training_data"]

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """The datasets of a run and how their samples are made (recorded in ``model.json``).

    Attributes
    ----------
    source : the training store or PASTIS folder, as given
    kind : ``"store"`` or ``"pastis"``
    train : the training dataset (augmented by ``transform``)
    val : the validation dataset (several sources concatenated), or None
    validation : how validation was chosen (``{"kind": "split"|"held-out"|"folds"|None, ...}``)
    weight : class weights of the loss (from the training pixels' class counts)
    class_names, ignore_index : the classes the model outputs; the label never scored
    bands, patch_size : input bands, (height, width) of the training patches
    mean, std, reference_date, date_encoding : how samples are fed (``model.json``)
    date_range : [first, last] training date (ISO) or None
    fingerprint : the source's fingerprint (a store rebuilt with other inputs differs)
    preprocessing : the store build's pixel rules predict must repeat
    extra : more ``model.json["training"]`` entries of the source (PASTIS folds, class map...)
    val_patch_sizes : (height, width) of the patches of each held-out validation store
    """

    source: str
    kind: str
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset | None
    validation: dict[str, Any]
    transform: TrainTransform
    weight: torch.Tensor
    class_names: list[str]
    ignore_index: int | None
    bands: list[str]
    patch_size: tuple[int, int]
    mean: np.ndarray
    std: np.ndarray
    reference_date: dt.date
    date_encoding: str
    date_range: list[str] | None
    fingerprint: Any = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    val_patch_sizes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_val(self) -> int:
        return len(self.val) if self.val is not None else 0


def open_training_data(
    source: str | os.PathLike,
    transform: TrainTransform,
    *,
    date_encoding: str = "days",
    val_datasets: Sequence[str | os.PathLike] = (),
    val_tiles: Sequence[str] | None = None,
    class_map: str | None = None,
    train_folds: Sequence[int] | None = None,
    val_folds: Sequence[int] | None = None,
    say: Callable[[str], Any] = log.info,
    cache: str | os.PathLike | None = None,
) -> TrainingData:
    """Open the training source and the validation patches (nothing is read but metadata).

    Args:
        source: a complete patch store, or a PASTIS folder (detected by its layout).
        transform: augmentation of the training samples.
        date_encoding: ``"days"`` or ``"doy"`` (:mod:`crop2seg_pipeline.kernels.dates`).
        val_datasets: patch stores whose every patch is validation (held-out scenes).
        val_tiles: tiles of ``source`` (a store) whose patches are validation, never training.
        class_map, train_folds, val_folds: PASTIS only (:func:`crop2seg_pipeline.pastis.open_pastis_training`).
        say: progress messages.
        cache: with store URLs, a local folder keeping the chunks read (:class:`PatchDataset`).

    Raises:
        StoreError: not a complete store / PASTIS folder, no training patch, unknown tile,
            validation stores with other bands or classes, no labelled training pixel.
    """
    from .pastis import is_pastis_folder, open_pastis_training

    if is_pastis_folder(source):
        if val_tiles:
            raise StoreError(f"{source} is a PASTIS folder: hold folds out with --val-folds, not --val-tiles")
        data = open_pastis_training(source, transform, date_encoding=date_encoding, class_map=class_map,
                                    train_folds=train_folds, val_folds=val_folds, say=say)
    else:
        if class_map is not None or train_folds is not None or val_folds is not None:
            raise StoreError(f"--class-map, --train-folds and --val-folds apply to a PASTIS folder; {source} "
                             "is not one (its train/val/test splits are used)")
        data = _open_store_training(source, transform, date_encoding, val_tiles, bool(val_datasets), say, cache)
    if val_datasets:
        _add_held_out_stores(data, val_datasets, cache)
    if data.val is None:
        say(f"{source}: no validation patch: the last epoch is kept as the model")
    return data


def _open_store_training(store: str | os.PathLike, transform: TrainTransform, date_encoding: str,
                         val_tiles: Sequence[str] | None, other_val: bool,
                         say: Callable[[str], Any], cache: str | os.PathLike | None = None) -> TrainingData:
    ds = open_store(store)
    attrs = dict(ds.attrs)
    splits = np.array(ds["split"].values.tolist(), dtype=str)  # StringDType-safe
    train = PatchDataset(store, split="train", transform=transform, date_encoding=date_encoding,
                         exclude_tiles=list(val_tiles) if val_tiles else None, cache=cache)
    feed = {"mean": train.mean, "std": train.std, "reference_date": train.reference_date,
            "date_encoding": date_encoding, "cache": cache}
    val: torch.utils.data.Dataset | None = None
    validation: dict[str, Any] = {"kind": None}
    if val_tiles:
        val = PatchDataset(store, split=None, tiles=list(val_tiles), **feed)
        validation = {"kind": "held-out", "tiles": sorted(val_tiles), "stores": []}
    elif other_val:
        validation = {"kind": "held-out", "tiles": [], "stores": []}
    elif (splits == "val").any():
        val = PatchDataset(store, split="val", **feed)
        validation = {"kind": "split", "split": "val"}
    counts = (attrs.get("class_pixel_counts") or {}).get("train")
    if counts is None or val_tiles:
        if counts is None:
            say("store has no class_pixel_counts attribute: counting train label pixels")
        counts = _count_label_pixels(str(store), train.indices, N_CLASSES)
    if len(counts) != N_CLASSES:
        raise StoreError(f"{store}: class_pixel_counts['train'] has {len(counts)} entries, expected {N_CLASSES}")
    weight = class_weights(counts, NOT_CLASSIFIED)
    if not (weight > 0).any():
        raise StoreError(f"{store}: the train split has no labelled pixel (all classes absent or 'Not classified')")
    build = attrs.get("build_parameters", {})
    preprocessing = {"min_date_clear": build.get("min_date_clear", 0.0), "unclear_scl": build.get("unclear_scl"),
                     "resampling_20m": build.get("resampling_20m", "nearest")}
    dates = train.dates[train.indices]
    dates = dates[~np.isnat(dates)]
    return TrainingData(
        source=str(store), kind="store", train=train, val=val, validation=validation, transform=transform,
        weight=weight, class_names=list(attrs.get("class_names") or CLASS_NAMES), ignore_index=NOT_CLASSIFIED,
        bands=[str(b) for b in ds["band"].values], patch_size=(int(ds.sizes["y"]), int(ds.sizes["x"])),
        mean=train.mean, std=train.std, reference_date=train.reference_date, date_encoding=date_encoding,
        date_range=[str(dates.min())[:10], str(dates.max())[:10]] if dates.size else None,
        fingerprint=attrs.get("fingerprint"),
        preprocessing={k: v for k, v in preprocessing.items() if v is not None},
    )


def _add_held_out_stores(data: TrainingData, stores: Sequence[str | os.PathLike],
                         cache: str | os.PathLike | None = None) -> None:
    """Append every patch of ``stores`` to the validation set, fed like the training data."""
    pieces = [data.val] if data.val is not None and data.validation.get("kind") == "held-out" else []
    for store in stores:
        if storage.absolute(store) == storage.absolute(data.source):
            raise StoreError(f"--val-dataset {store} is the training store itself; use --val-tiles to hold "
                             "tiles of it out, or build a store from another scene")
        ds = open_store(store)
        bands = [str(b) for b in ds["band"].values]
        if bands != data.bands:
            raise StoreError(f"--val-dataset {store} has bands {bands}, the training data {data.bands}")
        names = list(ds.attrs.get("class_names") or CLASS_NAMES)
        if names != data.class_names:
            raise StoreError(f"--val-dataset {store} has classes {names}, the model {data.class_names}; "
                             "validate on data with the same nomenclature")
        pieces.append(PatchDataset(store, split=None, mean=data.mean, std=data.std,
                                   reference_date=data.reference_date, date_encoding=data.date_encoding,
                                   cache=cache))
        data.validation.setdefault("stores", []).append(str(store))
        data.val_patch_sizes.append((int(ds.sizes["y"]), int(ds.sizes["x"])))
    data.validation["kind"] = "held-out"
    data.val = pieces[0] if len(pieces) == 1 else torch.utils.data.ConcatDataset(pieces)


def _count_label_pixels(store: str, indices: np.ndarray, n_classes: int) -> list[int]:
    arr = zarr.open_group(storage.zarr_store(store, read_only=True), mode="r", zarr_format=3)["label"]
    counts = np.zeros(n_classes, np.int64)
    for i in indices:
        counts += np.bincount(np.asarray(arr[int(i)]).ravel(), minlength=n_classes)[:n_classes]
    return counts.tolist()
