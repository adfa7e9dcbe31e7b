"""Evaluating self-supervised depth against ground truth (spec section 8; Eigen et al. metrics).

:func:`depth_errors` gives AbsRel, RMSE and delta < 1.25 over the pixels with valid ground truth
in metres, optionally after per-image median scaling (the usual protocol for scale-free monocular
depth). :func:`evaluate_on_frames` runs a depth checkpoint over (image, depth) pairs, e.g. frames
rendered by the synthetic world, whose metric depth is the ground truth.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from cordaseg.depth.export import predict_depth_m


@dataclass
class DepthErrors:
    """Sums of per-pixel errors; :meth:`summary` averages them."""

    abs_rel: float = 0.0
    squared: float = 0.0
    delta1: float = 0.0
    pixels: int = 0

    def add(self, other: DepthErrors) -> None:
        self.abs_rel += other.abs_rel
        self.squared += other.squared
        self.delta1 += other.delta1
        self.pixels += other.pixels

    def summary(self) -> dict[str, float]:
        n = max(self.pixels, 1)
        return {"abs_rel": self.abs_rel / n, "rmse": float(np.sqrt(self.squared / n)),
                "delta1": self.delta1 / n, "pixels": self.pixels}


def depth_errors(prediction_m: np.ndarray, truth_m: np.ndarray, min_depth: float = 0.1, max_depth: float = 80.0,
                 median_scaling: bool = False) -> DepthErrors:
    """Error sums of one depth map over pixels with ``min_depth < truth < max_depth`` (finite).

    Predictions are clipped to [min_depth, max_depth]; ``median_scaling`` first multiplies them by
    ``median(truth) / median(prediction)`` over those pixels.
    """
    truth = np.asarray(truth_m, dtype=np.float64)
    prediction = np.asarray(prediction_m, dtype=np.float64)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} != ground truth shape {truth.shape}")
    valid = np.isfinite(truth) & (truth > min_depth) & (truth < max_depth)
    gt, pred = truth[valid], prediction[valid]
    if gt.size == 0:
        return DepthErrors()
    if median_scaling:
        pred = pred * (np.median(gt) / np.median(pred))
    pred = np.clip(pred, min_depth, max_depth)
    ratio = np.maximum(pred / gt, gt / pred)
    return DepthErrors(float(np.sum(np.abs(pred - gt) / gt)), float(np.sum((pred - gt) ** 2)),
                       float(np.sum(ratio < 1.25)), int(gt.size))


def evaluate_on_frames(net, frames: Iterable[tuple[np.ndarray, np.ndarray]], size: tuple[int, int],
                       device: torch.device | str = "cpu", scale: float = 1.0, max_depth: float = 80.0
                       ) -> dict[str, dict[str, float]]:
    """AbsRel / RMSE / delta1 of ``net`` on (uint8 RGB (H, W, 3), metric depth (H, W)) pairs:
    ``"metric"`` (predictions times ``scale``) and ``"median_scaled"``."""
    metric, scaled = DepthErrors(), DepthErrors()
    device = torch.device(device)
    for rgb, truth in frames:
        prediction = scale * predict_depth_m(net, np.asarray(rgb, dtype=np.float32) / 255.0, size, device)
        metric.add(depth_errors(prediction, truth, max_depth=max_depth))
        scaled.add(depth_errors(prediction, truth, max_depth=max_depth, median_scaling=True))
    return {"metric": metric.summary(), "median_scaled": scaled.summary()}
