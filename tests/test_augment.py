"""Tests of the training-time sample transforms."""

from __future__ import annotations

import torch

from crop2seg_pipeline.augment import TrainTransform


def test_train_transform_is_consistent_and_seeded():
    t = torch.arange(4 * 2 * 8 * 8, dtype=torch.float32).reshape(4, 2, 8, 8)
    lab = torch.arange(64).reshape(8, 8)
    sample = lambda: {"s2": t.clone(), "positions": torch.arange(4.0), "clear": torch.ones(4),  # noqa: E731
                      "label": lab.clone(), "parcel_id": lab.clone() * 10, "index": 7}
    tr = TrainTransform(seed=1, augment=True, temporal_dropout=0.5)
    outs = []
    for epoch in range(6):
        tr.epoch = epoch
        s = tr(sample())
        outs.append(s)
        assert torch.equal(s["parcel_id"], s["label"] * 10)          # same transform on both
        # the label moved with the image: pixel (i, j) of band 0 at date 0 still matches
        k = int(s["positions"][0])
        assert torch.equal(s["s2"][0, 0], t[k, 0].flatten()[s["label"].flatten()].reshape(8, 8))
        assert 1 <= s["s2"].shape[0] == len(s["positions"]) == len(s["clear"]) <= 4
    assert len({tuple(o["label"].flatten()[:3].tolist()) for o in outs}) > 1   # it does vary
    tr.epoch = 3
    again = tr(sample())
    assert torch.equal(again["s2"], outs[3]["s2"])                   # and is reproducible
    assert torch.equal(TrainTransform(augment=False)(sample())["s2"], t)
