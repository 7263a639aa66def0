"""Training-time sample transforms (augmentation), deterministic per ``(seed, epoch, patch)``.

A transform takes one :class:`~crop2seg_pipeline.dataset.PatchDataset` sample dict *before* its
positions are computed (per-date entries ``s2``, ``dates``, ``clear``) and returns it changed;
the dataset then computes ``positions`` from the returned ``dates`` with the one positions
kernel (:func:`crop2seg_pipeline.kernels.dates.date_positions`), so shifted or jittered days
are encoded exactly like real ones, whatever the date encoding.

Random draws depend only on ``(seed, epoch, patch index)``, never on the process that loads the
sample, so DataLoader workers and resumed runs see the same draws.

Why temporal augmentation: a model trained on one scene sees one set of acquisition days; it
learns "date 7 is green" instead of "green in late spring", and fails on another tile or year
whose dates differ. Random subsets of dates of varying length, shifted and jittered days, and
dropped cloudy dates make every epoch show each patch a different date set.

>>> t = TrainTransform(seed=0, temporal=TemporalAugment())          # doctest: +SKIP
>>> t.epoch = 3; sample = t(dataset.sample(0))                       # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import Crop2SegError

__all__ = ["TemporalAugment", "TrainTransform", "PER_DATE_KEYS"]

#: Sample entries with one value per date (along their first axis).
PER_DATE_KEYS = ("s2", "dates", "clear")


@dataclass(frozen=True)
class TemporalAugment:
    """Random changes to a sample's dates; the defaults are the ``crop2seg-train`` defaults.

    Applied in this order, each from the same per-sample random generator:

    1. cloudy dates (clear-sky share of the patch below ``cloudy_below``, the store's
       ``clear``) are each dropped with probability ``cloudy_drop``;
    2. a random share of the sample's dates, drawn uniformly from ``keep`` (min, max), is kept
       (at least ``min_dates``, or all when the patch has fewer), the others dropped; the
       dates dropped in 1 come back (clearest first) when fewer than that remain;
    3. all kept days are shifted by one random whole number of days in
       ``[-shift_days, shift_days]``, then each by its own in ``[-jitter_days, jitter_days]``.

    Attributes
    ----------
    keep : (min, max) share of the dates kept, 0 < min <= max <= 1; (1, 1) keeps all
    min_dates : dates kept at least (fewer only when the patch has fewer)
    shift_days : largest per-sample shift of all acquisition days (0: none)
    jitter_days : largest per-date jitter (0: none)
    cloudy_below : a date is cloudy when its clear-sky share is below this (0..1)
    cloudy_drop : probability of dropping each cloudy date (0: never)
    """

    keep: tuple[float, float] = (0.4, 1.0)
    min_dates: int = 4
    shift_days: int = 15
    jitter_days: int = 3
    cloudy_below: float = 0.5
    cloudy_drop: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in self.keep)
        if not 0.0 < lo <= hi <= 1.0:
            raise Crop2SegError(f"date keep share must be 0 < min <= max <= 1, got {lo}, {hi}")
        object.__setattr__(self, "keep", (lo, hi))
        for name in ("min_dates", "shift_days", "jitter_days"):
            v = getattr(self, name)
            if int(v) != v or v < (1 if name == "min_dates" else 0):
                raise Crop2SegError(f"{name.replace('_', ' ')} must be a whole number >= "
                                    f"{1 if name == 'min_dates' else 0}, got {v}")
            object.__setattr__(self, name, int(v))
        if not 0.0 <= self.cloudy_below <= 1.0:
            raise Crop2SegError(f"cloudy threshold must be a clear-sky share in [0, 1], got {self.cloudy_below}")
        if not 0.0 <= self.cloudy_drop <= 1.0:
            raise Crop2SegError(f"cloudy drop probability must be in [0, 1], got {self.cloudy_drop}")

    @property
    def active(self) -> bool:
        """Whether it changes anything at all."""
        return (self.keep != (1.0, 1.0) or self.shift_days > 0 or self.jitter_days > 0
                or (self.cloudy_drop > 0 and self.cloudy_below > 0))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep"] = list(self.keep)
        return d

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TemporalAugment:
        return cls(**{**doc, "keep": tuple(doc.get("keep", cls.keep))})

    def select(self, rng: np.random.Generator, clear: np.ndarray) -> np.ndarray:
        """Indices (ascending) of the dates kept, from the dates' clear-sky shares."""
        t = len(clear)
        floor = min(self.min_dates, t)
        keep = np.ones(t, bool)
        if self.cloudy_drop > 0 and self.cloudy_below > 0:
            cloudy = np.nan_to_num(clear, nan=1.0) < self.cloudy_below
            keep &= ~(cloudy & (rng.random(t) < self.cloudy_drop))
        lo, hi = self.keep
        share = rng.uniform(lo, hi) if hi > lo else lo
        n = min(t, max(floor, math.ceil(share * t - 1e-9)))
        kept = np.flatnonzero(keep)
        if len(kept) > n:
            kept = np.sort(rng.choice(kept, n, replace=False))
        elif len(kept) < floor:  # too many cloudy dates dropped: the clearest come back
            dropped = np.flatnonzero(~keep)
            back = dropped[np.argsort(-np.nan_to_num(clear[dropped], nan=1.0), kind="stable")][: floor - len(kept)]
            kept = np.sort(np.concatenate([kept, back]))
        return kept

    def move_days(self, rng: np.random.Generator, days: np.ndarray) -> np.ndarray:
        """``days`` (int64 days since 1970-01-01) shifted as a whole, then jittered one by one."""
        out = days.astype(np.int64, copy=True)
        if self.shift_days > 0:
            out += int(rng.integers(-self.shift_days, self.shift_days + 1))
        if self.jitter_days > 0:
            out += rng.integers(-self.jitter_days, self.jitter_days + 1, size=len(out))
        return out


#: Temporal augmentation switched off.
NO_TEMPORAL = TemporalAugment(keep=(1.0, 1.0), shift_days=0, jitter_days=0, cloudy_drop=0.0)


class TrainTransform:
    """Training-time augmentation of one :class:`PatchDataset` sample.

    * a random element of the dihedral group (rot90 k times, then an optional horizontal flip),
      the same for ``s2``, ``label`` and ``parcel_id`` (square patches only for rotations);
    * temporal dropout: each date is dropped with probability ``temporal_dropout`` (at least one
      date is always kept);
    * ``temporal``: a :class:`TemporalAugment` (date subsets, day shift and jitter, cloudy dates
      dropped); None or an inactive one changes no date.

    The random draw depends only on ``(seed, epoch, patch index)``: set :attr:`epoch` before each
    epoch. The object is picklable, so it works in DataLoader worker processes.
    """

    def __init__(self, seed: int = 0, augment: bool = True, temporal_dropout: float = 0.0,
                 temporal: TemporalAugment | None = None):
        if not 0.0 <= temporal_dropout < 1.0:
            raise Crop2SegError(f"temporal dropout must be in [0, 1), got {temporal_dropout}")
        self.seed = int(seed)
        self.augment = bool(augment)
        self.temporal_dropout = float(temporal_dropout)
        self.temporal = temporal if temporal is not None and temporal.active else None
        self.epoch = 0

    def __call__(self, sample: dict) -> dict:
        import torch  # here, so that the module (and the CLI's --help) does not load torch

        rng = np.random.default_rng([self.seed, self.epoch, int(sample["index"])])
        if self.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            h, w = sample["label"].shape[-2:]
            if h != w:
                k = 2 * (k % 2)  # rot 180 keeps the shape
            for key in ("s2", "label", "parcel_id"):
                v = sample[key]
                if k:
                    v = torch.rot90(v, k, dims=(-2, -1))
                if flip:
                    v = torch.flip(v, dims=(-1,))
                sample[key] = v.contiguous()
        if self.temporal_dropout > 0:
            t = sample["s2"].shape[0]
            keep = rng.random(t) >= self.temporal_dropout
            if not keep.any():
                keep[rng.integers(t)] = True
            if not keep.all():
                _take_dates(sample, np.flatnonzero(keep))
        if self.temporal is not None:
            clear = np.asarray(sample["clear"], dtype=np.float32) if "clear" in sample else \
                np.ones(sample["s2"].shape[0], np.float32)
            kept = self.temporal.select(rng, clear)
            if len(kept) < sample["s2"].shape[0]:
                _take_dates(sample, kept)
            sample["dates"] = torch.from_numpy(self.temporal.move_days(rng, np.asarray(sample["dates"])))
        return sample


def _take_dates(sample: dict, idx: np.ndarray) -> None:
    import torch

    index = torch.from_numpy(np.asarray(idx, dtype=np.int64))
    for key in PER_DATE_KEYS:
        if key in sample:
            sample[key] = sample[key].index_select(0, index)
