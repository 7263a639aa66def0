"""Weights folders: save, load and fine-tune from reference checkpoints.

A weights folder holds two files:

``weights.pt``
    a plain ``state_dict`` (parameter name -> tensor), written with ``torch.save`` and only ever
    read back with ``torch.load(..., weights_only=True)``: loading never unpickles code.
``model.json``
    ``{"architecture": "utae", "format_version": 1, "config": {...constructor kwargs...}, **meta}``
    where ``architecture`` is one of :data:`~.registry.ARCHITECTURES` (``utae``, ``timeunet``,
    ``wtae``, ``unet3d``) and ``meta`` typically holds ``bands``, ``normalization``
    (``mean``/``std`` per band), ``class_names``, ``reference_date`` (ISO) and a training summary.

Both files are written atomically (temporary file + ``os.replace``), ``model.json`` last, so a
folder with a ``model.json`` is complete.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from crop2seg_pipeline.errors import Crop2SegError
from crop2seg_pipeline.storage import write_local_atomic

from .base import SegmentationModel
from .registry import ARCHITECTURES

__all__ = [
    "CheckpointError",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "save_weights",
    "load_model",
    "load_reference_state_dict",
]

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "model.json"
FORMAT_VERSION = 1
_RESERVED = ("architecture", "config", "format_version")
_EXPECTED = (f"expected a folder holding {WEIGHTS_FILE} (a plain state_dict) and {CONFIG_FILE} "
             "(architecture config, bands, normalization, class names), as written by "
             "save_weights / training")


class CheckpointError(Crop2SegError):
    """A weights folder or checkpoint file is missing, corrupt, unsafe or does not fit."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, (_dt.date, _dt.datetime)):
        return obj.isoformat()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _torch_load(path: Path, device: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors turned into :class:`CheckpointError`."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; {_EXPECTED}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a legacy pickle
        raise CheckpointError(
            f"{path} is not a PyTorch weights file (neither torch.save's zip format nor a pickle: it "
            f"starts with {head!r}); {_EXPECTED}"
        )
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc).lower()
        if "weights only load failed" in text and ("allowed global" in text or "unsupported global" in text):
            raise CheckpointError(
                f"{path} is not a plain state_dict (nor a training checkpoint of tensors, "
                "numbers and strings): it contains pickled Python objects, which are not "
                "unpickled for safety (arbitrary code could run). Re-export it as "
                "torch.save(model.state_dict(), path) from a trusted environment."
            ) from None
        raise CheckpointError(f"{path} is corrupt or not a PyTorch weights file: {exc}") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; {_EXPECTED}") from None
    except Exception as exc:  # zip/EOF/decode errors of torch's readers
        raise CheckpointError(
            f"{path} is corrupt or not a PyTorch weights file "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})"
        ) from None


def _as_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Accept a plain state_dict, or a training checkpoint ``{"state_dict": ...}`` (utae-paps'
    and Crop2Seg's ``model.pth.tar``: ``{"epoch", "state_dict", "optimizer"}``); strip a
    ``module.`` (DataParallel) prefix."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"{source} does not hold a state_dict (a mapping of parameter "
                              f"names to tensors), found {type(obj).__name__}")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _fmt(items: Sequence[str], limit: int = 8) -> str:
    items = list(items)
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# --------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------

def save_weights(model: nn.Module, weights_dir: str | os.PathLike,
                 meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``weights_dir/weights.pt`` and ``weights_dir/model.json`` atomically.

    Args:
        model: any model of :data:`~.registry.ARCHITECTURES` (its ``architecture`` and JSON
            ``config`` are recorded, so :func:`load_model` rebuilds it).
        weights_dir: target folder, created if needed; existing files are replaced.
        meta: extra JSON content (bands, normalization, class_names, reference_date, training
            summary...). numpy arrays, tensors, dates and paths are converted. It may not use
            the reserved keys ``architecture``, ``config``, ``format_version``.

    Returns:
        the folder path.
    """
    meta = dict(meta or {})
    clash = [k for k in _RESERVED if k in meta]
    if clash:
        raise CheckpointError(f"meta may not set the reserved key(s) {clash}")
    config = getattr(model, "config", None)
    architecture = getattr(model, "architecture", None)
    if not isinstance(config, Mapping) or ARCHITECTURES.get(architecture) is not type(model):
        raise CheckpointError(f"{type(model).__name__} is not one of the package's models "
                              f"({', '.join(c.__name__ for c in ARCHITECTURES.values())}); "
                              "save_weights records an architecture load_model can rebuild")
    doc = {"architecture": architecture, "config": dict(config),
           "format_version": FORMAT_VERSION, **meta}
    try:
        text = json.dumps(doc, indent=2, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"meta cannot be written as JSON: {exc}") from None
    folder = Path(weights_dir)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    write_local_atomic(folder / WEIGHTS_FILE, lambda fh: torch.save(state, fh), fsync=True)
    write_local_atomic(folder / CONFIG_FILE, lambda fh: fh.write((text + "\n").encode("utf-8")), fsync=True)
    return folder


def _read_model_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(doc).__name__}")
    arch = doc.get("architecture")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: architecture {arch!r} is not supported (known: "
                              f"{', '.join(sorted(ARCHITECTURES))})")
    version = doc.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version} was written by a newer "
                              f"crop2seg-pipeline (this one reads up to {FORMAT_VERSION}); upgrade")
    if not isinstance(doc.get("config"), dict):
        raise CheckpointError(f"{path}: 'config' (the {ARCHITECTURES[arch].display_name} "
                              "constructor arguments) is missing or not an object")
    return doc


def _check_expected(what: str, have: int, names: Sequence[str] | None, expect: Any,
                    folder: Path) -> None:
    if expect is None:
        return
    if isinstance(expect, int) and not isinstance(expect, bool):
        n_expect, expect_names = expect, None
    elif isinstance(expect, Sequence) and not isinstance(expect, str):
        n_expect, expect_names = len(expect), [str(e) for e in expect]
    else:
        raise TypeError(f"expect_{what} must be an int or a sequence of names, got {expect!r}")
    if n_expect != have:
        raise CheckpointError(f"the model in {folder} has {have} {what}, but {n_expect} "
                              f"{what} were expected; use weights trained for {n_expect} {what}")
    if expect_names is not None and names is not None and list(names) != expect_names:
        raise CheckpointError(f"the model in {folder} was trained with {what} {list(names)}, "
                              f"expected {expect_names} (same count, different names/order)")


def load_model(weights_dir: str | os.PathLike, device: str | torch.device = "cpu",
               expect_bands: int | Sequence[str] | None = None,
               expect_classes: int | Sequence[str] | None = None) -> SegmentationModel:
    """Load a weights folder written by :func:`save_weights`, whatever its architecture.

    Args:
        weights_dir: folder holding ``weights.pt`` and ``model.json``.
        device: where to put the model.
        expect_bands: number of input bands (or the band names, order checked against
            ``meta["bands"]``) the caller will feed.
        expect_classes: number of classes (or class names) the caller expects.

    Returns:
        the model (U-TAE, Time-Unet, W-TAE or UNet3D, as ``model.json`` says) in eval mode on
        ``device``; ``model.meta`` holds the full ``model.json`` content.

    Raises:
        CheckpointError: missing folder/file, invalid ``model.json``, corrupt or unsafe weights,
            weights not fitting the config, band/class count different from ``expect_*``.
    """
    folder = Path(weights_dir)
    if not folder.is_dir():
        raise CheckpointError(f"weights folder {folder} does not exist or is not a folder; "
                              f"{_EXPECTED}")
    missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"weights folder {folder} lacks {', '.join(missing)}; {_EXPECTED}")
    meta = _read_model_json(folder / CONFIG_FILE)
    cls = ARCHITECTURES[meta["architecture"]]
    try:
        model = cls(**meta["config"])
    except (TypeError, ValueError) as exc:  # ModelConfigError is a ValueError
        raise CheckpointError(f"{folder / CONFIG_FILE}: 'config' does not describe a valid "
                              f"{cls.display_name}: {exc}") from None
    bands = meta.get("bands")
    if bands is not None and (not isinstance(bands, list) or len(bands) != model.input_dim):
        raise CheckpointError(f"{folder / CONFIG_FILE}: 'bands' {bands!r} does not match the "
                              f"model's {model.input_dim} input bands")
    class_names = meta.get("class_names")
    if class_names is not None and (not isinstance(class_names, list)
                                    or len(class_names) != model.n_classes):
        raise CheckpointError(f"{folder / CONFIG_FILE}: 'class_names' has "
                              f"{len(class_names) if isinstance(class_names, list) else '?'} "
                              f"entries but the model outputs {model.n_classes} classes")
    model_ref = meta["config"].get("reference_date")
    if model_ref is not None and meta.get("reference_date") is not None \
            and str(model_ref)[:10] != str(meta["reference_date"])[:10]:
        raise CheckpointError(f"{folder / CONFIG_FILE}: the model derives days of year from "
                              f"reference_date {model_ref!r} (config) but is fed days since "
                              f"{meta['reference_date']!r}; make both the same date")
    _check_expected("bands", model.input_dim, bands, expect_bands, folder)
    _check_expected("classes", model.n_classes, class_names, expect_classes, folder)

    state = _as_state_dict(_torch_load(folder / WEIGHTS_FILE, device), str(folder / WEIGHTS_FILE))
    expected = model.state_dict()
    absent = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if absent or extra or wrong:
        parts = []
        if absent:
            parts.append(f"missing keys: {_fmt(absent)}")
        if extra:
            parts.append(f"unexpected keys: {_fmt(extra)}")
        if wrong:
            parts.append(f"shape mismatches (weights vs config): {_fmt(wrong)}")
        raise CheckpointError(f"{folder / WEIGHTS_FILE} does not fit the architecture in "
                              f"{CONFIG_FILE}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    model.meta = meta
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# fine-tuning
# --------------------------------------------------------------------------------------------

def _head_prefixes(model: SegmentationModel) -> list[str]:
    """State-dict prefixes of the final classification layer (see ``head_prefixes``)."""
    return model.head_prefixes()


def load_reference_state_dict(model: SegmentationModel,
                              state_dict: Mapping[str, torch.Tensor] | str | os.PathLike,
                              strict_head: bool = False) -> list[str]:
    """Initialise ``model`` from a checkpoint of the same architecture, for fine-tuning.

    Every parameter/buffer whose name and shape match is copied. When the final classification
    layer (``model.head_prefixes()``: U-TAE/Time-Unet/W-TAE's last ``out_conv`` conv and its
    BatchNorm, UNet3D's ``final`` conv) does not fit -- a different number of classes, e.g.
    PASTIS's 20 -- that whole layer is re-initialised instead.

    Args:
        model: the target model (e.g. 15 classes).
        state_dict: a state_dict, a training checkpoint ``{"epoch", "state_dict", "optimizer"}``
            (utae-paps'/Crop2Seg's ``model.pth.tar``), or a path to either. Files are read with
            ``torch.load(..., weights_only=True)``: a file holding pickled objects other than
            tensors, numbers, strings and containers is refused (:class:`CheckpointError`).
        strict_head: raise :class:`CheckpointError` when the head does not fit instead of
            re-initialising it.

    Returns:
        the model keys that were *not* loaded from the checkpoint, in state_dict order.

    Raises:
        CheckpointError: unreadable or unsafe file, no state_dict in it, a checkpoint sharing no
            entry with the model (another architecture), a head not fitting with
            ``strict_head``.
    """
    if isinstance(state_dict, (str, os.PathLike)):
        source = str(state_dict)
        state_dict = _torch_load(Path(state_dict), "cpu")
    else:
        source = "the given state_dict"
    state = _as_state_dict(state_dict, source)
    own = model.state_dict()
    heads = model.head_prefixes()
    head_keys = [k for k in own if any(k.startswith(p) for p in heads)]
    head_fits = all(k in state and state[k].shape == own[k].shape for k in head_keys)
    if not head_fits and strict_head:
        src_w = state.get(head_keys[0])
        raise CheckpointError(
            f"the classification head of {source} does not fit the model: checkpoint "
            f"{tuple(src_w.shape) if src_w is not None else 'absent'} vs model "
            f"{tuple(own[head_keys[0]].shape)} ({model.n_classes} classes)")
    loadable = {k: v for k, v in state.items()
                if k in own and v.shape == own[k].shape and (head_fits or k not in head_keys)}
    if not loadable:
        raise CheckpointError(
            f"{source} shares no parameter (name and shape) with the {model.display_name} to "
            f"initialise (it holds e.g. {_fmt(list(state)[:3])}); is it a checkpoint of another "
            "architecture?")
    model.load_state_dict(loadable, strict=False)
    if not head_fits:
        model.reset_head()
    not_loaded = [k for k in own if k not in loadable]
    others = [k for k in not_loaded if k not in head_keys]
    if others:
        log.warning("load_reference_state_dict: %d non-head entries kept their initial values "
                    "(absent or different shape in %s): %s", len(others), source, _fmt(others))
    return not_loaded
