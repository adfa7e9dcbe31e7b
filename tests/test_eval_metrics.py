"""Confusion matrix, mIoU protocols, pixel accuracy and depth metrics (the all-reduce path is
tested end to end with two gloo processes in test_eval_evaluate.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cordaseg.data.labels import IGNORE_INDEX, PROTOCOLS
from cordaseg.evaluation.metrics import (
    ConfusionMatrix,
    DepthMeter,
    iou_per_class,
    mean_iou,
    miou_protocols,
    pixel_accuracy,
    segmentation_scores,
)


def test_miou_of_fabricated_matrix_equals_hand_computation():
    # rows = ground truth, columns = prediction
    matrix = np.array([[3, 1, 0],
                       [2, 4, 0],
                       [0, 0, 0]])
    # class 0: TP 3, FP 2, FN 1 -> 3/6; class 1: TP 4, FP 1, FN 2 -> 4/7; class 2 never occurs.
    iou = iou_per_class(matrix)
    assert iou[0] == pytest.approx(0.5)
    assert iou[1] == pytest.approx(4 / 7)
    assert math.isnan(iou[2])
    assert mean_iou(matrix) == pytest.approx((0.5 + 4 / 7) / 2 * 100)
    assert pixel_accuracy(matrix) == pytest.approx(7 / 10 * 100)
    assert miou_protocols(matrix) == {3: pytest.approx((0.5 + 4 / 7) / 2 * 100)}


def test_update_builds_matrix_and_excludes_ignore_and_out_of_range_labels():
    label = torch.tensor([[0, 0, 1, IGNORE_INDEX], [2, 19, 250, 1]])
    prediction = torch.tensor([[0, 1, 1, 0], [2, 3, 4, 0]])
    cm = ConfusionMatrix(num_classes=19)
    cm.update(prediction, label)
    matrix = cm.numpy()
    assert matrix.sum() == 5  # 255, 19 and 250 are not counted
    assert matrix[0, 0] == 1 and matrix[0, 1] == 1 and matrix[1, 1] == 1 and matrix[2, 2] == 1 and matrix[1, 0] == 1


def test_perfect_predictions_give_100_under_every_protocol():
    rng = np.random.default_rng(0)
    label = torch.from_numpy(rng.integers(0, 19, size=(2, 16, 16)))
    label[0, :2] = IGNORE_INDEX
    prediction = label.clone()
    prediction[label == IGNORE_INDEX] = 3  # whatever is predicted on ignore pixels does not count
    cm = ConfusionMatrix()
    cm.update(prediction, label)
    scores = segmentation_scores(cm.numpy())
    assert scores.miou == {19: 100.0, 16: 100.0, 13: 100.0}
    assert scores.pixel_accuracy == 100.0


def test_16_and_13_class_protocols_drop_exactly_the_right_classes():
    matrix = np.zeros((19, 19), dtype=np.int64)
    # Each class gets a distinct IoU: TP = 10, FN = c (predicted as the next class).
    for c in range(19):
        matrix[c, c] = 10
        matrix[c, (c + 1) % 19] += c
    iou = iou_per_class(matrix)
    dropped16 = {9, 14, 16}  # terrain, truck, train
    dropped13 = dropped16 | {3, 4, 5}  # also wall, fence, pole
    assert set(range(19)) - set(PROTOCOLS[16]) == dropped16
    assert set(range(19)) - set(PROTOCOLS[13]) == dropped13
    expected16 = np.mean([iou[c] for c in range(19) if c not in dropped16]) * 100
    expected13 = np.mean([iou[c] for c in range(19) if c not in dropped13]) * 100
    result = miou_protocols(matrix)
    assert result[16] == pytest.approx(expected16)
    assert result[13] == pytest.approx(expected13)
    assert result[19] == pytest.approx(iou.mean() * 100)
    assert len({round(v, 6) for v in result.values()}) == 3


def test_depth_metrics_match_direct_formulas_and_skip_invalid():
    target = torch.tensor([[2.0, 4.0, 1.0, 10.0]])
    prediction = torch.tensor([[2.2, 3.0, 7.0, 10.0]])
    meter = DepthMeter()
    meter.update(prediction, target)
    out = meter.compute()
    pred, gt = np.array([2.2, 3.0, 10.0]), np.array([2.0, 4.0, 10.0])  # the 1.0 pixel is invalid
    assert out["pixels"] == 3
    assert out["abs_rel"] == pytest.approx(np.mean(np.abs(pred - gt) / gt))
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean((pred - gt) ** 2)))
    assert out["delta1"] == pytest.approx(2 / 3 * 100)
