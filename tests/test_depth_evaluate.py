"""Depth evaluation: AbsRel, RMSE and delta < 1.25 against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from cordaseg.depth.evaluate import DepthErrors, depth_errors


def test_depth_errors_hand_values():
    truth = np.array([[2.0, 4.0, 10.0, np.inf, 100.0]])  # inf (sky) and 100 m (> max_depth) are ignored
    prediction = np.array([[2.0, 6.0, 8.0, 5.0, 5.0]])
    summary = depth_errors(prediction, truth, max_depth=80.0).summary()
    assert summary["pixels"] == 3
    assert summary["abs_rel"] == pytest.approx((0 + 2 / 4 + 2 / 10) / 3)
    assert summary["rmse"] == pytest.approx(np.sqrt((0 + 4 + 4) / 3))
    assert summary["delta1"] == pytest.approx(1 / 3)  # ratios 1, 1.5, 1.25: only the first is below 1.25
    # median scaling: prediction * median(truth) / median(prediction) = [4/3, 4, 16/3]
    scaled = depth_errors(prediction * 3, truth, median_scaling=True).summary()
    assert scaled["abs_rel"] == pytest.approx(((2 - 4 / 3) / 2 + 0 + (10 - 16 / 3) / 10) / 3)
    assert scaled == pytest.approx(depth_errors(prediction, truth, median_scaling=True).summary())


def test_errors_accumulate_and_clip():
    total = DepthErrors()
    total.add(depth_errors(np.array([[1e6]]), np.array([[50.0]]), max_depth=80.0))  # clipped to 80
    total.add(depth_errors(np.array([[50.0]]), np.array([[50.0]])))
    assert total.summary()["abs_rel"] == pytest.approx((30 / 50) / 2)
    assert DepthErrors().summary()["pixels"] == 0
    with pytest.raises(ValueError, match="shape"):
        depth_errors(np.ones((2, 2)), np.ones((2, 3)))
