"""Training-time geometry of the reference preprocessing (the paper's implementation details;
the reference code's ``data/gta5_dataset.py``, ``data/synthia_dataset.py`` and ``data/augmentations.py``).

A frame is resized to a target size (GTA5 / SYNTHIA: 1280x720; Cityscapes: half size), then a
random crop is taken (512x512 by default), with an optional scale jitter and horizontal flip.
Each modality has its own interpolation (images bicubic or bilinear, labels nearest, depth
bilinear or nearest) and its own resizing library, as in the reference:

- ``backend="pil"`` (images, labels, Cityscapes depth): resize-then-crop is computed in one step.
  Only the crop window is resampled, with PIL's ``box`` argument, which maps output pixels to the
  same source coordinates and uses the same filter taps as resizing the whole frame; nearest
  resampling is done with PIL's index arithmetic (:func:`_nearest_indices`). Labels (nearest) are
  exactly the crop of the fully resized frame. 8-bit bicubic images differ by at most one grey
  level on a few values (PIL's fixed-point passes round a window differently from the full
  frame): on generated street scenes at the real sizes, 0.015% of the values of 512x512 crops
  (GTA5 1914x1052 -> 1280x720) and 0.008% (SYNTHIA 1280x760 -> 1280x720), over 3 frames x 10
  crops each of ``python benchmarks/resize_parity.py``. PIL's filters are antialiased when
  downscaling.
- ``backend="opencv"`` (GTA5 and SYNTHIA depth): the whole frame is converted and resized with
  ``cv2.resize`` (``INTER_LINEAR`` without antialiasing, ``INTER_NEAREST`` with OpenCV's source
  rows), then cropped, exactly as the reference. PIL's filters would give other values (its
  bilinear averages more source pixels when shrinking, its nearest picks other rows of a
  760-row frame for half of 720 output rows) and so other depth targets and other invalid pixels.

Where the window extends past the resized frame (small frames, large crops), the rest is filled
with a padding value (ignore label, invalid depth, mean colour).

All randomness comes from a ``numpy.random.Generator`` the caller seeds from (seed, epoch, index).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from PIL import Image

# Interpolation names used in configs -> PIL filters.
RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
# The same names -> OpenCV flags (no antialiasing; nearest takes source pixel floor(x * scale)).
CV2_INTERPOLATION: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
}
Backend = Literal["pil", "opencv"]


@dataclass(frozen=True)
class Geometry:
    """Where one training sample comes from, in the coordinates of the resized frame."""

    source_size: tuple[int, int]  # (W, H) of the file
    target_size: tuple[int, int]  # (W, H) after the resize
    window: tuple[int, int, int, int]  # (x0, y0, width, height) of the crop; may exceed the target
    flip: bool  # mirror left-right after cropping


def resized_size(
    source_size: tuple[int, int], resize: tuple[int, int] | None, resize_scale: float | None
) -> tuple[int, int]:
    """(W, H) after the resize: a fixed ``resize``, else ``resize_scale`` times the source size."""
    if resize is not None:
        return resize
    scale = 1.0 if resize_scale is None else resize_scale
    width, height = source_size
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def sample_geometry(
    rng: np.random.Generator,
    source_size: tuple[int, int],
    target_size: tuple[int, int],
    crop: tuple[int, int] | None,
    scale_range: tuple[float, float] = (1.0, 1.0),
    flip: bool = False,
) -> Geometry:
    """Draw the scale jitter, the crop position and the flip for one sample."""
    width, height = target_size
    low, high = scale_range
    if (low, high) != (1.0, 1.0):
        scale = rng.uniform(low, high)
        width, height = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
    window = (0, 0, width, height) if crop is None else draw_window(rng, (width, height), crop)
    mirrored = bool(rng.random() < 0.5) if flip else False
    return Geometry(tuple(source_size), (width, height), window, mirrored)


def draw_window(rng: np.random.Generator, size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int, int, int]:
    """A uniformly placed crop window (x0, y0, width, height) in a frame of ``size`` (W, H)."""
    width, height = size
    crop_w, crop_h = crop
    # A crop larger than the frame places the frame at a random offset inside the padded crop.
    x0 = int(rng.integers(0, width - crop_w + 1)) if width >= crop_w else -int(rng.integers(0, crop_w - width + 1))
    y0 = int(rng.integers(0, height - crop_h + 1)) if height >= crop_h else -int(rng.integers(0, crop_h - height + 1))
    return (x0, y0, crop_w, crop_h)


def dominated(label: np.ndarray, max_ratio: float, ignore: int) -> bool:
    """mmseg's ``RandomCrop`` test of a crop's labels (``cat_max_ratio``): True when the crop shows
    fewer than two classes, or one class covers ``max_ratio`` or more of its labelled pixels
    (``ignore`` pixels not counted)."""
    counts = np.bincount(label.ravel(), minlength=ignore + 1)
    counts[ignore] = 0
    counts = counts[counts > 0]
    return len(counts) < 2 or counts.max() / counts.sum() >= max_ratio


def _check_resamplable(array: np.ndarray) -> None:
    """Both backends resample (H, W) uint8 / float32 and (H, W, 3) uint8 arrays."""
    supported = (array.dtype == np.uint8 and (array.ndim == 2 or array.shape[2:] == (3,))) or (
        array.dtype == np.float32 and array.ndim == 2)
    if not supported:
        raise ValueError(f"cannot resample arrays of {array.dtype} with shape {array.shape}")


def _to_pil(array: np.ndarray) -> Image.Image:
    """(H, W) uint8 -> "L", (H, W) float32 -> "F", (H, W, 3) uint8 -> "RGB" (any channel order)."""
    _check_resamplable(array)
    return Image.fromarray(np.ascontiguousarray(array))


def _nearest_indices(source: int, target: int) -> np.ndarray:
    """Source index of each target pixel as PIL's nearest filter computes it: the pixel centre
    ``(x + 0.5) * scale`` accumulated step by step (which decides exact ties), then floored."""
    scale = source / target
    steps = np.full(target, scale)
    steps[0] = 0.5 * scale
    return np.minimum(np.floor(np.cumsum(steps)).astype(np.intp), source - 1)


# Half-width of PIL's filters in source pixels at scale 1 (widened by the scale when downscaling).
_FILTER_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


def _visible(geometry: Geometry) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the part of the crop window inside the resized frame."""
    target_w, target_h = geometry.target_size
    x0, y0, crop_w, crop_h = geometry.window
    return max(x0, 0), max(y0, 0), min(x0 + crop_w, target_w), min(y0 + crop_h, target_h)


def source_region(geometry: Geometry, resample: str) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the source pixels that the crop reads, filter taps included.

    Decoding and converting only this region (about a quarter of a GTA5 frame for a 512x512
    crop of the 1280x720 resize) gives the same output as converting the whole frame.
    """
    source_w, source_h = geometry.source_size
    target_w, target_h = geometry.target_size
    vx0, vy0, vx1, vy1 = _visible(geometry)
    if resample == "nearest":
        cols = _nearest_indices(source_w, target_w)[vx0:vx1]
        rows = _nearest_indices(source_h, target_h)[vy0:vy1]
        return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    bounds = []
    for v0, v1, source, target in ((vx0, vx1, source_w, target_w), (vy0, vy1, source_h, target_h)):
        scale = source / target
        # One pixel beyond the filter support on each side, so no tap is clipped by the region.
        margin = _FILTER_SUPPORT[resample] * max(scale, 1.0) + 1.0
        bounds.append((max(0, int(np.floor(v0 * scale - margin))), min(source, int(np.ceil(v1 * scale + margin)))))
    (x0, x1), (y0, y1) = bounds
    return x0, y0, x1, y1


def _visible_pil(array: np.ndarray, geometry: Geometry, resample: str,
                 convert: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    """The visible part of the crop window, resampled with PIL from the source region it reads."""
    source_w, source_h = geometry.source_size
    target_w, target_h = geometry.target_size
    vx0, vy0, vx1, vy1 = _visible(geometry)
    sx0, sy0, sx1, sy1 = source_region(geometry, resample)
    region = array[sy0:sy1, sx0:sx1]
    if (vx0, vy0, vx1, vy1) == (0, 0, target_w, target_h) and (target_w, target_h) == (source_w, source_h):
        return region if convert is None else convert(region)
    if resample == "nearest":
        # Index arithmetic of PIL's nearest filter, computed for the whole frame and sliced, so
        # the crop equals the crop of the full resize exactly. ``convert`` works pixel by pixel,
        # so it runs on the picked pixels only (a quarter of the region when halving Cityscapes).
        rows = _nearest_indices(source_h, target_h)[vy0:vy1] - sy0
        cols = _nearest_indices(source_w, target_w)[vx0:vx1] - sx0
        picked = region[rows][:, cols]  # rows, then columns: several times faster than one 2-D gather
        return picked if convert is None else convert(picked)
    if convert is not None:
        region = convert(region)
    scale_x, scale_y = source_w / target_w, source_h / target_h
    box = (vx0 * scale_x - sx0, vy0 * scale_y - sy0, vx1 * scale_x - sx0, vy1 * scale_y - sy0)
    # np.array, not np.asarray: PIL's buffer is read-only and torch needs writable memory.
    return np.array(_to_pil(region).resize((vx1 - vx0, vy1 - vy0), RESAMPLE[resample], box=box))


def _visible_opencv(array: np.ndarray, geometry: Geometry, resample: str,
                    convert: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    """The visible part of the crop window, cut from the whole frame converted then resized with
    ``cv2.resize``, the order of the reference (decode, resize, crop)."""
    vx0, vy0, vx1, vy1 = _visible(geometry)
    if resample == "nearest" and convert is not None:
        # Nearest copies source pixels, whatever their type, so resizing the stored values and
        # converting the crop gives the values of converting the frame first, for the crop only.
        if array.shape[1::-1] != geometry.target_size:
            array = cv2.resize(array, geometry.target_size, interpolation=cv2.INTER_NEAREST)
        frame = convert(array[vy0:vy1, vx0:vx1])
        _check_resamplable(frame)
        return frame
    frame = array if convert is None else convert(array)
    _check_resamplable(frame)
    if frame.shape[1::-1] != geometry.target_size:
        frame = cv2.resize(frame, geometry.target_size, interpolation=CV2_INTERPOLATION[resample])
    return frame[vy0:vy1, vx0:vx1]


def apply_geometry(
    array: np.ndarray,
    geometry: Geometry,
    resample: str,
    fill: float | tuple[float, ...],
    convert: Callable[[np.ndarray], np.ndarray] | None = None,
    backend: Backend = "pil",
) -> np.ndarray:
    """Resize ``array`` ((H, W[, C])) to the target size and crop the window, padding with ``fill``
    outside the frame; then flip if the geometry says so.

    ``convert`` (e.g. an ID lookup or a depth decoder) maps each source pixel on its own (so it
    may run on any subset of them) and is applied before resampling; the result must be (H, W)
    uint8 / float32 or (H, W, 3) uint8. With ``backend="pil"`` only the source region the crop
    reads is converted and resampled (nearest: only the pixels it picks); with
    ``backend="opencv"`` the whole frame is converted and resized with OpenCV, then cropped (see
    the module docstring; nearest: the stored values are resized and the crop converted, which
    gives the same values).
    """
    if backend not in ("pil", "opencv"):
        raise ValueError(f"backend must be 'pil' or 'opencv', got {backend!r}")
    if array.shape[:2] != geometry.source_size[::-1]:
        # A partner file of another size (a known GTA5 defect): resample it from its own size.
        geometry = Geometry((array.shape[1], array.shape[0]), geometry.target_size, geometry.window,
                            geometry.flip)
    x0, y0, crop_w, crop_h = geometry.window
    vx0, vy0, vx1, vy1 = _visible(geometry)
    visible = _visible_opencv if backend == "opencv" else _visible_pil
    inside = visible(array, geometry, resample, convert)
    if (vx0, vy0, vx1, vy1) == (x0, y0, x0 + crop_w, y0 + crop_h):
        out = inside
    else:
        out = np.full((crop_h, crop_w, *inside.shape[2:]), fill, dtype=inside.dtype)
        out[vy0 - y0: vy1 - y0, vx0 - x0: vx1 - x0] = inside
    if geometry.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def resize(array: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
    """Resize a whole (H, W[, 3]) array to ``size`` (W, H) with the named interpolation."""
    if array.shape[1::-1] == tuple(size):
        return array
    if resample == "nearest":
        rows = _nearest_indices(array.shape[0], size[1])
        cols = _nearest_indices(array.shape[1], size[0])
        return array[rows][:, cols]
    return np.array(_to_pil(array).resize(tuple(size), RESAMPLE[resample]))
