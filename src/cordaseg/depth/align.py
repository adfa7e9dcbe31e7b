"""Turning a depth model's raw output into metric depth: scale, shift and stereo calibration.

Two kinds of raw output (see the README's depth section):

- **depth** (a stereo-trained checkpoint, a metric model such as ZoeDepth or Depth Anything
  metric, or a monocular checkpoint known up to one factor): ``Z = scale * raw``;
- **disparity** (relative, affine-invariant models: MiDaS / DPT and Depth Anything are trained
  with a scale-and-shift-invariant loss, Ranftl et al., "Towards Robust Monocular Depth
  Estimation", TPAMI 2020), where inverse depth is an unknown affine function of the output:
  ``1 / Z = scale * raw + shift``.

The scale and shift of relative disparity come from a stereo pair: OpenCV's semi-global matcher
(Hirschmueller, "Stereo Processing by Semiglobal Matching and Mutual Information", TPAMI 2008)
gives pixel disparity ``d`` on the pixels it matches confidently, ``1 / Z = d / (fx * baseline)``
there, and :func:`fit_scale_shift` fits the two numbers by least squares (with one refit without
outliers, since a few wrong matches would otherwise pull the fit).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cordaseg.data import formats

# The farthest depth written: relative disparity at or below zero (sky) means "very far", not
# "unknown". 655.34 m is the farthest depth every encoding still decodes as valid (the stereo
# decode maps 655.35 m to exactly the invalid 1.0).
FAR_DEPTH_M = formats.STEREO_MAX_DEPTH_M - 0.01
# The matcher runs at most at this width (Cityscapes frames are matched at half resolution).
STEREO_MATCH_WIDTH = 1024
# Smallest disparity (pixels at the matching width) trusted: below, depth is too far to measure.
STEREO_MIN_DISPARITY_PX = 0.5
# A frame is aligned with its own stereo fit when at least this fraction of its pixels matched.
MIN_STEREO_FRACTION = 0.05


@dataclass(frozen=True)
class Alignment:
    """How raw model output becomes depth in metres (see the module docstring)."""

    kind: str  # "depth": Z = scale * raw; "disparity": 1 / Z = scale * raw + shift
    scale: float
    shift: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("depth", "disparity"):
            raise ValueError(f"alignment kind must be 'depth' or 'disparity', got {self.kind!r}")

    def depth_m(self, raw: np.ndarray) -> np.ndarray:
        """(H, W) raw output -> (H, W) float64 metres; disparity at or below ``1 / FAR_DEPTH_M``
        after alignment becomes ``FAR_DEPTH_M``; NaN stays NaN (written as invalid)."""
        raw = np.asarray(raw, dtype=np.float64)
        if self.kind == "depth":
            return self.scale * raw
        inverse = self.scale * raw + self.shift  # 1/m
        return 1.0 / np.maximum(inverse, 1.0 / FAR_DEPTH_M)


def fit_scale_shift(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None,
                    outlier_sigmas: float = 3.0) -> tuple[float, float]:
    """Least-squares ``(scale, shift)`` with ``target ~ scale * prediction + shift`` over ``mask``.

    After a first fit, pixels whose residual exceeds ``outlier_sigmas`` robust standard deviations
    (1.4826 * median absolute residual) are dropped and the fit is redone, if at least half remain.
    Raises ``ValueError`` when fewer than two distinct prediction values are usable.
    """
    prediction = np.asarray(prediction, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    usable = np.isfinite(prediction) & np.isfinite(target)
    if mask is not None:
        usable &= np.asarray(mask, dtype=bool)
    p, t = prediction[usable], target[usable]
    scale, shift = _line_fit(p, t)
    residual = np.abs(t - (scale * p + shift))
    keep = residual <= outlier_sigmas * 1.4826 * np.median(residual)
    if keep.sum() >= max(2, p.size // 2) and not keep.all():
        try:
            scale, shift = _line_fit(p[keep], t[keep])
        except ValueError:
            pass  # the inliers are degenerate (all one value): keep the first fit
    return scale, shift


def _line_fit(p: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    if p.size < 2:
        raise ValueError(f"need at least 2 pixels to fit a scale and shift, got {p.size}")
    p_mean, t_mean = p.mean(), t.mean()
    p_var = np.mean((p - p_mean) ** 2)
    if not p_var > 0:
        raise ValueError("the prediction is constant over the fitted pixels")
    scale = np.mean((p - p_mean) * (t - t_mean)) / p_var
    return float(scale), float(t_mean - scale * p_mean)


def stereo_inverse_depth(left_rgb: np.ndarray, right_rgb: np.ndarray, fx: float, baseline: float,
                         match_width: int = STEREO_MATCH_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """Inverse depth (1/m) of the left view of a rectified pair and the mask of confident matches.

    ``left_rgb``, ``right_rgb``: (H, W, 3) uint8; ``fx`` in pixels of that size, ``baseline`` in
    metres. The matcher runs at ``match_width`` at most; a match is confident when it passes the
    matcher's uniqueness and left-right consistency checks, lies right of the band where no match
    is possible, and its disparity is at least ``STEREO_MIN_DISPARITY_PX``. Returns two (H, W)
    arrays: float64 inverse depth (0 where not confident) and bool.
    """
    h, w = left_rgb.shape[:2]
    if right_rgb.shape[:2] != (h, w):
        raise ValueError(f"stereo pair of different sizes: {left_rgb.shape[:2]} and {right_rgb.shape[:2]}")
    factor = min(1.0, match_width / w)
    size = (max(16, round(w * factor)), max(8, round(h * factor)))  # (W, H) at matching resolution
    left_grey = cv2.cvtColor(np.ascontiguousarray(left_rgb), cv2.COLOR_RGB2GRAY)
    right_grey = cv2.cvtColor(np.ascontiguousarray(right_rgb), cv2.COLOR_RGB2GRAY)
    if size != (w, h):
        left_grey = cv2.resize(left_grey, size, interpolation=cv2.INTER_AREA)
        right_grey = cv2.resize(right_grey, size, interpolation=cv2.INTER_AREA)
    num_disparities = 16 * max(1, int(np.ceil(size[0] / 8 / 16)))  # up to an eighth of the width
    block = 5
    matcher = cv2.StereoSGBM_create(
        minDisparity=0, numDisparities=num_disparities, blockSize=block, P1=8 * block * block,
        P2=32 * block * block, disp12MaxDiff=1, uniquenessRatio=10, speckleWindowSize=50, speckleRange=2,
        mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)
    disparity = matcher.compute(left_grey, right_grey).astype(np.float64) / 16.0  # fixed point, 4 bits
    confident = disparity >= STEREO_MIN_DISPARITY_PX
    confident[:, :num_disparities] = False
    scale_x = size[0] / w  # matching-resolution pixels per full-resolution pixel
    inverse = np.where(confident, disparity / (scale_x * fx * baseline), 0.0)
    if size != (w, h):
        inverse = cv2.resize(inverse, (w, h), interpolation=cv2.INTER_NEAREST)
        confident = cv2.resize(confident.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return inverse, confident
