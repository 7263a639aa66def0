"""Tests of the training-time sample transforms (spatial and temporal augmentation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crop2seg_pipeline.augment import NO_TEMPORAL, TemporalAugment, TrainTransform
from crop2seg_pipeline.errors import Crop2SegError

T = 12
DAY0 = 19000  # days since 1970-01-01 (2022-01-08)


def _sample(index: int = 7, t: int = T, clear: np.ndarray | None = None) -> dict:
    """A sample whose per-date entries all say which original date they are (date k -> k)."""
    s2 = torch.arange(t * 2 * 8 * 8, dtype=torch.float32).reshape(t, 2, 8, 8)
    lab = torch.arange(64).reshape(8, 8)
    return {"s2": s2, "dates": torch.arange(DAY0, DAY0 + 10 * t, 10, dtype=torch.int64),
            "clear": torch.from_numpy(np.ones(t, np.float32) if clear is None else clear.astype(np.float32)),
            "label": lab.clone(), "parcel_id": lab.clone() * 10, "index": index}


def _origin(s: dict) -> np.ndarray:
    """Original date index of every date left in a transformed sample (from its s2 values)."""
    return (s["s2"][:, 0].flatten(1).min(dim=1).values // (2 * 64)).long().numpy()


def test_spatial_transform_moves_labels_with_pixels_and_is_seeded():
    tr = TrainTransform(seed=1, augment=True, temporal_dropout=0.5)
    outs = []
    for epoch in range(6):
        tr.epoch = epoch
        s = tr(_sample())
        outs.append(s)
        assert torch.equal(s["parcel_id"], s["label"] * 10)          # same transform on both
        k = int(_origin(s)[0])                                       # the first date left
        base = _sample()["s2"][k, 0].flatten()
        assert torch.equal(s["s2"][0, 0], base[s["label"].flatten()].reshape(8, 8))  # label moved with image
        assert 1 <= s["s2"].shape[0] == len(s["dates"]) == len(s["clear"]) <= T
        np.testing.assert_array_equal(s["dates"].numpy(), DAY0 + 10 * _origin(s))  # dates follow their pixels
    assert len({tuple(o["label"].flatten()[:3].tolist()) for o in outs}) > 1   # it does vary
    tr.epoch = 3
    assert torch.equal(tr(_sample())["s2"], outs[3]["s2"])                     # and is reproducible
    assert torch.equal(TrainTransform(augment=False)(_sample())["s2"], _sample()["s2"])


def test_temporal_subsets_vary_in_length_and_respect_the_floor():
    aug = TemporalAugment(keep=(0.4, 1.0), min_dates=4, shift_days=0, jitter_days=0, cloudy_drop=0.0)
    tr = TrainTransform(seed=0, augment=False, temporal=aug)
    lengths = []
    for index in range(60):
        s = tr(_sample(index=index))
        idx = _origin(s)
        assert np.all(np.diff(idx) > 0)                          # a subset, in date order
        assert 4 <= len(idx) <= T and len(idx) >= np.ceil(0.4 * T)
        np.testing.assert_array_equal(s["dates"].numpy(), DAY0 + 10 * idx)  # no shift asked: days unchanged
        lengths.append(len(idx))
    assert min(lengths) <= 6 and max(lengths) == T and len(set(lengths)) >= 5   # varying lengths
    # a patch with fewer dates than the floor keeps them all
    short = TrainTransform(seed=0, augment=False, temporal=aug)(_sample(t=3))
    assert len(short["dates"]) == 3


def test_temporal_shift_is_one_per_sample_and_jitter_is_bounded():
    shift_only = TrainTransform(seed=2, augment=False, temporal=TemporalAugment(
        keep=(1.0, 1.0), shift_days=15, jitter_days=0, cloudy_drop=0.0))
    shifts = set()
    for index in range(40):
        s = shift_only(_sample(index=index))
        delta = s["dates"].numpy() - _sample()["dates"].numpy()
        assert len(set(delta.tolist())) == 1 and abs(int(delta[0])) <= 15      # all dates move together
        assert torch.equal(s["s2"], _sample()["s2"])                           # pixels untouched
        shifts.add(int(delta[0]))
    assert len(shifts) > 10 and min(shifts) < 0 < max(shifts)
    jitter = TrainTransform(seed=2, augment=False, temporal=TemporalAugment(
        keep=(1.0, 1.0), shift_days=0, jitter_days=3, cloudy_drop=0.0))
    deltas = np.concatenate([jitter(_sample(index=i))["dates"].numpy() - _sample()["dates"].numpy()
                             for i in range(40)])
    assert deltas.min() == -3 and deltas.max() == 3


def test_cloudy_dates_are_dropped_and_come_back_when_too_few_remain():
    clear = np.array([0.9, 0.1, 0.8, 0.2, 0.95, 0.05, 0.7, 0.3, 0.85, 0.15, 0.6, 0.45])
    always = TemporalAugment(keep=(1.0, 1.0), min_dates=4, shift_days=0, jitter_days=0,
                             cloudy_below=0.5, cloudy_drop=1.0)
    s = TrainTransform(seed=0, augment=False, temporal=always)(_sample(clear=clear))
    np.testing.assert_array_equal(_origin(s), np.flatnonzero(clear >= 0.5))   # every cloudy date gone
    np.testing.assert_allclose(s["clear"].numpy(), clear[clear >= 0.5].astype(np.float32))
    # only 2 clear dates: the clearest cloudy ones come back up to min_dates
    few = np.array([0.9, 0.1, 0.2, 0.4, 0.95, 0.05, 0.3, 0.0, 0.1, 0.15, 0.2, 0.45])
    s = TrainTransform(seed=0, augment=False, temporal=always)(_sample(clear=few))
    assert _origin(s).tolist() == [0, 3, 4, 11]                              # 0.9, 0.95 + 0.45, 0.4
    # with probability 0.5 about half of the cloudy dates go
    half = TemporalAugment(keep=(1.0, 1.0), min_dates=1, shift_days=0, jitter_days=0,
                           cloudy_below=0.5, cloudy_drop=0.5)
    tr = TrainTransform(seed=0, augment=False, temporal=half)
    kept_cloudy = [np.isin(_origin(tr(_sample(index=i, clear=clear))), np.flatnonzero(clear < 0.5)).sum()
                   for i in range(200)]
    assert 0.4 < np.mean(kept_cloudy) / 6 < 0.6


def test_temporal_draws_depend_on_seed_epoch_and_patch_only():
    tr = TrainTransform(seed=5, augment=True, temporal=TemporalAugment())
    tr.epoch = 2
    a = tr(_sample(index=3))
    b = TrainTransform(seed=5, augment=True, temporal=TemporalAugment())
    b.epoch = 2
    again = b(_sample(index=3))
    assert all(torch.equal(a[k], again[k]) for k in ("s2", "dates", "clear", "label"))
    b.epoch = 3
    draws = set()
    for epoch in range(5):
        b.epoch = epoch
        draws.add(tuple(b(_sample(index=3))["dates"].tolist()))
    assert len(draws) == 5


def test_inactive_temporal_augmentation_changes_nothing_and_bad_settings_are_refused():
    tr = TrainTransform(seed=0, augment=False, temporal=NO_TEMPORAL)
    assert tr.temporal is None and not NO_TEMPORAL.active and TemporalAugment().active
    s = tr(_sample())
    assert torch.equal(s["dates"], _sample()["dates"]) and torch.equal(s["s2"], _sample()["s2"])
    for kwargs, msg in [({"keep": (0.0, 1.0)}, "keep share"), ({"keep": (0.8, 0.5)}, "keep share"),
                        ({"min_dates": 0}, "min dates"), ({"shift_days": -1}, "shift days"),
                        ({"jitter_days": 1.5}, "jitter days"), ({"cloudy_below": 2.0}, "cloudy threshold"),
                        ({"cloudy_drop": -0.1}, "cloudy drop")]:
        with pytest.raises(Crop2SegError, match=msg):
            TemporalAugment(**kwargs)
    assert TemporalAugment.from_json(TemporalAugment().to_json()) == TemporalAugment()
