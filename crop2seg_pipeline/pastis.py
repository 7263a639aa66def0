"""The PASTIS layout (Garnot & Landrieu 2021): read a folder, train from it.

A PASTIS folder, as read by the reference ``PASTIS_Dataset`` (VSainteuf/pastis-benchmark
``code/dataloader.py``) with ``norm=True, target="semantic"``::

    metadata.geojson          one feature per patch: geometry, ID_PATCH (int), Fold (int 1..5),
                              dates-S2 {"0": YYYYMMDD, "1": ...} (unique, ascending)
    NORM_S2_patch.json        {"Fold_1": {"mean": [10 values], "std": [10 values]}, ... "Fold_5": ...}
    DATA_S2/S2_{ID}.npy       (T, 10, H, W) reflectance, bands B02 B03 B04 B05 B06 B07 B08 B8A B11 B12
    ANNOTATIONS/TARGET_{ID}.npy  (C, H, W), channel 0 the semantic class

The reference loader standardizes with the mean over the chosen folds of their ``Fold_k`` mean
and std, and gives dates as days since 2018-09-01 (its ``reference_date``), keeping a table of
days -200 .. 599 from it. Folders written by ``crop2seg-export-pastis``
(:mod:`crop2seg_pipeline.pastis_export`) also hold ``crop2seg_export.json`` (source store,
reference date, classes, fold mapping, completion status) and a per-date ``clear-S2`` share in
each feature; the reference loader ignores both.

Classes: PASTIS has 20 (:data:`PASTIS_CLASSES`, 19 = Void label, ignored like ``Not
classified`` here). Training from a PASTIS folder keeps them (``class_map="pastis"``), or maps
them to this pipeline's 15 classes with :data:`PASTIS_TO_CROP2SEG` (``"crop2seg"``, approximate:
the nomenclatures differ) or a CSV ``pastis_id,class_id``. A folder exported from a patch store
already holds the 15 classes and keeps them.

>>> from crop2seg_pipeline.pastis import PastisDataset                          # doctest: +SKIP
>>> ds = PastisDataset("PASTIS/", folds=[1, 2, 3])                              # doctest: +SKIP
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError
from .kernels.dates import DEFAULT_DATE_ENCODING, check_date_encoding
from .kernels.windows import preprocess
from .nomenclature import BANDS, CLASS_NAMES, N_CLASSES, NOT_CLASSIFIED

__all__ = [
    "PastisError", "PastisFolder", "PastisDataset", "is_pastis_folder", "open_pastis_training",
    "read_class_map", "PASTIS_CLASSES", "PASTIS_VOID", "PASTIS_TO_CROP2SEG", "PASTIS_REFERENCE_DATE",
    "SPLIT_FOLDS", "METADATA_FILE", "NORM_FILE", "MANIFEST_FILE", "DATA_DIR", "TARGET_DIR",
]

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.geojson"
NORM_FILE = "NORM_S2_patch.json"
MANIFEST_FILE = "crop2seg_export.json"
DATA_DIR = "DATA_S2"
TARGET_DIR = "ANNOTATIONS"
MANIFEST_FORMAT = "crop2seg-pastis-export"
#: Dates of PASTIS are days since this date (the reference loader's default).
PASTIS_REFERENCE_DATE = "2018-09-01"
#: Folds of the PASTIS layout and how the export maps a store's splits onto them.
FOLDS = (1, 2, 3, 4, 5)
SPLIT_FOLDS: dict[str, tuple[int, ...]] = {"train": (1, 2, 3), "val": (4,), "test": (5,)}
DEFAULT_TRAIN_FOLDS, DEFAULT_VAL_FOLDS = SPLIT_FOLDS["train"], SPLIT_FOLDS["val"]

#: PASTIS's semantic classes (pastis-benchmark ``documentation/label_names.json``).
PASTIS_CLASSES: tuple[str, ...] = (
    "Background", "Meadow", "Soft winter wheat", "Corn", "Winter barley", "Winter rapeseed", "Spring barley",
    "Sunflower", "Grapevine", "Beet", "Winter triticale", "Winter durum wheat", "Fruits, vegetables, flowers",
    "Potatoes", "Leguminous fodder", "Soybeans", "Orchard", "Mixed cereal", "Sorghum", "Void label",
)
PASTIS_VOID = 19

#: PASTIS class id -> this pipeline's class id. **Approximate**: the two nomenclatures group
#: crops differently (a French and a Czech LPIS); it is meant for pretraining, not for scores.
PASTIS_TO_CROP2SEG: dict[int, int] = {
    0: 0,    # Background -> Background
    1: 1,    # Meadow -> Permanent grassland
    2: 4,    # Soft winter wheat -> Winter cereals
    3: 6,    # Corn -> Maize
    4: 4,    # Winter barley -> Winter cereals
    5: 5,    # Winter rapeseed -> Rapeseed
    6: 3,    # Spring barley -> Summer cereals
    7: 13,   # Sunflower -> Other crops
    8: 12,   # Grapevine -> Vineyards
    9: 8,    # Beet -> Sugar beet
    10: 4,   # Winter triticale -> Winter cereals
    11: 4,   # Winter durum wheat -> Winter cereals
    12: 2,   # Fruits, vegetables, flowers -> Annual fruit & vegetable
    13: 2,   # Potatoes -> Annual fruit & vegetable
    14: 7,   # Leguminous fodder -> Annual forage crops
    15: 13,  # Soybeans -> Other crops
    16: 10,  # Orchard -> Permanent fruit
    17: 4,   # Mixed cereal -> Winter cereals (mostly winter-sown mixtures)
    18: 13,  # Sorghum -> Other crops
    19: NOT_CLASSIFIED,  # Void label -> Not classified
}


class PastisError(StoreError):
    """A PASTIS folder is missing files, inconsistent, or asked for something it does not hold."""


def is_pastis_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a PASTIS folder (or an export of ours, complete or not)."""
    p = Path(path)
    return p.is_dir() and ((p / METADATA_FILE).is_file() or (p / DATA_DIR).is_dir() or (p / MANIFEST_FILE).is_file())


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class PastisPatch:
    """One feature of ``metadata.geojson``."""

    id: int
    fold: int
    dates: np.ndarray  # datetime64[D], ascending
    clear: np.ndarray | None  # per-date clear-sky share (exports of ours), else None


class PastisFolder:
    """The metadata of a PASTIS folder, checked: patches, folds, dates, normalization.

    Raises
    ------
    PastisError
        A file is missing or unreadable, a feature lacks ``ID_PATCH``/``Fold``/``dates-S2``, an
        ID is repeated, a fold is not 1..5, dates are not unique and ascending, ``NORM_S2_patch.json``
        lacks a fold, or the folder is an unfinished export.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise PastisError(f"{path} is not a folder")
        self.manifest = self._read_manifest()
        missing = [name for name, ok in ((METADATA_FILE, (self.path / METADATA_FILE).is_file()),
                                         (NORM_FILE, (self.path / NORM_FILE).is_file()),
                                         (DATA_DIR + "/", (self.path / DATA_DIR).is_dir()),
                                         (TARGET_DIR + "/", (self.path / TARGET_DIR).is_dir())) if not ok]
        if missing:
            raise PastisError(f"{path} is not a complete PASTIS folder: {', '.join(missing)} missing (expected "
                              f"{METADATA_FILE}, {NORM_FILE}, {DATA_DIR}/S2_<ID>.npy, {TARGET_DIR}/TARGET_<ID>.npy)")
        self.patches = self._read_metadata()
        self.norm = self._read_norm()

    # -- files

    def _read_manifest(self) -> dict[str, Any] | None:
        f = self.path / MANIFEST_FILE
        if not f.is_file():
            return None
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PastisError(f"{f} cannot be read ({e}); re-run crop2seg-export-pastis") from None
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise PastisError(f"{f} is not a crop2seg export manifest")
        if doc.get("status") != "complete":
            raise PastisError(f"{self.path} is an unfinished export of {doc.get('source')} "
                              f"({doc.get('written', '?')} of {doc.get('n_patches', '?')} patches written); run "
                              "crop2seg-export-pastis again with the same arguments to finish it")
        return doc

    def _read_json(self, name: str) -> Any:
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PastisError(f"{self.path / name} cannot be read as JSON: {e}") from None

    def _read_metadata(self) -> list[PastisPatch]:
        doc = self._read_json(METADATA_FILE)
        features = doc.get("features") if isinstance(doc, dict) else None
        if not isinstance(features, list) or not features:
            raise PastisError(f"{self.path / METADATA_FILE} holds no feature (a GeoJSON FeatureCollection, one "
                              "feature per patch, is expected)")
        patches, seen = [], set()
        for k, feat in enumerate(features):
            props = (feat or {}).get("properties") or {}
            where = f"{self.path / METADATA_FILE}, feature {k}"
            try:
                pid = int(props["ID_PATCH"])
            except (KeyError, TypeError, ValueError):
                raise PastisError(f"{where}: ID_PATCH is missing or not an integer") from None
            where = f"{self.path / METADATA_FILE}, patch {pid}"
            if pid in seen:
                raise PastisError(f"{where}: ID_PATCH {pid} appears twice")
            seen.add(pid)
            fold = props.get("Fold")
            if isinstance(fold, bool) or not isinstance(fold, (int, float)) or int(fold) != fold \
                    or int(fold) not in FOLDS:
                raise PastisError(f"{where}: Fold {fold!r} is not one of the folds 1..5")
            dates = _parse_dates(props.get("dates-S2"), where)
            clear = props.get("clear-S2")
            clear_arr = None
            if clear is not None:
                clear_arr = np.array([float(clear[key]) for key in sorted(clear, key=int)], np.float32)
                if len(clear_arr) != len(dates):
                    raise PastisError(f"{where}: clear-S2 has {len(clear_arr)} values for {len(dates)} dates")
            patches.append(PastisPatch(pid, int(fold), dates, clear_arr))
        return sorted(patches, key=lambda p: p.id)

    def _read_norm(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        doc = self._read_json(NORM_FILE)
        out = {}
        for f in sorted({p.fold for p in self.patches}):
            entry = doc.get(f"Fold_{f}") if isinstance(doc, dict) else None
            try:
                mean = np.asarray(entry["mean"], np.float64)
                std = np.asarray(entry["std"], np.float64)
            except (TypeError, KeyError, ValueError):
                raise PastisError(f"{self.path / NORM_FILE} lacks Fold_{f} (mean and std of the {len(BANDS)} "
                                  "bands); every fold of metadata.geojson needs one") from None
            if mean.shape != (len(BANDS),) or std.shape != (len(BANDS),):
                raise PastisError(f"{self.path / NORM_FILE}: Fold_{f} must hold {len(BANDS)} means and stds")
            out[f] = (mean, std)
        return out

    # -- queries

    @property
    def is_export(self) -> bool:
        """Written by ``crop2seg-export-pastis`` (labels in this pipeline's 15 classes)."""
        return self.manifest is not None

    @property
    def reference_date(self) -> str:
        """The date PASTIS positions are counted from: 2018-09-01, or the one an export recorded."""
        return str((self.manifest or {}).get("reference_date") or PASTIS_REFERENCE_DATE)

    def select(self, folds: Sequence[int]) -> list[PastisPatch]:
        unknown = sorted(set(folds) - set(FOLDS))
        if unknown:
            raise PastisError(f"fold(s) {unknown} do not exist: PASTIS folds are 1..5")
        chosen = [p for p in self.patches if p.fold in set(folds)]
        if not chosen:
            have = sorted({p.fold for p in self.patches})
            raise PastisError(f"{self.path} has no patch in fold(s) {list(folds)} (its folds: {have})")
        return chosen

    def normalization(self, folds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Mean over ``folds`` of their ``Fold_k`` mean and std, as the reference loader does."""
        for f in folds:
            if f not in self.norm:
                raise PastisError(f"{self.path / NORM_FILE}: no Fold_{f} entry")
        means = np.stack([self.norm[f][0] for f in folds]).mean(axis=0)
        stds = np.stack([self.norm[f][1] for f in folds]).mean(axis=0)
        return means.astype(np.float32), stds.astype(np.float32)

    def data_file(self, pid: int) -> Path:
        return self.path / DATA_DIR / f"S2_{pid}.npy"

    def target_file(self, pid: int) -> Path:
        return self.path / TARGET_DIR / f"TARGET_{pid}.npy"

    def check_files(self, patches: Sequence[PastisPatch]) -> tuple[int, int]:
        """Open the headers of the patches' arrays (no pixel is read); returns (height, width).

        Raises PastisError for a missing or unreadable file, T different from ``dates-S2``, a
        band count other than 10, patch sizes that differ, or a target of another size.
        """
        size = None
        for p in patches:
            data = _open_npy(self.data_file(p.id))
            if data.ndim != 4 or data.shape[1] != len(BANDS):
                raise PastisError(f"{self.data_file(p.id)} has shape {data.shape}; (T, {len(BANDS)}, H, W) expected")
            if data.shape[0] != len(p.dates):
                raise PastisError(f"{self.data_file(p.id)} holds {data.shape[0]} dates but metadata.geojson lists "
                                  f"{len(p.dates)} in dates-S2 of patch {p.id}")
            target = _open_npy(self.target_file(p.id))
            hw = tuple(target.shape[-2:])
            if target.ndim not in (2, 3) or hw != tuple(data.shape[2:]):
                raise PastisError(f"{self.target_file(p.id)} has shape {target.shape}; (C, {data.shape[2]}, "
                                  f"{data.shape[3]}) expected (channel 0: semantic classes)")
            if size is None:
                size = hw
            elif hw != size:
                raise PastisError(f"patches of {self.path} differ in size ({size} and {hw} for patch {p.id})")
        return size  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """A digest of ``metadata.geojson`` and ``NORM_S2_patch.json`` (another folder, another run)."""
        if self.manifest is not None and self.manifest.get("source_fingerprint"):
            return f"export:{self.manifest['source_fingerprint']}"
        h = hashlib.sha256()
        for name in (METADATA_FILE, NORM_FILE):
            h.update((self.path / name).read_bytes())
        return h.hexdigest()[:16]


def _parse_dates(value: Any, where: str) -> np.ndarray:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise PastisError(f"{where}: dates-S2 is not a JSON object of YYYYMMDD dates") from None
    if not isinstance(value, Mapping) or not value:
        raise PastisError(f"{where}: dates-S2 must be a non-empty object {{\"0\": YYYYMMDD, ...}}")
    try:
        keys = sorted(value, key=int)
        days = [dt.datetime.strptime(str(int(value[k])), "%Y%m%d").date() for k in keys]
    except (TypeError, ValueError):
        raise PastisError(f"{where}: dates-S2 holds entries that are not YYYYMMDD dates under integer keys") from None
    if [int(k) for k in keys] != list(range(len(keys))):
        raise PastisError(f"{where}: dates-S2 keys must be 0 .. {len(keys) - 1}")
    d = np.array(days, dtype="datetime64[D]")
    if len(d) > 1 and not (np.diff(d) > np.timedelta64(0, "D")).all():
        raise PastisError(f"{where}: dates-S2 must be unique and ascending (the reference loader sorts them, "
                          "which would misalign them with the arrays)")
    return d


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise PastisError(f"{path} is missing (every patch of metadata.geojson needs its {DATA_DIR}/S2_<ID>.npy "
                          f"and {TARGET_DIR}/TARGET_<ID>.npy)") from None
    except (OSError, ValueError) as e:
        raise PastisError(f"{path} is not a readable .npy array: {e}") from None


# ----------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class ClassMap:
    """How a folder's label ids become the trained classes: a lookup table and the class names."""

    name: str  # "pastis", "crop2seg", "export" or the CSV path
    table: np.ndarray  # (256,) int64: source id -> trained id; -1: not a valid source id
    class_names: tuple[str, ...]
    ignore_index: int


def read_class_map(spec: str | None, folder: PastisFolder) -> ClassMap:
    """The class map of ``spec`` (``None``: the folder's own classes) for ``folder``.

    Raises PastisError for a CSV that is unreadable, lacks the columns ``pastis_id,class_id``,
    or holds ids outside 0..19 / 0..14, and for a PASTIS class map asked of an export of ours.
    """
    if folder.is_export:
        if spec not in (None, "export"):
            raise PastisError(f"{folder.path} was exported from a patch store: its labels are already this "
                              "pipeline's 15 classes; leave --class-map out")
        table = np.full(256, -1, np.int64)
        table[:N_CLASSES] = np.arange(N_CLASSES)
        names = tuple(folder.manifest.get("class_names") or CLASS_NAMES)
        return ClassMap("export", table, names, int(folder.manifest.get("ignore_index", NOT_CLASSIFIED)))
    if spec in (None, "pastis"):
        table = np.full(256, -1, np.int64)
        table[:len(PASTIS_CLASSES)] = np.arange(len(PASTIS_CLASSES))
        return ClassMap("pastis", table, PASTIS_CLASSES, PASTIS_VOID)
    if spec == "crop2seg":
        mapping = dict(PASTIS_TO_CROP2SEG)
    else:
        mapping = _read_class_csv(Path(spec))
    table = np.full(256, -1, np.int64)
    table[:len(PASTIS_CLASSES)] = NOT_CLASSIFIED  # PASTIS ids the map leaves out: Not classified
    for src, dst in mapping.items():
        table[src] = dst
    return ClassMap(str(spec), table, tuple(CLASS_NAMES), NOT_CLASSIFIED)


def _read_class_csv(path: Path) -> dict[int, int]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise PastisError(f"--class-map {path} cannot be read: {e}") from None
    if not rows or not {"pastis_id", "class_id"} <= set(rows[0]):
        raise PastisError(f"--class-map {path} needs the columns pastis_id,class_id (one row per PASTIS class; "
                          "unlisted classes become Not classified)")
    out = {}
    for k, row in enumerate(rows, start=2):
        try:
            src, dst = int(row["pastis_id"]), int(row["class_id"])
        except (TypeError, ValueError):
            raise PastisError(f"--class-map {path}, line {k}: pastis_id and class_id must be integers") from None
        if not 0 <= src < len(PASTIS_CLASSES) or not 0 <= dst < N_CLASSES:
            raise PastisError(f"--class-map {path}, line {k}: pastis_id must be 0..{len(PASTIS_CLASSES) - 1} and "
                              f"class_id 0..{N_CLASSES - 1}, got {src}, {dst}")
        out[src] = dst
    return out


# ----------------------------------------------------------------------------- dataset


class PastisDataset:
    """Patches of folds of a PASTIS folder as the same samples as :class:`~crop2seg_pipeline.dataset.PatchDataset`.

    ``s2`` is standardized with the folds' normalization (or ``mean``/``std``) by the pipeline's
    one preprocessing kernel; ``dates`` are the acquisition days, ``positions`` computed from
    them after ``transform`` with the folder's reference date (2018-09-01 for PASTIS) and
    ``date_encoding``; ``label`` goes through ``class_map``; ``parcel_id`` is 0 (PASTIS instance
    ids are not read); ``clear`` is the export's ``clear-S2`` share, or 1. Files are opened one
    patch at a time.
    """

    def __init__(self, folder: str | os.PathLike | PastisFolder, folds: Sequence[int] = DEFAULT_TRAIN_FOLDS, *,
                 class_map: str | ClassMap | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, date_encoding: str = DEFAULT_DATE_ENCODING,
                 transform: Callable[[dict], dict] | None = None):
        self.folder = folder if isinstance(folder, PastisFolder) else PastisFolder(folder)
        self.patches = self.folder.select(folds)
        self.folds = sorted(set(folds))
        self.size = self.folder.check_files(self.patches)
        norm = self.folder.normalization(self.folds)
        self.mean = np.asarray(mean if mean is not None else norm[0], np.float32)
        self.std = np.asarray(std if std is not None else norm[1], np.float32)
        self.class_map = class_map if isinstance(class_map, ClassMap) else read_class_map(class_map, self.folder)
        self.reference_date = dt.date.fromisoformat(self.folder.reference_date)
        try:
            self.date_encoding = check_date_encoding(date_encoding)
        except ValueError as e:
            raise PastisError(str(e)) from None
        self.transform = transform
        self.bands = list(BANDS)
        self.indices = np.array([p.id for p in self.patches], np.int64)

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int) -> dict:
        import torch

        from .dataset import with_positions

        p = self.patches[i]
        raw = np.load(self.folder.data_file(p.id), allow_pickle=False)
        target = np.load(self.folder.target_file(p.id), allow_pickle=False)
        semantic = np.asarray(target[0] if target.ndim == 3 else target)
        if semantic.min() < 0 or semantic.max() > 255 or (self.class_map.table[semantic.astype(np.int64)] < 0).any():
            raise PastisError(f"{self.folder.target_file(p.id)} holds class ids outside the "
                              f"{len(self.class_map.class_names)} classes of class map {self.class_map.name!r}")
        sample = {
            "s2": torch.from_numpy(preprocess(raw, self.mean, self.std)),
            "dates": torch.from_numpy(p.dates.astype(np.int64)),
            "label": torch.from_numpy(self.class_map.table[semantic.astype(np.int64)]),
            "parcel_id": torch.zeros(semantic.shape, dtype=torch.int64),
            "clear": torch.from_numpy(p.clear.copy() if p.clear is not None else np.ones(len(p.dates), np.float32)),
            "index": p.id,
        }
        return with_positions(self.transform(sample) if self.transform else sample, self.reference_date,
                              self.date_encoding)

    def class_counts(self) -> list[int]:
        """Pixels per trained class over these patches (reads every target once)."""
        counts = np.zeros(len(self.class_map.class_names), np.int64)
        for p in self.patches:
            target = np.load(self.folder.target_file(p.id), mmap_mode="r", allow_pickle=False)
            semantic = np.asarray(target[0] if target.ndim == 3 else target).astype(np.int64)
            ids = self.class_map.table[np.clip(semantic, 0, 255)]
            if semantic.min() < 0 or semantic.max() > 255 or (ids < 0).any():
                raise PastisError(f"{self.folder.target_file(p.id)} holds class ids outside the "
                                  f"{len(self.class_map.class_names)} classes of class map {self.class_map.name!r}")
            counts += np.bincount(ids.ravel(), minlength=len(counts))[:len(counts)]
        return counts.tolist()

    def date_range(self) -> list[str] | None:
        dates = np.concatenate([p.dates for p in self.patches])
        return [str(dates.min()), str(dates.max())] if dates.size else None


# ----------------------------------------------------------------------------- training source


def open_pastis_training(folder: str | os.PathLike, transform: Callable[[dict], dict], *,
                         date_encoding: str = DEFAULT_DATE_ENCODING, class_map: str | None = None,
                         train_folds: Sequence[int] | None = None, val_folds: Sequence[int] | None = None,
                         say: Callable[[str], Any] = log.info):
    """A :class:`~crop2seg_pipeline.train_data.TrainingData` of a PASTIS folder's folds.

    Training folds default to 1, 2, 3 and validation folds to 4 (the export's mapping of the
    train/val splits); normalization is the training folds' (NORM_S2_patch.json); dates count
    from 2018-09-01 as in the reference loader (or the reference date an export recorded).
    """
    from .loss import class_weights
    from .train_data import TrainingData

    pf = PastisFolder(folder)
    train_folds = list(train_folds) if train_folds is not None else list(DEFAULT_TRAIN_FOLDS)
    val_folds = list(val_folds) if val_folds is not None else list(DEFAULT_VAL_FOLDS)
    both = sorted(set(train_folds) & set(val_folds))
    if both:
        raise PastisError(f"fold(s) {both} are both trained and validated on; choose disjoint --train-folds "
                          "and --val-folds")
    train = PastisDataset(pf, train_folds, class_map=class_map, date_encoding=date_encoding, transform=transform)
    val = None
    if val_folds and any(p.fold in set(val_folds) for p in pf.patches):
        val = PastisDataset(pf, val_folds, class_map=train.class_map, mean=train.mean, std=train.std,
                            date_encoding=date_encoding)
        if val.size != train.size:
            raise PastisError(f"folds {val_folds} hold {val.size} px patches, folds {train_folds} {train.size}")
    elif val_folds:
        say(f"{folder}: no patch in validation fold(s) {val_folds}")
    cm = train.class_map
    counts = train.class_counts()
    weight = class_weights(counts, cm.ignore_index)
    if not (weight > 0).any():
        raise PastisError(f"{folder}: folds {train_folds} hold no labelled pixel")
    say(f"{folder}: PASTIS folder, {len(train)} patches in folds {train_folds}, {len(val) if val else 0} in "
        f"{val_folds}; {len(cm.class_names)} classes ({cm.name}), dates from {pf.reference_date}")
    pre = dict((pf.manifest or {}).get("preprocessing") or {})
    return TrainingData(
        source=str(folder), kind="pastis", train=train, val=val,
        validation={"kind": "folds", "folds": val_folds} if val is not None else {"kind": None},
        transform=transform, weight=weight, class_names=list(cm.class_names), ignore_index=cm.ignore_index,
        bands=list(BANDS), patch_size=train.size, mean=train.mean, std=train.std,
        reference_date=train.reference_date, date_encoding=date_encoding, date_range=train.date_range(),
        fingerprint=pf.fingerprint(), preprocessing=pre,
        extra={"train_folds": train_folds, "val_folds": val_folds, "class_map": cm.name},
    )
