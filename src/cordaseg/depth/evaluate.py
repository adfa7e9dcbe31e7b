"""Evaluating self-supervised depth against ground truth (docs/method.md, "Self-supervised depth"; Eigen et al. metrics).

:func:`depth_errors` gives AbsRel, RMSE and delta < 1.25 over the pixels with valid ground truth
in metres, optionally after per-image median scaling (the usual protocol for scale-free monocular
depth). :func:`evaluate_on_frames` runs a depth checkpoint over (image, depth) pairs, e.g. frames
rendered by the synthetic world, whose metric depth is the ground truth.
:func:`compare_depth_trees` scores the depth files of one tree against another's (``cordaseg depth
check --reference``, ``benchmarks/compare_depth_trees.py``), after a stated alignment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cordaseg.depth.align import Alignment, fit_scale_shift
from cordaseg.depth.export import export_jobs, predict_depth_m, read_depth_m
from cordaseg.errors import DataError


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
                 median_scaling: bool = False, clip_prediction: bool = True) -> DepthErrors:
    """Error sums of one depth map over pixels with ``min_depth < truth < max_depth`` (finite).

    Predictions are clipped to [min_depth, max_depth] (unless ``clip_prediction`` is False);
    ``median_scaling`` first multiplies them by ``median(truth) / median(prediction)`` over those pixels.
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
    if clip_prediction:
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


TREE_ALIGNMENTS = ("none", "median", "scale-shift")


@dataclass
class TreeComparison:
    """Errors of one tree's depth files against another's, per alignment."""

    frames: int
    errors: dict[str, DepthErrors] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """One line per alignment: AbsRel, RMSE (metres), delta < 1.25 and the pixels scored."""
        lines = []
        for alignment, errors in self.errors.items():
            s = errors.summary()
            lines.append(f"{alignment:<12} AbsRel {s['abs_rel']:.3f}, RMSE {s['rmse']:.2f} m, "
                         f"delta<1.25 {s['delta1']:.3f} ({s['pixels']} pixels)")
        return lines


def _aligned(alignment: str, predicted_m: np.ndarray, truth_m: np.ndarray, max_depth: float) -> np.ndarray:
    """The prediction after ``alignment``: "none" as is; "scale-shift": inverse depth fitted to the
    reference's by least squares per frame over the scored pixels (the alignment of relative
    disparity). "median" is applied by :func:`depth_errors` itself."""
    if alignment != "scale-shift":
        return predicted_m
    valid = np.isfinite(predicted_m) & (predicted_m > 0) & (truth_m > 0.1) & (truth_m < max_depth)
    try:
        scale, shift = fit_scale_shift(1.0 / predicted_m, 1.0 / truth_m, valid)
    except ValueError:
        return predicted_m
    return Alignment("disparity", scale, shift).depth_m(1.0 / predicted_m)


def compare_depth_trees(predicted_root: str | Path, reference_root: str | Path, fmt: str,
                        reference_fmt: str | None = None, split: str = "train", max_depth: float = 80.0,
                        frames: int = 0, alignments: Iterable[str] = TREE_ALIGNMENTS) -> TreeComparison:
    """AbsRel, RMSE and delta < 1.25 of the ``fmt`` depth files under ``predicted_root`` against the
    ``reference_fmt`` files (default ``fmt``) of the tree at ``reference_root``, frame by frame.

    Frames are the reference tree's images (the first ``frames``; 0: all) whose reference depth file
    exists; the predicted tree needs only its depth files. Scored pixels: reference depth valid and
    in [0.1, ``max_depth``) m, prediction valid; predictions are not clipped. Alignments: "none"
    (metric), "median" (per-frame median scaling, for scale-free depth) and "scale-shift" (per-frame
    least squares of inverse depth, for relative disparity).
    """
    reference_fmt = reference_fmt or fmt
    alignments = tuple(alignments)
    for alignment in alignments:
        if alignment not in TREE_ALIGNMENTS:
            raise ValueError(f"alignment must be one of {TREE_ALIGNMENTS}, got {alignment!r}")
    predicted_root, reference_root = Path(predicted_root), Path(reference_root)
    references = [job.output for job in export_jobs(reference_root, reference_fmt, split=split)]
    predictions = [job.output for job in export_jobs(reference_root, fmt, predicted_root, split=split)]
    pairs = [(p, r) for p, r in zip(predictions, references) if r.is_file()]
    if frames:
        pairs = pairs[:frames]
    if not pairs:
        raise DataError(f"{reference_root}: no {reference_fmt} depth files to compare with")
    comparison = TreeComparison(len(pairs), {alignment: DepthErrors() for alignment in alignments})
    for predicted_path, reference_path in pairs:
        if not predicted_path.is_file():
            raise DataError(f"{predicted_path}: missing (the reference tree has {reference_path})")
        truth, predicted = read_depth_m(reference_path, reference_fmt), read_depth_m(predicted_path, fmt)
        if truth.shape != predicted.shape:
            raise DataError(f"{predicted_path}: {predicted.shape[1]}x{predicted.shape[0]} depth, the reference "
                            f"{reference_path} is {truth.shape[1]}x{truth.shape[0]}")
        truth = np.where(np.isfinite(predicted), truth, np.nan)  # score only pixels with a prediction
        for alignment in alignments:
            comparison.errors[alignment].add(depth_errors(
                _aligned(alignment, predicted, truth, max_depth), truth, max_depth=max_depth,
                median_scaling=alignment == "median", clip_prediction=False))
    return comparison
