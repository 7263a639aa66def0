"""Tests of the training loss (class weights, weighted cross-entropy)."""

from __future__ import annotations

import pytest
import torch

from crop2seg_pipeline.loss import class_weights, weighted_cross_entropy


def test_class_weights_inverse_sqrt_ignoring_class_14():
    counts = [400, 100, 0] + [0] * 11 + [1000]
    w = class_weights(counts)
    assert w[14] == 0 and w[2] == 0
    assert w[1] / w[0] == pytest.approx(2.0)                        # sqrt(400 / 100)
    n = torch.tensor(counts, dtype=torch.float32)
    n[14] = 0
    assert float((w * n).sum() / n.sum()) == pytest.approx(1.0)


def test_weighted_cross_entropy_is_torch_mean_loss_split_in_sum_and_weight():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 15, 6, 6, generator=g)
    target = torch.randint(0, 15, (2, 6, 6), generator=g)
    target[0, :2] = 14
    weight = torch.rand(15, generator=g) + 0.1
    s, w = weighted_cross_entropy(logits, target, weight)
    ref = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=14)(logits, target)
    assert float(s / w) == pytest.approx(float(ref), rel=1e-5)
    s, w = weighted_cross_entropy(logits, torch.full_like(target, 14), weight)
    assert float(s) == 0 and float(w) == 0  # nothing weighted: the caller skips the batch
