"""The statistics of the synthetic-shift benchmark against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from cordaseg.demo.stats import differences, gap_closed, paired_difference, t_interval

# Student's t quantiles from a printed table (two-sided 95%): df 4 -> 2.7764, df 2 -> 4.3027.
T_975_DF4 = 2.776445
T_975_DF2 = 4.302653


def test_paired_difference_by_hand():
    # CorDA - DACS over five seeds. mean = 2.25 / 5 = 0.45; deviations 0.23, -0.14, -0.12, 0.07,
    # -0.04; sum of squares 0.0934; s^2 = 0.0934 / 4 = 0.02335; s / sqrt(5) = 0.0683374.
    corda = [15.10, 13.82, 12.29, 14.02, 13.41]
    dacs = [14.42, 13.51, 11.96, 13.50, 13.00]
    interval = paired_difference(corda, dacs)
    assert interval.n == 5
    assert interval.mean == pytest.approx(0.45, abs=1e-12)
    half = T_975_DF4 * math.sqrt(0.0934 / 4) / math.sqrt(5)
    assert interval.half_width == pytest.approx(half, rel=1e-6)
    assert interval.half_width == pytest.approx(0.189735, abs=1e-6)
    assert (interval.low, interval.high) == pytest.approx((0.45 - half, 0.45 + half), rel=1e-6)
    assert interval.excludes_zero


def test_three_seeds_use_the_wider_quantile_and_can_include_zero():
    # mean 0.44; deviations 0.24, -0.13, -0.11; s^2 = 0.0866 / 2 = 0.0433.
    interval = t_interval([0.68, 0.31, 0.33])
    assert interval.mean == pytest.approx(0.44)
    assert interval.half_width == pytest.approx(T_975_DF2 * math.sqrt(0.0433) / math.sqrt(3), rel=1e-6)
    assert not interval.excludes_zero  # 0.44 +- 0.52


def test_missing_values_and_single_seeds():
    assert differences([1.0, None, 3.0], [0.5, 1.0, float("nan")])[0] == 0.5
    interval = t_interval([2.0, float("nan")])
    assert interval.n == 1 and interval.mean == 2.0 and math.isnan(interval.half_width)
    assert interval.format() == "2.00" and not interval.excludes_zero
    assert t_interval([]).n == 0
    with pytest.raises(ValueError, match="same seeds"):
        differences([1.0], [1.0, 2.0])


def test_gap_closed_by_hand():
    # seed 0: (12 - 5) / (35 - 5) = 7 / 30; seed 1: (10 - 6) / (26 - 6) = 0.2; seed 2: no gap.
    closed = gap_closed([12.0, 10.0, 9.0], [5.0, 6.0, 8.0], [35.0, 26.0, 8.0])
    assert closed[:2] == pytest.approx([7 / 30, 0.2])
    assert math.isnan(closed[2])
