"""Training-time sample transforms (augmentation), deterministic per ``(seed, epoch, patch)``.

A transform takes one :class:`~crop2seg_pipeline.dataset.PatchDataset` sample dict and returns
it changed; its random draws depend only on ``(seed, epoch, patch index)``, never on the
process that loads the sample, so DataLoader workers and resumed runs see the same draws.

>>> t = TrainTransform(seed=0)                                        # doctest: +SKIP
>>> t.epoch = 3; sample = t(dataset[0])                              # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import Crop2SegError

__all__ = ["TrainTransform"]


class TrainTransform:
    """Training-time augmentation of one :class:`PatchDataset` sample.

    * a random element of the dihedral group (rot90 k times, then an optional horizontal flip),
      the same for ``s2``, ``label`` and ``parcel_id`` (square patches only for rotations);
    * temporal dropout: each date is dropped with probability ``temporal_dropout`` (at least one
      date is always kept).

    The random draw depends only on ``(seed, epoch, patch index)``: set :attr:`epoch` before each
    epoch. The object is picklable, so it works in DataLoader worker processes.
    """

    def __init__(self, seed: int = 0, augment: bool = True, temporal_dropout: float = 0.0):
        if not 0.0 <= temporal_dropout < 1.0:
            raise Crop2SegError(f"temporal dropout must be in [0, 1), got {temporal_dropout}")
        self.seed = int(seed)
        self.augment = bool(augment)
        self.temporal_dropout = float(temporal_dropout)
        self.epoch = 0

    def __call__(self, sample: dict) -> dict:
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
                idx = torch.from_numpy(np.flatnonzero(keep))
                for key in ("s2", "positions", "clear"):
                    if key in sample:
                        sample[key] = sample[key].index_select(0, idx)
        return sample
