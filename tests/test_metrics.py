"""Tests of crop2seg_pipeline.kernels.metrics: confusion matrix, scores, boundary/interior regions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crop2seg_pipeline.kernels.metrics import (
    REGIONS,
    confusion_matrix,
    metrics_from_confusion,
    region_mask,
)
from crop2seg_pipeline.models import boundary_target
from crop2seg_pipeline.nomenclature import CLASS_NAMES

NAMES4 = ["a", "b", "c", "ign"]


def test_confusion_matrix_hand_computed_with_ignored_class():
    # classes 0..2, 3 = ignore
    y_true = np.array([0, 0, 0, 1, 1, 2, 3, 3, 2, 0])
    y_pred = np.array([0, 0, 1, 1, 1, 0, 0, 2, 2, 3])
    cm = confusion_matrix(y_true, y_pred, n_classes=4, ignore_index=3)
    expected = np.array([
        [2, 1, 0, 1],  # true 0: two right, one as 1, one predicted as the ignore class
        [0, 2, 0, 0],
        [1, 0, 1, 0],
        [0, 0, 0, 0],  # ignored pixels are never counted, whatever was predicted
    ])
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64


def test_confusion_matrix_mask_and_shapes():
    y_true = np.array([[0, 1], [1, 1]])
    y_pred = np.array([[0, 0], [1, 1]])
    mask = np.array([[True, False], [True, True]])
    cm = confusion_matrix(y_true, y_pred, 2, ignore_index=None, mask=mask)
    np.testing.assert_array_equal(cm, [[1, 0], [0, 2]])
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(y_true, y_pred[0], 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix(y_true, y_pred + 1, 2, ignore_index=None)


def test_metrics_hand_computed_absent_and_false_alarm_classes():
    # true rows, predicted columns; class 3 is the ignore class
    cm = np.array([
        [50, 10, 0, 0],   # class a: support 60
        [5, 30, 5, 0],    # class b: support 40; 5 predicted as c, which never occurs
        [0, 0, 0, 0],     # class c: absent from the truth, predicted 5 times -> IoU 0, averaged
        [7, 7, 7, 7],     # ignore row: disregarded entirely
    ])
    m = metrics_from_confusion(cm, NAMES4, ignore_index=3)
    assert m["overall_accuracy"] == pytest.approx(80 / 100)
    iou_a = 50 / (50 + 5 + 10)
    iou_b = 30 / (30 + 10 + 10)
    f1_a = 100 / (100 + 5 + 10)
    f1_b = 60 / (60 + 10 + 10)
    assert m["per_class"]["a"]["iou"] == pytest.approx(iou_a)
    assert m["per_class"]["b"]["iou"] == pytest.approx(iou_b)
    assert m["per_class"]["c"]["iou"] == 0.0 and m["per_class"]["c"]["f1"] == 0.0
    assert m["per_class"]["a"]["f1"] == pytest.approx(f1_a)
    assert m["per_class"]["a"]["support"] == 60 and m["per_class"]["c"]["support"] == 0
    assert m["per_class"]["c"]["predicted"] == 5
    assert m["miou"] == pytest.approx((iou_a + iou_b + 0.0) / 3)
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b + 0.0) / 3)
    assert "ign" not in m["per_class"]
    assert m["classes_averaged"] == ["a", "b", "c"]
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]
    assert m["n_pixels"] == 100
    json.dumps(m, allow_nan=False)  # JSON-ready as is


def test_metrics_class_absent_everywhere_is_not_averaged():
    cm = np.array([[8, 2, 0, 0], [1, 9, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    m = metrics_from_confusion(cm, NAMES4, ignore_index=3)
    assert m["per_class"]["c"]["iou"] is None and m["per_class"]["c"]["f1"] is None
    assert m["miou"] == pytest.approx((8 / 11 + 9 / 12) / 2)
    assert m["classes_averaged"] == ["a", "b"]
    json.dumps(m, allow_nan=False)


def test_metrics_empty_matrix_and_bad_input():
    m = metrics_from_confusion(np.zeros((4, 4), int), NAMES4, ignore_index=3)
    assert m["overall_accuracy"] is None and m["miou"] is None and m["macro_f1"] is None
    with pytest.raises(ValueError, match="class names"):
        metrics_from_confusion(np.zeros((4, 4), int), NAMES4[:3])


def test_metrics_end_to_end_perfect_prediction_on_15_classes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 15, size=(4, 16, 16))
    cm = confusion_matrix(y, y.copy(), 15)
    m = metrics_from_confusion(cm, CLASS_NAMES)
    assert m["overall_accuracy"] == 1.0 and m["miou"] == 1.0 and m["macro_f1"] == 1.0
    assert len(m["per_class"]) == 14 and "Not classified" not in m["per_class"]
    assert sum(v["support"] for v in m["per_class"].values()) == int((y != 14).sum())


def test_region_masks_partition_valid_pixels():
    label = np.zeros((8, 8), np.uint8)
    label[:, 4:] = 3          # a vertical edge between columns 3 and 4
    label[0:2, 0:2] = 14      # an unclassified corner
    boundary = region_mask(label, "boundary")
    interior = region_mask(label, "interior")
    valid = region_mask(label, "all")
    np.testing.assert_array_equal(valid, label != 14)
    np.testing.assert_array_equal(boundary | interior, valid)
    assert not (boundary & interior).any()
    # columns 3 and 4 are boundary (their cross straddles the edge), away from the 14 corner
    assert boundary[4:, 3].all() and boundary[4:, 4].all()
    assert not boundary[4:, :3].any() and not boundary[:, 5:].any()
    # neighbours of the unclassified corner are boundary, the corner itself is neither
    assert boundary[2, 0] and boundary[0, 2]
    assert not boundary[:2, :2].any() and not interior[:2, :2].any()
    np.testing.assert_array_equal(boundary, boundary_target(torch.from_numpy(label).long()).numpy())
    # batches and tensors are accepted
    batch = torch.from_numpy(np.stack([label, label]))
    assert region_mask(batch, "boundary").shape == (2, 8, 8)
    assert set(REGIONS) == {"all", "boundary", "interior"}
    with pytest.raises(ValueError, match="unknown region"):
        region_mask(label, "edges")


def test_region_restricted_confusion_matrix():
    label = np.zeros((6, 6), np.int64)
    label[:, 3:] = 1
    pred = np.zeros_like(label)  # everything predicted 0: class-1 pixels are all wrong
    cm_b = confusion_matrix(label, pred, 15, mask=region_mask(label, "boundary"))
    cm_i = confusion_matrix(label, pred, 15, mask=region_mask(label, "interior"))
    cm_all = confusion_matrix(label, pred, 15)
    np.testing.assert_array_equal(cm_b + cm_i, cm_all)
    assert cm_b[0, 0] == 6 and cm_b[1, 0] == 6      # columns 2 and 3
    assert cm_i[0, 0] == 12 and cm_i[1, 0] == 12    # columns 0-1 and 4-5
