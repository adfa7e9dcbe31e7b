"""Exporting depth as the depth files CorDA reads (README, "Datasets"), from the self-supervised
network of this package or from a pretrained depth model (:mod:`cordaseg.depth.pretrained`).

Four encodings, each written where the dataset loader looks for it, so ``cordaseg train`` reads
them with no other step:

- ``cityscapes-mono``: ``disparity/{split}/{city}/{id}_leftImg8bit.png`` of a Cityscapes tree
  (the loader's ``depth: mono``), uint16, decoded ``v / 256 + 1``;
- ``gta-disparity``: ``disparity/NNNNN.png`` of a GTA5 tree, uint16, decoded ``v / 256 + 1``;
- ``stereo-mat``: ``depth/{split}/{city}/{id}_depth_stereoscopic.mat`` of a Cityscapes tree
  (the loader's ``depth: stereo``, the paper's main setting), variable ``depth_map`` in metres;
- ``synthia-depth``: ``Depth/Depth/NNNNNNN.png`` of a SYNTHIA tree, uint16 centimetres in three
  equal channels, decoded ``655.36 / (v / 100 + 0.01)``.

How depth maps into them (one rule for all): a depth ``Z`` (metres) is the loader value
``655.36 / (Z + 0.01)``, the formula of the Cityscapes stereo decode. The ``.mat`` file stores
``Z`` itself (clipped to the decode's [0.1, 655.35]); the disparity PNGs store ``round((655.36 /
(Z + 0.01) - 1) * 256)``, clipped to [1, 65535] for valid pixels (0 is kept for invalid ones), so
the three files of one prediction decode to the same value up to the 1/256 quantisation. The
16-bit code covers 2.54 m to 652 m; nearer points read as 2.54 m (as in the synthetic world's GTA5
export). SYNTHIA centimetres are clipped to [10, 65534] for valid pixels; 65535 (which decodes to
exactly the invalid 1.0) marks invalid ones.

Scale (:class:`cordaseg.depth.align.Alignment` turns raw output into metres):

- A checkpoint trained with stereo (``stereo`` or ``mono+stereo``) and a metric pretrained model
  predict metres, written as is (times ``scale`` when one is given).
- A monocular checkpoint knows depth only up to one global factor; unless ``scale`` is given, the
  factor is chosen so that the median predicted depth over the first ``calibration_frames``
  frames is ``median_depth_m`` (default 10 m, street scenes). CorDA's use of depth is
  insensitive to that factor: the berHu threshold is relative to the largest error, and the
  adaptation-difficulty weight ``|D_src - D| / d`` is a ratio; the factor only has to keep the
  values inside the 16-bit range, which the median rule does.
- A relative pretrained model predicts disparity ``p`` with unknown scale and shift
  (``1 / Z = scale * p + shift``). Four ways to fix them: ``scale`` / ``shift`` given; the
  *median rule* (``align="median"``, the default for the scale-free disparity PNGs): shift 0
  (the disparity is taken as proportional to inverse depth) and the scale chosen as for a
  monocular checkpoint, so that the median of ``1 / p`` over the first frames is
  ``median_depth_m``; *stereo* (``align="stereo"``, the default for ``stereo-mat`` and
  ``synthia-depth``, which store metres): each Cityscapes frame's scale and shift are fitted by
  least squares to the inverse depth a stereo matcher measures on its ``rightImg8bit`` partner
  (:func:`cordaseg.depth.align.stereo_inverse_depth`), falling back to one fit over the first
  frames where a frame has too few confident matches; *camera height* (``align="camera-height"``,
  Cityscapes trees): each frame's scale and shift are fitted to the inverse depth of a flat road
  seen from the camera's height and pitch (:class:`cordaseg.depth.align.GroundCamera`, with
  ``fy``, ``v0`` and ``extrinsic.pitch`` of its ``camera/*.json``) over the lower middle of the
  image (:func:`cordaseg.depth.align.ground_region`), by a trimmed fit
  (:func:`cordaseg.depth.align.fit_ground_scale_shift`), falling back to one fit over the first
  frames where too few ground pixels agree with the frame's own fit. Disparity at or below zero
  (the sky) becomes the farthest depth every encoding keeps valid, 655.34 m.

Every pixel the network sees gets a valid value (the network predicts finite depth even for the
sky; the mono downloads of the paper do the same). ``max_valid_depth`` marks farther pixels invalid.

Exports are resumable: every file is written to a temporary name and renamed into place, and a
state file ``.cordaseg-depth-export-{format}-{split}.json`` in the output root records what is
being exported (model or checkpoint, options) and the scale chosen. A rerun of the same export
skips the files already there; any other export overwrites them (depth files found without a
matching state file, such as a dataset's own, are replaced).
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cordaseg.data import formats
from cordaseg.depth.align import (
    GROUND_BAND,
    MIN_GROUND_AGREEMENT,
    MIN_STEREO_FRACTION,
    Alignment,
    GroundCamera,
    fit_ground_scale_shift,
    fit_scale_shift,
    ground_agreement,
    ground_region,
    ground_samples,
    stereo_inverse_depth,
)
from cordaseg.depth.trainer import load_depth_checkpoint
from cordaseg.errors import CordasegError, DataError
from cordaseg.runtime.device import resolve_device

EXPORT_FORMATS = ("cityscapes-mono", "gta-disparity", "stereo-mat", "synthia-depth")
METRIC_FORMATS = ("stereo-mat", "synthia-depth")  # encodings that store metres (or centimetres)
ALIGN_MODES = ("auto", "median", "stereo", "camera-height")
DEFAULT_MEDIAN_DEPTH_M = 10.0
CALIBRATION_FRAMES = 32
# SYNTHIA centimetres: valid pixels in [10, 65534]; 65535 decodes to exactly the invalid 1.0.
SYNTHIA_MIN_CM = 10
SYNTHIA_INVALID_CM = 65535
# Pixels of one frame that enter the pooled stereo fit, at most (a regular subsample).
POOLED_FIT_PIXELS = 100_000
# The 16-bit disparity code 65535 is this depth; nearer points read as it.
PNG_NEAREST_M = formats.INVERSE_DEPTH_SCALE / 257.0 - formats.INVERSE_DEPTH_OFFSET
STATE_PREFIX = ".cordaseg-depth-export"


def _check_format(fmt: str) -> None:
    if fmt not in EXPORT_FORMATS:
        raise CordasegError(f"--format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")


def encode_depth(depth_m: np.ndarray, fmt: str, valid: np.ndarray | None = None) -> np.ndarray:
    """(H, W) metres -> the array stored by ``fmt`` (uint16 code, or float32 metres for ``stereo-mat``).

    ``valid`` (H, W) bool marks the pixels with depth (default: every finite positive one).
    """
    _check_format(fmt)
    depth_m = np.asarray(depth_m, dtype=np.float64)
    usable = np.isfinite(depth_m) & (depth_m > 0)
    valid = usable if valid is None else (np.asarray(valid, dtype=bool) & usable)
    if fmt == "stereo-mat":
        clipped = np.clip(depth_m, formats.STEREO_MIN_DEPTH_M, formats.STEREO_MAX_DEPTH_M)
        return np.where(valid, clipped, 0.0).astype(np.float32)
    if fmt == "synthia-depth":
        centimetres = np.rint(np.where(valid, depth_m, 0.0) * 100.0)
        return np.where(valid, np.clip(centimetres, SYNTHIA_MIN_CM, SYNTHIA_INVALID_CM - 1),
                        SYNTHIA_INVALID_CM).astype(np.uint16)
    code = np.rint((formats.depth_value_from_metres(np.where(valid, depth_m, 1.0)) - 1.0) * 256.0)
    return np.where(valid, np.clip(code, 1, 65535), 0).astype(np.uint16)


def write_depth_file(path: str | Path, depth_m: np.ndarray, fmt: str, valid: np.ndarray | None = None) -> Path:
    """Encode and write one depth file in ``fmt``, atomically: to a temporary name in the same
    folder (``.{stem}.partial{suffix}``, which no loader reads), then renamed into place."""
    encoded = encode_depth(depth_m, fmt, valid)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        if fmt == "stereo-mat":
            formats.write_stereo_depth_mat(partial, encoded)
        elif fmt == "synthia-depth":
            formats.write_synthia_depth_png(partial, encoded, equal_channels=True)
        else:
            formats.write_uint16_png(partial, encoded)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def read_depth_file(path: str | Path, fmt: str) -> np.ndarray:
    """The loader's value (float32, invalid = 1.0) of a file written in ``fmt``."""
    _check_format(fmt)
    if fmt == "stereo-mat":
        return formats.decode_stereo_depth(formats.read_stereo_depth_mat(path))
    if fmt == "cityscapes-mono":
        return formats.decode_mono_disparity(formats.read_uint16_png(path))
    if fmt == "synthia-depth":
        return formats.decode_synthia_depth(formats.read_uint16_png(path))
    return formats.decode_gta_disparity(formats.read_uint16_png(path))


def read_depth_m(path: str | Path, fmt: str) -> np.ndarray:
    """(H, W) float64 depth in metres of a file in ``fmt``, NaN where invalid (stereo ``.mat``:
    non-finite or not positive; disparity PNGs: code 0; SYNTHIA: 65535 cm)."""
    _check_format(fmt)
    if fmt == "stereo-mat":
        depth = np.asarray(formats.read_stereo_depth_mat(path), dtype=np.float64)
        return np.where(np.isfinite(depth) & (depth > 0), depth, np.nan)
    raw = formats.read_uint16_png(path)
    if fmt == "synthia-depth":
        return np.where(raw == SYNTHIA_INVALID_CM, np.nan, raw / 100.0)
    value = raw.astype(np.float64) / 256.0 + 1.0
    return np.where(raw == 0, np.nan, formats.INVERSE_DEPTH_SCALE / value - formats.INVERSE_DEPTH_OFFSET)


@dataclass(frozen=True)
class ExportJob:
    """One input image and the depth file it becomes; Cityscapes jobs also name the stereo
    partner and camera file (which need not exist unless stereo alignment uses them)."""

    image: Path
    output: Path
    right: Path | None = None
    camera: Path | None = None


def export_jobs(data_root: str | Path, fmt: str, out_root: str | Path | None = None,
                split: str = "train") -> list[ExportJob]:
    """Input images of the tree at ``data_root`` (Cityscapes for the Cityscapes formats, GTA5 for
    ``gta-disparity``, SYNTHIA for ``synthia-depth``) and their output paths under ``out_root``
    (default: the same tree)."""
    _check_format(fmt)
    root = Path(data_root)
    out = Path(out_root) if out_root is not None else root
    if not root.is_dir():
        raise DataError(f"{root}: data root not found")
    jobs = []
    if fmt in ("gta-disparity", "synthia-depth"):
        gta = fmt == "gta-disparity"
        image_dir = root / (formats.GTA5_IMAGE_DIR if gta else formats.SYNTHIA_IMAGE_DIR)
        if not image_dir.is_dir():
            dataset = "GTA5" if gta else "SYNTHIA"
            raise DataError(f"{image_dir}: {dataset} image folder not found ({fmt} reads a {dataset} tree)")
        for image in sorted(image_dir.glob("*.png")):
            paths = formats.gta5_paths(out, image.stem) if gta else formats.synthia_paths(out, image.stem)
            jobs.append(ExportJob(image, paths.depth))
    else:
        layout = formats.detect_cityscapes_layout(root)
        image_dir = formats.cityscapes_image_dir(root, layout) / split
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: Cityscapes {split} image folder not found ({fmt} reads a Cityscapes tree)")
        depth = "mono" if fmt == "cityscapes-mono" else "stereo"
        for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
            city, frame_id = image.parent.name, image.name.removesuffix("_leftImg8bit.png")
            paths = formats.cityscapes_paths(out, split, city, frame_id, depth=depth)
            jobs.append(ExportJob(image, paths.depth, formats.cityscapes_right_image_path(root, split, city, frame_id),
                                  formats.cityscapes_camera_path(root, split, city, frame_id)))
    if not jobs:
        raise DataError(f"{root}: no input images found for {fmt}")
    return jobs


@torch.no_grad()
def predict_depth_m(net, image_rgb: np.ndarray, size: tuple[int, int], device: torch.device) -> np.ndarray:
    """Depth of one (H, W, 3) float [0, 1] image, predicted at ``size`` (W, H) and brought back to
    (H, W) by bilinear interpolation of inverse depth (which, unlike depth, is smooth across edges
    of far backgrounds)."""
    h, w = image_rgb.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image_rgb.transpose(2, 0, 1)))[None].to(device)  # (1, 3, H, W)
    x = F.interpolate(x, size=(size[1], size[0]), mode="area" if size[0] < w else "bilinear")
    inverse = 1.0 / net.predict_depth(x)  # (1, 1, h, w)
    inverse = F.interpolate(inverse, size=(h, w), mode="bilinear", align_corners=False)
    return (1.0 / inverse)[0, 0].double().cpu().numpy()


@dataclass
class ExportSummary:
    """What an export wrote."""

    files: int
    scale: float
    metric: bool
    saturated_fraction: float  # pixels nearer than the encoding reaches (of the files written now)
    out_root: Path
    skipped: int = 0  # files already written by an interrupted run of the same export
    shift: float = 0.0
    alignment: str = ""  # how raw output became metres, in words


class DepthPredictor(Protocol):
    """What the export loop needs of a depth source: ``prepare`` runs in loader threads on one
    (H, W, 3) uint8 RGB image; ``predict`` maps prepared images of one ``batch_key`` to raw
    (H, W) float64 output at their ``shapes``."""

    def prepare(self, rgb: np.ndarray) -> Any: ...

    def batch_key(self, inputs: Any) -> Any: ...

    def predict(self, inputs: list[Any], shapes: list[tuple[int, int]]) -> list[np.ndarray]: ...


class CheckpointPredictor:
    """A self-supervised depth checkpoint as a :class:`DepthPredictor` (one image at a time)."""

    def __init__(self, net: torch.nn.Module, size: tuple[int, int], device: torch.device):
        self.net, self.size, self.device = net, size, device

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        return rgb.astype(np.float32) / 255.0

    def batch_key(self, inputs: np.ndarray) -> None:
        return None

    def predict(self, inputs: list[np.ndarray], shapes: list[tuple[int, int]]) -> list[np.ndarray]:
        return [predict_depth_m(self.net, image, self.size, self.device) for image in inputs]


@dataclass(frozen=True)
class GroundOptions:
    """Camera-height alignment: the height above the road (metres; None: each camera file's
    ``extrinsic.z``) and the likely-ground region (:func:`cordaseg.depth.align.ground_region`)."""

    camera_height: float | None = None
    band: float = GROUND_BAND
    margin: float = 0.0


def read_ground_camera(path: str | Path, shape: tuple[int, int], camera_height: float | None = None) -> GroundCamera:
    """The :class:`~cordaseg.depth.align.GroundCamera` of a Cityscapes ``*_camera.json`` for its
    stored image of ``shape`` (H, W): ``intrinsic.fy`` and ``intrinsic.v0`` in pixels of that image,
    ``extrinsic.pitch`` (0 when absent) and the height ``camera_height``, else ``extrinsic.z``."""
    path = Path(path)
    try:
        camera = json.loads(path.read_text())
        fy, v0 = float(camera["intrinsic"]["fy"]), float(camera["intrinsic"]["v0"])
        extrinsic = camera.get("extrinsic") or {}
        pitch = float(extrinsic.get("pitch", 0.0))
        z = extrinsic.get("z")
        if camera_height is not None:
            height = float(camera_height)
        else:
            height = None if z is None else float(z)
    except FileNotFoundError as err:
        raise DataError(f"{path}: camera file not found (--align camera-height reads fy, v0 and pitch there)") from err
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: not a Cityscapes camera file (missing or bad {err})") from err
    if height is None:
        raise CordasegError(f"{path}: no camera height (extrinsic.z); pass --camera-height METRES "
                            "(Cityscapes: about 1.22)")
    rows = shape[0]
    if not -0.5 <= v0 <= rows - 0.5:
        raise DataError(f"{path}: the principal row v0={v0:g} lies outside the {rows}-row image; its intrinsics "
                        "must be in pixels of the stored image")
    try:
        return GroundCamera(fy, v0, height, pitch, rows)
    except ValueError as err:
        raise DataError(f"{path}: {err}") from err


@dataclass
class _Prepared:
    job: ExportJob
    inputs: Any
    shape: tuple[int, int]  # (H, W) of the stored image
    stereo: tuple[np.ndarray, np.ndarray] | None  # (inverse depth 1/m, confident) from the stereo pair
    ground: GroundCamera | None = None  # the camera over the road (camera-height alignment)


def _prepare(predictor: DepthPredictor, job: ExportJob, with_stereo: bool,
             ground: GroundOptions | None = None) -> _Prepared:
    rgb = formats.read_image_rgb(job.image)
    stereo = None
    if with_stereo:
        if job.right is None or job.camera is None:
            raise DataError(f"{job.image}: stereo alignment needs a Cityscapes tree (rightImg8bit/ and camera/)")
        camera = formats.read_camera_json(job.camera)
        stereo = stereo_inverse_depth(rgb, formats.read_image_rgb(job.right), camera["fx"], camera["baseline"])
    ground_camera = None
    if ground is not None:
        if job.camera is None:
            raise DataError(f"{job.image}: camera-height alignment needs a Cityscapes tree (camera/)")
        ground_camera = read_ground_camera(job.camera, rgb.shape[:2], ground.camera_height)
    return _Prepared(job, predictor.prepare(rgb), rgb.shape[:2], stereo, ground_camera)


def _prepared_batches(predictor: DepthPredictor, jobs: list[ExportJob], batch_size: int, workers: int,
                      with_stereo: bool, ground: GroundOptions | None = None) -> Iterator[list[_Prepared]]:
    """Batches of prepared jobs in order, read ``workers`` at a time ahead of the model (0: in this
    thread); a batch holds up to ``batch_size`` images of one ``batch_key``."""
    batch: list[_Prepared] = []

    def add(item: _Prepared) -> Iterator[list[_Prepared]]:
        nonlocal batch
        if batch and (len(batch) == batch_size
                      or predictor.batch_key(item.inputs) != predictor.batch_key(batch[0].inputs)):
            yield batch
            batch = []
        batch.append(item)

    if workers <= 0:
        for job in jobs:
            yield from add(_prepare(predictor, job, with_stereo, ground))
    else:
        pending: deque[Future] = deque()
        remaining = iter(jobs)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            try:
                while True:
                    while len(pending) < 2 * max(batch_size, workers):
                        job = next(remaining, None)
                        if job is None:
                            break
                        pending.append(pool.submit(_prepare, predictor, job, with_stereo, ground))
                    if not pending:
                        break
                    yield from add(pending.popleft().result())
            finally:
                for future in pending:
                    future.cancel()
    if batch:
        yield batch


def _frames_for_calibration(predictor: DepthPredictor, jobs: list[ExportJob], batch_size: int, workers: int,
                            with_stereo: bool, ground: GroundOptions | None = None
                            ) -> Iterator[tuple[np.ndarray, _Prepared]]:
    for batch in _prepared_batches(predictor, jobs[:CALIBRATION_FRAMES], batch_size, workers, with_stereo, ground):
        yield from zip(predictor.predict([p.inputs for p in batch], [p.shape for p in batch]), batch)


def frame_stereo_alignment(raw: np.ndarray, stereo: tuple[np.ndarray, np.ndarray]) -> Alignment | None:
    """The scale and shift of one frame's relative disparity fitted to its stereo inverse depth, or
    None when too few pixels matched (or the fit is not increasing in disparity)."""
    inverse, confident = stereo
    if confident.mean() < MIN_STEREO_FRACTION:
        return None
    try:
        scale, shift = fit_scale_shift(raw, inverse, confident)
    except ValueError:
        return None
    return Alignment("disparity", scale, shift) if scale > 0 else None


def frame_ground_alignment(raw: np.ndarray, camera: GroundCamera, band: float = GROUND_BAND,
                           margin: float = 0.0) -> Alignment | None:
    """The scale and shift of one frame's relative disparity fitted to the road's inverse depth
    under ``camera``, or None when fewer than ``MIN_GROUND_AGREEMENT`` of its ground pixels agree
    with the fit (a vehicle close ahead, a slope) or the fit is not increasing in disparity."""
    samples = ground_samples(raw, camera, band, margin)
    try:
        scale, shift = fit_ground_scale_shift([samples])
    except ValueError:
        return None
    if not scale > 0 or ground_agreement(samples, scale, shift) < MIN_GROUND_AGREEMENT:
        return None
    return Alignment("disparity", scale, shift)


def _ground_options(align: str, camera_height: float | None, band: float | None,
                    margin: float | None) -> GroundOptions | None:
    """The camera-height options of an export, checked (None unless ``align`` is camera-height)."""
    given = [name for name, value in (("--camera-height", camera_height), ("--ground-band", band),
                                      ("--ground-margin", margin)) if value is not None]
    if align != "camera-height":
        if given:
            raise CordasegError(f"{given[0]} applies to --align camera-height only")
        return None
    if camera_height is not None and not (np.isfinite(camera_height) and camera_height > 0):
        raise CordasegError(f"--camera-height: {camera_height} must be positive metres")
    options = GroundOptions(camera_height, GROUND_BAND if band is None else band, 0.0 if margin is None else margin)
    try:
        ground_region((100, 100), options.band, options.margin)
    except ValueError as err:
        raise CordasegError(f"--ground-band {options.band:g} / --ground-margin {options.margin:g}: {err}") from err
    return options


@dataclass
class _Plan:
    """The alignment an export uses, as recorded in its state file."""

    alignment: Alignment
    description: str
    metric: bool
    per_frame_stereo: bool = False
    per_frame_ground: bool = False


def _plan_alignment(kind: str, fmt: str, align: str, scale: float | None, shift: float | None,
                    median_depth_m: float,
                    calibrate: Callable[[bool, GroundOptions | None], Iterator[tuple[np.ndarray, _Prepared]]],
                    ground: GroundOptions | None = None) -> _Plan:
    """How raw output of ``kind`` ("metric", "scale-free" depth or "relative" disparity) becomes
    metres in ``fmt`` (see the module docstring); ``calibrate(with_stereo, ground)`` yields the raw
    output of the first frames (prepared with stereo inverse depth, or with their ground camera)."""
    if align not in ALIGN_MODES:
        raise CordasegError(f"--align: {align!r} is not one of {', '.join(ALIGN_MODES)}")
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise CordasegError(f"--scale: {scale} must be positive")
    if shift is not None and not np.isfinite(shift):
        raise CordasegError(f"--shift: {shift} must be a finite number")
    if kind != "relative":
        if shift is not None:
            raise CordasegError("--shift applies to relative disparity only (this source predicts depth)")
        if align != "auto":
            raise CordasegError(f"--align {align} applies to relative disparity only (this source predicts depth)")
        if kind == "metric" or scale is not None:
            value = 1.0 if scale is None else scale
            return _Plan(Alignment("depth", value), f"depth times {value:.4g}", kind == "metric")
        medians = [np.median(raw) for raw, _ in calibrate(False, None)]
        value = median_depth_m / float(np.median(medians))
        return _Plan(Alignment("depth", value), f"scale-free depth times {value:.4g} (median {median_depth_m:g} m)",
                     False)
    if align == "camera-height":
        return _plan_ground_alignment(fmt, scale, shift, calibrate, ground or GroundOptions())
    if scale is not None:
        alignment = Alignment("disparity", scale, 0.0 if shift is None else shift)
        return _Plan(alignment, f"1/Z = {alignment.scale:.4g} * disparity + {alignment.shift:.4g}", True)
    if shift is not None:
        raise CordasegError("--shift needs --scale (a fixed alignment gives both)")
    if align == "stereo" or (align == "auto" and fmt in METRIC_FORMATS):
        if fmt in ("gta-disparity", "synthia-depth"):
            raise CordasegError(f"{fmt} stores {'metric' if fmt in METRIC_FORMATS else 'scale-free'} depth of a "
                                "dataset without stereo pairs: relative disparity needs --scale (and --shift)"
                                + (" or --align median" if fmt == "gta-disparity" else ""))
        predicted, target = [], []
        for raw, prepared in calibrate(True, None):
            inverse, confident = prepared.stereo
            index = np.flatnonzero(confident)[:: max(1, int(confident.sum()) // POOLED_FIT_PIXELS)]
            predicted.append(raw.ravel()[index])
            target.append(inverse.ravel()[index])
        try:
            value, offset = fit_scale_shift(np.concatenate(predicted), np.concatenate(target))
        except ValueError as err:
            raise CordasegError(f"stereo alignment failed on the first {CALIBRATION_FRAMES} frames ({err})") from err
        if not value > 0:
            raise CordasegError(f"stereo alignment failed: the fitted scale {value:.4g} is not positive (the "
                                "model's output does not grow with stereo disparity; is it depth, --output metric?)")
        return _Plan(Alignment("disparity", value, offset),
                     f"stereo fit per frame (fallback 1/Z = {value:.4g} * disparity + {offset:.4g})", True, True)
    medians = []
    for raw, _ in calibrate(False, None):
        positive = raw[raw > 0]
        medians.append(float(np.median(1.0 / positive)) if positive.size else np.nan)
    if not np.any(np.isfinite(medians)):
        raise CordasegError("median rule: the model predicts no positive disparity on the first frames")
    value = float(np.nanmedian(medians)) / median_depth_m  # 1 / Z = value * p puts the median at median_depth_m
    return _Plan(Alignment("disparity", value), f"1/Z = {value:.4g} * disparity (median {median_depth_m:g} m)", False)


def _plan_ground_alignment(fmt: str, scale: float | None, shift: float | None,
                           calibrate: Callable[[bool, GroundOptions | None], Iterator[tuple[np.ndarray, _Prepared]]],
                           ground: GroundOptions) -> _Plan:
    """Camera-height alignment: a fit per frame, and one pooled over the first frames for the
    frames whose own fit fails."""
    if scale is not None or shift is not None:
        raise CordasegError("--align camera-height fits the scale and shift itself; drop --scale / --shift")
    if fmt in ("gta-disparity", "synthia-depth"):
        raise CordasegError(f"--align camera-height needs a Cityscapes tree (camera/*.json); {fmt} reads a "
                            f"{'GTA5' if fmt == 'gta-disparity' else 'SYNTHIA'} tree")
    samples = [ground_samples(raw, prepared.ground, ground.band, ground.margin, max_pixels=POOLED_FIT_PIXELS)
               for raw, prepared in calibrate(False, ground)]
    try:
        value, offset = fit_ground_scale_shift(samples)
    except ValueError as err:
        raise CordasegError(f"camera-height alignment failed on the first {CALIBRATION_FRAMES} frames ({err}; "
                            "check --ground-band / --ground-margin and the camera files' v0 and pitch)") from err
    if not value > 0:
        raise CordasegError(f"camera-height alignment failed: the fitted scale {value:.4g} is not positive (the "
                            "model's output does not grow toward the bottom of the image; is it depth, --output "
                            "metric?)")
    height = "each camera file's height" if ground.camera_height is None else f"camera {ground.camera_height:g} m"
    return _Plan(Alignment("disparity", value, offset),
                 f"camera-height fit per frame ({height} over the road; fallback 1/Z = {value:.4g} * disparity + "
                 f"{offset:.4g})", True, per_frame_ground=True)


def _fingerprint(path: Path) -> dict[str, Any]:
    """What identifies a checkpoint file or model folder: its path, sizes and modification times."""
    path = path.resolve()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return {"path": str(path), "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def state_path(out_root: str | Path, fmt: str, split: str) -> Path:
    """The state file of an export of ``fmt`` (and ``split``) under ``out_root``."""
    return Path(out_root) / f"{STATE_PREFIX}-{fmt}-{split}.json"


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(state, indent=2))
    os.replace(partial, path)


def run_export(predictor: DepthPredictor, kind: str, jobs: list[ExportJob], fmt: str, out_root: Path,
               split: str, identity: dict[str, Any], *, align: str = "auto", scale: float | None = None,
               shift: float | None = None, median_depth_m: float = DEFAULT_MEDIAN_DEPTH_M,
               max_valid_depth: float | None = None, batch_size: int = 1, workers: int = 0,
               progress: bool = True, camera_height: float | None = None, ground_band: float | None = None,
               ground_margin: float | None = None) -> ExportSummary:
    """Write the depth file of every job from ``predictor``'s raw output of ``kind`` (see
    :func:`_plan_alignment`), skipping files an interrupted run of the same export (``identity``
    plus the options) already wrote. ``camera_height``, ``ground_band`` and ``ground_margin`` apply
    to ``align="camera-height"`` (:class:`GroundOptions`; None: its defaults)."""
    if batch_size < 1:
        raise CordasegError(f"--batch-size: {batch_size} must be at least 1")
    if align not in ALIGN_MODES:
        raise CordasegError(f"--align: {align!r} is not one of {', '.join(ALIGN_MODES)}")
    ground = _ground_options(align, camera_height, ground_band, ground_margin)
    options = {"format": fmt, "split": split, "kind": kind, "align": align, "scale": scale, "shift": shift,
               "median_depth_m": median_depth_m, "max_valid_depth": max_valid_depth}
    if ground is not None:
        options["ground"] = asdict(ground)
    identity = json.loads(json.dumps({**identity, **options}))  # as a JSON round trip reads it back
    path = state_path(out_root, fmt, split)
    state = _read_state(path)
    resume = state is not None and state.get("identity") == identity
    if resume:
        plan = _Plan(Alignment(**state["alignment"]), state["description"], state["metric"],
                     state["per_frame_stereo"], bool(state.get("per_frame_ground", False)))
    else:
        plan = _plan_alignment(
            kind, fmt, align, scale, shift, median_depth_m,
            lambda stereo, on_ground: _frames_for_calibration(predictor, jobs, batch_size, workers, stereo, on_ground),
            ground)
        _write_state(path, {"identity": identity, "alignment": asdict(plan.alignment), "description": plan.description,
                            "metric": plan.metric, "per_frame_stereo": plan.per_frame_stereo,
                            "per_frame_ground": plan.per_frame_ground})
    todo = [job for job in jobs if not (resume and job.output.is_file())]
    near = {"stereo-mat": 0.0, "synthia-depth": SYNTHIA_MIN_CM / 100.0}.get(fmt, PNG_NEAREST_M)
    saturated, pixels, own_fits = 0, 0, 0
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"exporting {fmt}", unit="frame",
              disable=not progress) as bar:
        frame_ground = ground if plan.per_frame_ground else None
        for batch in _prepared_batches(predictor, todo, batch_size, workers, plan.per_frame_stereo, frame_ground):
            raws = predictor.predict([p.inputs for p in batch], [p.shape for p in batch])
            for prepared, raw in zip(batch, raws):
                alignment = plan.alignment
                own = None
                if prepared.stereo is not None:
                    own = frame_stereo_alignment(raw, prepared.stereo)
                elif prepared.ground is not None and frame_ground is not None:
                    own = frame_ground_alignment(raw, prepared.ground, frame_ground.band, frame_ground.margin)
                if prepared.stereo is not None or prepared.ground is not None:
                    own_fits += own is not None
                    alignment = own or alignment
                depth_m = alignment.depth_m(raw)
                valid = None if max_valid_depth is None else depth_m <= max_valid_depth
                write_depth_file(prepared.job.output, depth_m, fmt, valid)
                saturated += int((depth_m < near).sum())
                pixels += depth_m.size
            bar.update(len(batch))
    description = plan.description
    if plan.per_frame_stereo or plan.per_frame_ground:
        description += f"; own fit on {own_fits} of {len(todo)} frames"
    return ExportSummary(len(jobs), plan.alignment.scale, plan.metric, saturated / max(pixels, 1), out_root,
                         len(jobs) - len(todo), plan.alignment.shift, description)


def export_depth(checkpoint: str | Path, data_root: str | Path, fmt: str, out_root: str | Path | None = None,
                 split: str = "train", size: tuple[int, int] | None = None, scale: float | None = None,
                 median_depth_m: float = DEFAULT_MEDIAN_DEPTH_M, max_valid_depth: float | None = None,
                 device: str = "auto", progress: bool = True, workers: int = 0) -> ExportSummary:
    """Predict depth with a self-supervised checkpoint for every image of a tree and write it in
    ``fmt`` (see the module docstring)."""
    _check_format(fmt)
    if scale is not None and not scale > 0:
        raise CordasegError(f"--scale: {scale} must be positive")
    torch_device = resolve_device(device)
    net, cfg, metric = load_depth_checkpoint(checkpoint, torch_device)
    size = tuple(size) if size is not None else tuple(cfg.data.size)
    jobs = export_jobs(data_root, fmt, out_root, split)
    out = Path(out_root) if out_root is not None else Path(data_root)
    identity = {"checkpoint": _fingerprint(Path(checkpoint)), "size": list(size)}
    return run_export(CheckpointPredictor(net, size, torch_device), "metric" if metric else "scale-free", jobs,
                      fmt, out, split, identity, scale=scale, median_depth_m=median_depth_m,
                      max_valid_depth=max_valid_depth, workers=workers, progress=progress)


def export_pretrained_depth(model_dir: str | Path, data_root: str | Path, fmt: str,
                            out_root: str | Path | None = None, split: str = "train", *,
                            output: str | None = None, align: str = "auto", scale: float | None = None,
                            shift: float | None = None, size: tuple[int, int] | None = None,
                            median_depth_m: float = DEFAULT_MEDIAN_DEPTH_M, max_valid_depth: float | None = None,
                            batch_size: int = 8, workers: int = 2, device: str = "auto",
                            progress: bool = True, camera_height: float | None = None,
                            ground_band: float | None = None, ground_margin: float | None = None) -> ExportSummary:
    """Predict depth with the pretrained model in ``model_dir`` (:mod:`cordaseg.depth.pretrained`)
    for every image of a tree and write it in ``fmt`` (see the module docstring for the scale;
    ``camera_height``, ``ground_band`` and ``ground_margin``: :func:`run_export`)."""
    from cordaseg.depth.pretrained import load_pretrained_depth

    _check_format(fmt)
    jobs = export_jobs(data_root, fmt, out_root, split)
    model = load_pretrained_depth(model_dir, resolve_device(device), output=output, size=size)
    out = Path(out_root) if out_root is not None else Path(data_root)
    identity = {"model": _fingerprint(Path(model_dir)), "output": model.output,
                "size": None if size is None else list(size)}
    return run_export(model, model.output, jobs, fmt, out, split, identity, align=align, scale=scale, shift=shift,
                      median_depth_m=median_depth_m, max_valid_depth=max_valid_depth, batch_size=batch_size,
                      workers=workers, progress=progress, camera_height=camera_height, ground_band=ground_band,
                      ground_margin=ground_margin)


def link_tree(data_root: str | Path, out_root: str | Path, replace: tuple[str, ...] = ("depth", "disparity")) -> Path:
    """A view of the tree at ``data_root`` under ``out_root`` sharing every top-level folder by a
    symbolic link except ``replace`` (the depth folders an export fills), so a dataset can be read
    with exported depth in place of its own without copying images."""
    data_root, out_root = Path(data_root).resolve(), Path(out_root)
    if not data_root.is_dir():
        raise DataError(f"{data_root}: data root not found")
    out_root.mkdir(parents=True, exist_ok=True)
    for child in data_root.iterdir():
        link = out_root / child.name
        if child.name in replace or link.exists() or link.is_symlink():
            continue
        os.symlink(child, link, target_is_directory=child.is_dir())
    return out_root
