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

Without a stereo pair, a known camera height fixes them too (:func:`fit_ground_scale_shift`): the
lower middle of a street image is mostly road, and a flat road seen from a camera at height ``h``
has a known inverse depth per image row (:meth:`GroundCamera.inverse_depth`), which the disparity
of those pixels is fitted to with a trimmed least-squares fit (cars and pedestrians on the road are
outliers).
"""

from __future__ import annotations

import warnings
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
# Camera-height alignment: the likely-ground region is the GROUND_BAND of the image rows just above a
# bottom margin (the ego vehicle's bonnet), in the central GROUND_COLUMNS of the columns.
GROUND_BAND = 0.25
GROUND_COLUMNS = 0.5
# Ground rows whose plane depth exceeds this are left out: near the horizon a small pitch or
# height error is a large depth error.
MAX_GROUND_FIT_DEPTH_M = 50.0
# The trimmed fit keeps this fraction of the ground pixels, those with the smallest residuals.
GROUND_KEEP_FRACTION = 0.8
# A frame is aligned with its own ground fit when at least MIN_GROUND_AGREEMENT of its ground
# pixels lie within GROUND_TOLERANCE (relative) of the plane's inverse depth after the fit.
GROUND_TOLERANCE = 0.1
MIN_GROUND_AGREEMENT = 0.5


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


@dataclass(frozen=True)
class GroundCamera:
    """A camera above a flat road: focal length ``fy`` and principal row ``v0`` in pixels (pixel
    centres at integer coordinates) of an image ``rows`` high, ``height_m`` above the road and
    pitched down by ``pitch`` radians (Cityscapes' ``extrinsic.pitch`` convention; roll ignored)."""

    fy: float
    v0: float
    height_m: float
    pitch: float = 0.0
    rows: int | None = None  # image height the intrinsics are given for (None: any image they are used with)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.fy) and self.fy > 0):
            raise ValueError(f"fy must be a positive number of pixels, got {self.fy}")
        if not (np.isfinite(self.height_m) and self.height_m > 0):
            raise ValueError(f"the camera height must be positive metres, got {self.height_m}")
        if not (np.isfinite(self.v0) and np.isfinite(self.pitch) and abs(self.pitch) < np.pi / 2):
            raise ValueError(f"v0 must be finite and the pitch within +-90 degrees, got v0={self.v0}, "
                             f"pitch={self.pitch}")

    def at_rows(self, rows: int) -> tuple[float, float]:
        """``(fy, v0)`` for the image resized to ``rows`` high: ``fy * k`` and ``(v0 + 0.5) * k - 0.5``
        with ``k = rows / self.rows`` (the pixel-centre convention)."""
        if self.rows is None or rows == self.rows:
            return self.fy, self.v0
        k = rows / self.rows
        return self.fy * k, (self.v0 + 0.5) * k - 0.5

    def inverse_depth(self, rows: int) -> np.ndarray:
        """(rows,) float64 inverse depth (1/m) of the road seen at each image row of an image
        ``rows`` high; at or below zero at and above the horizon, where no ground is seen.

        ``Z = fy * h / ((v - v0) * cos(pitch) + fy * sin(pitch))``: the ray of row ``v`` runs along
        ``(., (v - v0) / fy, 1)`` per unit depth ``Z`` (camera y down, z forward), the road's downward
        normal is ``(0, cos(pitch), sin(pitch))`` in camera coordinates, and a road point lies ``h``
        along it, so ``Z * ((v - v0) / fy * cos(pitch) + sin(pitch)) = h``. At zero pitch
        ``Z = fy * h / (v - v0)``.
        """
        fy, v0 = self.at_rows(rows)
        v = np.arange(rows, dtype=np.float64)
        return ((v - v0) * np.cos(self.pitch) + fy * np.sin(self.pitch)) / (fy * self.height_m)


def ground_region(shape: tuple[int, int], band: float = GROUND_BAND, margin: float = 0.0,
                  columns: float = GROUND_COLUMNS) -> tuple[slice, slice]:
    """(rows, columns) slices of the likely-ground region of an (H, W) image: the ``band`` of the
    rows (fractions of H) above a bottom ``margin``, in the central ``columns`` fraction of W."""
    if not 0.0 < band <= 1.0:
        raise ValueError(f"the ground band must be a fraction of the rows in (0, 1], got {band}")
    if not 0.0 <= margin < 1.0 or band + margin > 1.0 + 1e-9:
        raise ValueError(f"the bottom margin must be in [0, 1) and leave room for the band, got margin {margin} "
                         f"with band {band}")
    h, w = shape
    bottom = int(round(h * (1.0 - margin)))
    top = min(int(round(h * (1.0 - margin - band))), bottom - 1)
    side = int(round(w * (1.0 - columns) / 2.0))
    return slice(max(0, top), max(1, bottom)), slice(side, max(side + 1, w - side))


def ground_samples(raw: np.ndarray, camera: GroundCamera, band: float = GROUND_BAND, margin: float = 0.0,
                   max_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The raw output of the likely-ground pixels of one (H, W) frame and the road's inverse depth
    there: ``(p, target)`` of shapes (R, C) and (R,), one row per image row of the region that sees
    the road nearer than ``MAX_GROUND_FIT_DEPTH_M`` (R may be 0); columns are subsampled regularly
    to keep at most ``max_pixels``."""
    raw = np.asarray(raw, dtype=np.float64)
    rows, cols = ground_region(raw.shape, band, margin)
    target = camera.inverse_depth(raw.shape[0])[rows]
    near = target >= 1.0 / MAX_GROUND_FIT_DEPTH_M
    p = raw[rows, cols][near]
    if max_pixels is not None and p.size > max_pixels:
        p = p[:, :: int(np.ceil(p.size / max_pixels))]
    return p, target[near]


def fit_ground_scale_shift(samples: list[tuple[np.ndarray, np.ndarray]],
                           keep_fraction: float = GROUND_KEEP_FRACTION, max_steps: int = 20) -> tuple[float, float]:
    """``(scale, shift)`` of ``1 / Z = scale * p + shift`` fitted to the road's inverse depth over the
    ground samples of one or more frames (:func:`ground_samples`).

    Robust in two steps: a first line through the per-row medians of ``p`` (a car or a shadow on
    part of a row does not move its median), then trimmed least squares: the ``keep_fraction`` of
    the pixels with the smallest residuals are refitted, and the selection redone, until it no
    longer changes (at most ``max_steps`` times). Raises ``ValueError`` when fewer than two rows
    with distinct disparity are usable.
    """
    samples = [(np.asarray(p, dtype=np.float64), np.asarray(t, dtype=np.float64)) for p, t in samples]
    samples = [(p, t) for p, t in samples if p.size]
    if not samples:
        raise ValueError("no ground pixels to fit (no image row of the region sees the road below the horizon)")
    p = np.concatenate([p.ravel() for p, _ in samples])
    t = np.concatenate([np.repeat(t, p.shape[1]) for p, t in samples])
    finite = np.isfinite(p) & np.isfinite(t)
    p, t = p[finite], t[finite]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows with no finite output: NaN, dropped below
        row_p = np.concatenate([np.nanmedian(p_rows, axis=1) for p_rows, _ in samples])
    row_t = np.concatenate([t_rows for _, t_rows in samples])
    rows_ok = np.isfinite(row_p)
    try:
        scale, shift = _line_fit(row_p[rows_ok], row_t[rows_ok])
    except ValueError:
        scale, shift = _line_fit(p, t)  # too few distinct rows: start from all pixels
    n_keep = max(2, int(np.ceil(keep_fraction * p.size)))
    keep = None
    for _ in range(max_steps):
        residual = np.abs(t - (scale * p + shift))
        if n_keep >= p.size:
            chosen = np.ones(p.size, dtype=bool)
        else:
            chosen = residual <= np.partition(residual, n_keep - 1)[n_keep - 1]
        if keep is not None and np.array_equal(chosen, keep):
            break
        keep = chosen
        try:
            scale, shift = _line_fit(p[keep], t[keep])
        except ValueError:
            break  # the kept pixels are degenerate (one disparity value): keep the previous line
    return scale, shift


def ground_agreement(samples: tuple[np.ndarray, np.ndarray], scale: float, shift: float,
                     tolerance: float = GROUND_TOLERANCE) -> float:
    """Fraction of one frame's ground pixels whose aligned inverse depth is within ``tolerance``
    (relative) of the road's."""
    p, t = samples
    if not p.size:
        return 0.0
    fitted = scale * p + shift
    return float(np.mean(np.abs(fitted - t[:, None]) <= tolerance * t[:, None]))
