"""What inference needs from a weights folder: :class:`ModelSpec`, read and checked once.

:func:`read_model_spec` loads the folder once on the client (so a broken folder fails before any
work starts) and keeps only small facts (bands, normalization, reference date, window size,
classes, the SCL date rule); the spec ships in the graph, the model never does: workers load
it themselves (:mod:`crop2seg_pipeline.graph.model_cache`).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from ..kernels.dates import DEFAULT_DATE_ENCODING, check_date_encoding, position_range
from ..nomenclature import BANDS, CLASS_NAMES, DEFAULT_UNCLEAR_SCL, NOT_CLASSIFIED

__all__ = ["ModelSpec", "read_model_spec"]


@dataclass(frozen=True)
class ModelSpec:
    """What inference needs from a weights folder's ``model.json`` (small; safe to ship in graphs).

    Attributes
    ----------
    weights_dir : absolute path of the weights folder (workers load the model from it)
    fingerprint : (size, mtime_ns) of ``weights.pt`` and ``model.json``; part of the cache key
    bands : input bands, in the model's order (``model.json["bands"]``)
    mean, std : per-band normalization (``model.json["normalization"]``)
    reference_date : ISO date; positions are days since it (``model.json["reference_date"]``)
    date_encoding : how dates become positions (``model.json["date_encoding"]``, default ``days``;
        :func:`crop2seg_pipeline.kernels.dates.date_positions`)
    patch_size : window side the model was trained on (``model.json["patch_size"]``, default 128)
    class_names : output classes (``model.json["class_names"]``)
    ignore_index : class never predicted (``model.json["ignore_index"]``, default 14)
    downscale : the model's spatial size divisor
    date_range : (first, last) ISO training dates (``model.json["training"]["date_range"]``) or None
    min_date_clear : dates whose clear-sky share over the area is at most this are dropped
        (``model.json["preprocessing"]["min_date_clear"]``, default 0.0 as the store build)
    unclear_scl : SCL classes that are not clear sky (``model.json["preprocessing"]["unclear_scl"]``)
    resampling_20m : how 20 m bands reached 10 m in training (``model.json["preprocessing"]["resampling_20m"]``)
    """

    weights_dir: str
    fingerprint: tuple
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    reference_date: str
    patch_size: int
    class_names: tuple[str, ...]
    ignore_index: int | None
    downscale: int
    date_range: tuple[str, str] | None = None
    min_date_clear: float | None = 0.0
    unclear_scl: tuple[int, ...] = DEFAULT_UNCLEAR_SCL
    resampling_20m: str = "nearest"
    date_encoding: str = DEFAULT_DATE_ENCODING

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def position_range(self) -> tuple[float, float] | None:
        if self.date_range is None:
            return None
        return position_range(self.date_range[0], self.date_range[1], self.reference_date, self.date_encoding)


def _fingerprint(folder: Path) -> tuple:
    out = []
    for name in ("weights.pt", "model.json"):
        st = (folder / name).stat()
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


#: Specs read in this process, by folder, file fingerprint (size, mtime) and inodes: a second prediction
#: with unchanged weights (the web app, a notebook) does not load the model again to check them.
_SPECS: dict[tuple[str, tuple, tuple], ModelSpec] = {}
_SPECS_MAX = 16


def read_model_spec(weights_dir: str | os.PathLike) -> ModelSpec:
    """Read and validate a weights folder for inference (loads the model once, on CPU).

    A folder already read in this process whose ``weights.pt`` and ``model.json`` are the same
    files (inode) with the same size and modification time is not loaded again.

    Raises
    ------
    CheckpointError
        Missing/corrupt folder or files, keys inference needs absent from ``model.json``, bands
        that are not Sentinel-2 bands of this pipeline, classes other than the nomenclature's,
        a patch size the model cannot take.
    """
    folder = Path(weights_dir).expanduser().resolve()
    try:  # the fingerprint, and the files' inodes (an atomic rewrite is a new file)
        key = (str(folder), _fingerprint(folder),
               tuple((folder / n).stat().st_ino for n in ("weights.pt", "model.json")))
    except OSError:  # missing files: the full read names what is wrong
        key = None
    if key is not None and key in _SPECS:
        return _SPECS[key]
    spec = _read_model_spec(folder)
    if key is not None and spec.fingerprint == key[1]:
        if len(_SPECS) >= _SPECS_MAX:
            _SPECS.pop(next(iter(_SPECS)))
        _SPECS[key] = spec
    return spec


def _read_model_spec(folder: Path) -> ModelSpec:
    from . import CheckpointError, load_model

    model = load_model(folder, "cpu", expect_classes=list(CLASS_NAMES))
    meta = model.meta
    model_json = folder / "model.json"
    norm = meta.get("normalization") or {}
    missing = [k for k, v in (("bands", meta.get("bands")), ("normalization.mean", norm.get("mean")),
                              ("normalization.std", norm.get("std")),
                              ("reference_date", meta.get("reference_date"))) if v is None]
    if missing:
        raise CheckpointError(
            f"{model_json} lacks {', '.join(missing)}: inference must feed the model exactly as it "
            "was trained; re-save the weights with crop2seg-train (or add these keys)"
        )
    bands = [str(b) for b in meta["bands"]]
    unknown = [b for b in bands if b not in BANDS]
    if unknown:
        raise CheckpointError(
            f"{model_json}: the model was trained on band(s) {unknown}, which this pipeline does "
            f"not read (it reads {list(BANDS)}); use weights trained on Sentinel-2 bands"
        )
    mean = [float(v) for v in norm["mean"]]
    std = [float(v) for v in norm["std"]]
    if len(mean) != len(bands) or len(std) != len(bands):
        raise CheckpointError(
            f"{model_json}: normalization has {len(mean)} means / {len(std)} stds for {len(bands)} bands"
        )
    try:
        ref = dt.date.fromisoformat(str(meta["reference_date"])[:10]).isoformat()
    except ValueError:
        raise CheckpointError(f"{model_json}: reference_date {meta['reference_date']!r} is not an ISO date") from None
    downscale = int(model.downscale)
    patch = int(meta.get("patch_size", 128))
    if patch < downscale or patch % downscale:
        raise CheckpointError(f"{model_json}: patch_size {patch} is not a multiple of the model's {downscale}")
    training = meta.get("training") or {}
    rng = training.get("date_range", meta.get("date_range"))
    date_range = None
    if rng is not None:
        try:
            date_range = tuple(dt.date.fromisoformat(str(d)[:10]).isoformat() for d in rng)
        except (TypeError, ValueError):
            raise CheckpointError(f"{model_json}: training.date_range {rng!r} is not [first, last] ISO dates") from None
        if len(date_range) != 2:
            raise CheckpointError(f"{model_json}: training.date_range must be [first, last], got {rng!r}")
    pre = meta.get("preprocessing") or {}
    try:
        encoding = check_date_encoding(str(meta.get("date_encoding") or DEFAULT_DATE_ENCODING))
    except ValueError as e:
        raise CheckpointError(f"{model_json}: {e}") from None
    ignore = meta.get("ignore_index", NOT_CLASSIFIED)
    return ModelSpec(
        weights_dir=str(folder),
        fingerprint=_fingerprint(folder),
        bands=tuple(bands),
        mean=tuple(mean),
        std=tuple(std),
        reference_date=ref,
        patch_size=patch,
        class_names=tuple(meta.get("class_names") or CLASS_NAMES),
        ignore_index=None if ignore is None else int(ignore),
        downscale=downscale,
        date_range=date_range,  # type: ignore[arg-type]
        min_date_clear=pre.get("min_date_clear", 0.0),
        unclear_scl=tuple(int(v) for v in (pre.get("unclear_scl") or DEFAULT_UNCLEAR_SCL)),
        resampling_20m=str(pre.get("resampling_20m") or "nearest"),
        date_encoding=encoding,
    )
