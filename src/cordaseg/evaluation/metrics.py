"""Segmentation and depth metrics (docs/method.md, "Evaluation": mIoU on 19 / 16 / 13 classes).

The confusion matrix is accumulated on the device with one ``bincount`` per batch and summed
over processes with a single ``all_reduce``; everything else is computed from it on the host.
Rows are ground-truth classes, columns predicted classes. Ground-truth pixels with a value
outside ``[0, num_classes)`` (255 = ignore, the reference's 250, ...) are not counted.

The 16- and 13-class protocols select classes from the per-class IoU of the 19-class matrix
(as the paper and its reference code do), so a road pixel predicted as terrain still counts
against road under the 16-class protocol. A class that appears neither in the ground truth
nor in the predictions has an undefined IoU (NaN) and is left out of the mean, as in the
official Cityscapes scripts.

Depth metrics compare a depth head with the loader's depth value (docs/data-formats.md, "Depth
values", an inverse-depth-like quantity where exactly 1.0 marks invalid pixels) over valid pixels:
AbsRel = mean(|pred - gt| / gt), RMSE = sqrt(mean((pred - gt)^2)), delta1 = the fraction of
pixels with max(pred / gt, gt / pred) < 1.25. They are computed in that value space, not in
metres.

Depth-binned mIoU: one confusion matrix per range of ground-truth distance (default 0-10,
10-20, 20-40 and 40+ m), so a method's accuracy on near and far structure can be told apart
(the paper argues that depth helps most where the two domains' geometry differs). The loader's
value d' = 655.36 / (Z + 0.01) is turned back into metres Z; pixels without valid depth fall in
no range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cordaseg.data.formats import INVALID_DEPTH, INVERSE_DEPTH_OFFSET, INVERSE_DEPTH_SCALE
from cordaseg.data.labels import CLASS_NAMES, NUM_CLASSES, PROTOCOLS
from cordaseg.runtime.distributed import all_reduce_sum

# Lower edges (metres) of the depth ranges of the depth-binned mIoU; the last range is open.
DEFAULT_DEPTH_BINS = (0.0, 10.0, 20.0, 40.0)


class ConfusionMatrix:
    """A (C, C) int64 confusion matrix that lives on the device of the predictions."""

    def __init__(self, num_classes: int = NUM_CLASSES, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """Add a batch: ``prediction`` and ``label`` are integer tensors of the same shape.

        Predictions must be class indices in ``[0, C)`` (an argmax); labels outside that range
        are ignored. No host sync happens here.
        """
        if prediction.shape != label.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != label shape {tuple(label.shape)}")
        c = self.num_classes
        label = label.to(device=self.matrix.device, dtype=torch.int64).reshape(-1)
        prediction = prediction.to(device=self.matrix.device, dtype=torch.int64).reshape(-1)
        valid = (label >= 0) & (label < c)
        index = label[valid] * c + prediction[valid]  # (N,) flattened (gt, pred) cells
        self.matrix += torch.bincount(index, minlength=c * c).reshape(c, c)

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all processes (no-op without a process group); returns self."""
        all_reduce_sum(self.matrix)
        return self

    def numpy(self) -> np.ndarray:
        """The matrix as an int64 numpy array (a host sync)."""
        return self.matrix.cpu().numpy()


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """(C,) IoU = TP / (TP + FP + FN) of each class; NaN where the class never occurs."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, tp / np.maximum(denominator, 1), np.nan)


def mean_iou(matrix: np.ndarray, classes: Sequence[int] | None = None) -> float:
    """Mean IoU in percent over ``classes`` (all by default), skipping undefined classes."""
    iou = iou_per_class(matrix)
    if classes is not None:
        iou = iou[list(classes)]
    iou = iou[~np.isnan(iou)]
    return float(iou.mean() * 100.0) if iou.size else float("nan")


def miou_protocols(matrix: np.ndarray, protocols: dict[int, tuple[int, ...]] | None = None) -> dict[int, float]:
    """mIoU (percent) per protocol: {19: .., 16: .., 13: ..} for a 19-class matrix.

    The protocols are defined on the Cityscapes train IDs, so a matrix of another size gets
    one entry, its own class count, averaged over all its classes.
    """
    size = np.asarray(matrix).shape[0]
    if protocols is None:
        protocols = PROTOCOLS if size == NUM_CLASSES else {size: tuple(range(size))}
    return {name: mean_iou(matrix, classes) for name, classes in protocols.items()}


def pixel_accuracy(matrix: np.ndarray) -> float:
    """Fraction of counted pixels predicted correctly, in percent."""
    matrix = np.asarray(matrix, dtype=np.float64)
    total = matrix.sum()
    return float(np.trace(matrix) / total * 100.0) if total > 0 else float("nan")


class DepthMeter:
    """Running sums for AbsRel, RMSE and delta < 1.25 of one depth head, on the device."""

    def __init__(self, device: torch.device | str = "cpu"):
        # [sum |e| / gt, sum e^2, count(delta < 1.25), count(valid)], float64 so that sums
        # over 500 full-resolution images stay exact enough.
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch; ``prediction`` and ``target`` have the same shape (e.g. (B, H, W))."""
        if prediction.shape != target.shape:
            raise ValueError(f"depth prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        prediction = prediction.to(self.sums.device, torch.float64)
        target = target.to(self.sums.device, torch.float64)
        valid = (target != INVALID_DEPTH) & torch.isfinite(target) & (target > 0)
        pred = prediction[valid].clamp_min(1e-6)  # ratios need a positive prediction
        gt = target[valid]
        error = pred - gt
        ratio = torch.maximum(pred / gt, gt / pred)
        self.sums += torch.stack([
            (error.abs() / gt).sum(),
            (error * error).sum(),
            (ratio < 1.25).sum().to(torch.float64),
            torch.tensor(float(gt.numel()), dtype=torch.float64, device=self.sums.device),
        ])

    def all_reduce(self) -> DepthMeter:
        """Sum over all processes (no-op without a process group); returns self."""
        all_reduce_sum(self.sums)
        return self

    def compute(self) -> dict[str, float]:
        """{"abs_rel", "rmse", "delta1" (percent), "pixels"}; NaN without valid pixels."""
        abs_rel, squared, within, count = self.sums.cpu().tolist()
        if count == 0:
            return {"abs_rel": float("nan"), "rmse": float("nan"), "delta1": float("nan"), "pixels": 0}
        return {
            "abs_rel": abs_rel / count,
            "rmse": math.sqrt(squared / count),
            "delta1": within / count * 100.0,
            "pixels": int(count),
        }


def metres_from_depth_value(value: torch.Tensor) -> torch.Tensor:
    """The loader's depth value d' -> metres Z = 655.36 / d' - 0.01 (float64, the inverse of the
    decode in :mod:`cordaseg.data.formats`); NaN where d' marks no depth (exactly 1.0, not
    finite, or not positive)."""
    value = value.to(torch.float64)
    valid = (value != INVALID_DEPTH) & torch.isfinite(value) & (value > 0)
    metres = INVERSE_DEPTH_SCALE / torch.where(valid, value, torch.ones_like(value)) - INVERSE_DEPTH_OFFSET
    return torch.where(valid, metres, torch.full_like(metres, float("nan")))


def check_depth_bins(edges: Sequence[float]) -> tuple[float, ...]:
    """``edges`` as a tuple after checking they are finite, >= 0 and strictly increasing."""
    edges = tuple(float(e) for e in edges)
    if not edges:
        raise ValueError("depth bins: give at least one lower edge, e.g. 0,10,20,40")
    if any(not math.isfinite(e) or e < 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"depth bins: {list(edges)} must be finite, >= 0 and strictly increasing")
    return edges


def depth_bin_name(low: float, high: float | None) -> str:
    """'0-10 m', '40+ m'."""
    return f"{low:g}+ m" if high is None else f"{low:g}-{high:g} m"


class DepthBinnedConfusion:
    """One (C, C) confusion matrix per depth range, as a (K, C, C) int64 tensor on the device.

    ``edges`` are the K lower edges in metres; range k is [edges[k], edges[k + 1]) and the last
    one [edges[-1], inf). A pixel nearer than ``edges[0]`` or without valid depth is not counted.
    """

    def __init__(self, edges: Sequence[float] = DEFAULT_DEPTH_BINS, num_classes: int = NUM_CLASSES,
                 device: torch.device | str = "cpu"):
        self.edges = check_depth_bins(edges)
        self.num_classes = num_classes
        self.matrix = torch.zeros(len(self.edges), num_classes, num_classes, dtype=torch.int64, device=device)
        self._boundaries = torch.tensor(self.edges, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, label: torch.Tensor, depth_value: torch.Tensor) -> None:
        """Add a batch: predictions, labels and the loader's depth values of the same shape."""
        if not prediction.shape == label.shape == depth_value.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)}, label {tuple(label.shape)} and depth "
                             f"{tuple(depth_value.shape)} must have the same shape")
        c, device = self.num_classes, self.matrix.device
        metres = metres_from_depth_value(depth_value.to(device)).reshape(-1)
        # bucketize(right=True) counts the edges <= Z: 0 below the first edge, K for the open range.
        bin_index = torch.bucketize(metres, self._boundaries, right=True) - 1  # (N,); NaN is masked below
        label = label.to(device=device, dtype=torch.int64).reshape(-1)
        prediction = prediction.to(device=device, dtype=torch.int64).reshape(-1)
        valid = (label >= 0) & (label < c) & ~torch.isnan(metres) & (bin_index >= 0)
        index = (bin_index[valid] * c + label[valid]) * c + prediction[valid]  # (N,) flattened (bin, gt, pred)
        self.matrix += torch.bincount(index, minlength=self.matrix.numel()).reshape(self.matrix.shape)

    def all_reduce(self) -> DepthBinnedConfusion:
        """Sum over all processes (no-op without a process group); returns self."""
        all_reduce_sum(self.matrix)
        return self

    def numpy(self) -> np.ndarray:
        """(K, C, C) int64 (a host sync)."""
        return self.matrix.cpu().numpy()


@dataclass
class DepthBinScores:
    """Segmentation scores of the pixels whose ground-truth depth lies in one range."""

    low: float
    """Lower edge in metres (included)."""
    high: float | None
    """Upper edge in metres (excluded); None for the open last range."""
    pixels: int
    """Scored pixels in the range (labelled, with valid depth)."""
    iou: np.ndarray
    """(C,) per-class IoU in percent, NaN where undefined."""
    miou: dict[int, float]
    """Protocol (19, 16, 13) -> mIoU in percent (NaN without pixels)."""

    @property
    def name(self) -> str:
        return depth_bin_name(self.low, self.high)


def depth_bin_scores(matrices: np.ndarray, edges: Sequence[float]) -> list[DepthBinScores]:
    """Per-range scores of a (K, C, C) stack of confusion matrices with K lower ``edges``."""
    edges = tuple(float(e) for e in edges)
    out = []
    for k, matrix in enumerate(np.asarray(matrices, dtype=np.int64)):
        high = edges[k + 1] if k + 1 < len(edges) else None
        out.append(DepthBinScores(edges[k], high, int(matrix.sum()), iou_per_class(matrix) * 100.0,
                                  miou_protocols(matrix)))
    return out


@dataclass
class SegmentationScores:
    """Everything derived from one confusion matrix."""

    confusion: np.ndarray
    """(C, C) int64, rows = ground truth, columns = prediction."""
    iou: np.ndarray
    """(C,) per-class IoU in percent, NaN where undefined."""
    miou: dict[int, float]
    """Protocol (19, 16, 13) -> mIoU in percent."""
    pixel_accuracy: float
    """Correct / counted pixels, in percent."""
    class_names: tuple[str, ...]
    """Name of each row / column."""


def segmentation_scores(matrix: np.ndarray, class_names: Sequence[str] | None = None) -> SegmentationScores:
    """Per-class IoU, mIoU per protocol and pixel accuracy of a confusion matrix."""
    matrix = np.asarray(matrix, dtype=np.int64)
    size = matrix.shape[0]
    if class_names is None:
        class_names = CLASS_NAMES if size == NUM_CLASSES else tuple(f"class {i}" for i in range(size))
    return SegmentationScores(
        confusion=matrix,
        iou=iou_per_class(matrix) * 100.0,
        miou=miou_protocols(matrix),
        pixel_accuracy=pixel_accuracy(matrix),
        class_names=tuple(class_names),
    )
