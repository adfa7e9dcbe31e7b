"""Exporting self-supervised depth as the depth files CorDA reads (spec section 5).

Three encodings, each written where the dataset loader looks for it, so ``cordaseg train`` reads
them with no other step:

- ``cityscapes-mono``: ``disparity/{split}/{city}/{id}_leftImg8bit.png`` of a Cityscapes tree
  (the loader's ``depth: mono``), uint16, decoded ``v / 256 + 1``;
- ``gta-disparity``: ``disparity/NNNNN.png`` of a GTA5 tree, uint16, decoded ``v / 256 + 1``;
- ``stereo-mat``: ``depth/{split}/{city}/{id}_depth_stereoscopic.mat`` of a Cityscapes tree
  (the loader's ``depth: stereo``, the paper's main setting), variable ``depth_map`` in metres.

How depth maps into them (one rule for all three): a depth ``Z`` (metres) is the loader value
``655.36 / (Z + 0.01)``, the formula of the Cityscapes stereo decode. The ``.mat`` file stores
``Z`` itself (clipped to the decode's [0.1, 655.35]); the PNGs store ``round((655.36 / (Z + 0.01)
- 1) * 256)``, clipped to [1, 65535] for valid pixels (0 is kept for invalid ones), so the three
files of one prediction decode to the same value up to the 1/256 quantisation. The 16-bit code
covers 2.54 m to 652 m; nearer points read as 2.54 m (as in the synthetic world's GTA5 export).

Scale: a checkpoint trained with stereo (``stereo`` or ``mono+stereo``) predicts metres and is
written as is. A monocular checkpoint knows depth only up to one global factor; unless ``scale``
is given, the factor is chosen so that the median predicted depth over the first
``calibration_frames`` frames is ``median_depth_m`` (default 10 m, street scenes). CorDA's use of
depth is insensitive to that factor: the berHu threshold is relative to the largest error, and
the adaptation-difficulty weight ``|D_src - D| / d`` is a ratio; the factor only has to keep the
values inside the 16-bit range, which the median rule does.

Every pixel the network sees gets a valid value (the network predicts finite depth even for the
sky; the mono downloads of the paper do the same). ``max_valid_depth`` marks farther pixels invalid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cordaseg.data import formats
from cordaseg.depth.data import load_rgb
from cordaseg.depth.trainer import load_depth_checkpoint, resolve_device
from cordaseg.errors import CordasegError, DataError

EXPORT_FORMATS = ("cityscapes-mono", "gta-disparity", "stereo-mat")
DEFAULT_MEDIAN_DEPTH_M = 10.0
CALIBRATION_FRAMES = 32


def inverse_depth_value(depth_m: np.ndarray) -> np.ndarray:
    """Metres -> the loader's ``655.36 / (Z + 0.01)`` (float64)."""
    return formats.INVERSE_DEPTH_SCALE / (np.asarray(depth_m, dtype=np.float64) + formats.INVERSE_DEPTH_OFFSET)


def encode_depth(depth_m: np.ndarray, fmt: str, valid: np.ndarray | None = None) -> np.ndarray:
    """(H, W) metres -> the array stored by ``fmt`` (uint16 code, or float32 metres for ``stereo-mat``).

    ``valid`` (H, W) bool marks the pixels with depth (default: every finite positive one).
    """
    depth_m = np.asarray(depth_m, dtype=np.float64)
    usable = np.isfinite(depth_m) & (depth_m > 0)
    valid = usable if valid is None else (np.asarray(valid, dtype=bool) & usable)
    if fmt == "stereo-mat":
        clipped = np.clip(depth_m, formats.STEREO_MIN_DEPTH_M, formats.STEREO_MAX_DEPTH_M)
        return np.where(valid, clipped, 0.0).astype(np.float32)
    if fmt in ("cityscapes-mono", "gta-disparity"):
        code = np.rint((inverse_depth_value(np.where(valid, depth_m, 1.0)) - 1.0) * 256.0)
        return np.where(valid, np.clip(code, 1, 65535), 0).astype(np.uint16)
    raise CordasegError(f"--format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")


def write_depth_file(path: str | Path, depth_m: np.ndarray, fmt: str, valid: np.ndarray | None = None) -> Path:
    """Encode and write one depth file in ``fmt``."""
    encoded = encode_depth(depth_m, fmt, valid)
    if fmt == "stereo-mat":
        formats.write_stereo_depth_mat(path, encoded)
    else:
        formats.write_uint16_png(path, encoded)
    return Path(path)


def read_depth_file(path: str | Path, fmt: str) -> np.ndarray:
    """The loader's value (float32, invalid = 1.0) of a file written in ``fmt``."""
    if fmt == "stereo-mat":
        return formats.decode_stereo_depth(formats.read_stereo_depth_mat(path))
    if fmt == "cityscapes-mono":
        return formats.decode_mono_disparity(formats.read_uint16_png(path))
    if fmt == "gta-disparity":
        return formats.decode_gta_disparity(formats.read_uint16_png(path))
    raise CordasegError(f"--format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")


@dataclass(frozen=True)
class ExportJob:
    """One input image and the depth file it becomes."""

    image: Path
    output: Path


def export_jobs(data_root: str | Path, fmt: str, out_root: str | Path | None = None,
                split: str = "train") -> list[ExportJob]:
    """Input images of the tree at ``data_root`` (Cityscapes for the Cityscapes formats, GTA5 for
    ``gta-disparity``) and their output paths under ``out_root`` (default: the same tree)."""
    root = Path(data_root)
    out = Path(out_root) if out_root is not None else root
    if not root.is_dir():
        raise DataError(f"{root}: data root not found")
    jobs = []
    if fmt == "gta-disparity":
        image_dir = root / formats.GTA5_IMAGE_DIR
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: GTA5 image folder not found (gta-disparity reads a GTA5 tree)")
        for image in sorted(image_dir.glob("*.png")):
            jobs.append(ExportJob(image, formats.gta5_paths(out, image.stem).depth))
    elif fmt in ("cityscapes-mono", "stereo-mat"):
        layout = formats.detect_cityscapes_layout(root)
        image_dir = formats.cityscapes_image_dir(root, layout) / split
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: Cityscapes {split} image folder not found ({fmt} reads a Cityscapes tree)")
        depth = "mono" if fmt == "cityscapes-mono" else "stereo"
        for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
            frame_id = image.name.removesuffix("_leftImg8bit.png")
            paths = formats.cityscapes_paths(out, split, image.parent.name, frame_id, depth=depth)
            jobs.append(ExportJob(image, paths.depth))
    else:
        raise CordasegError(f"--format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
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
    saturated_fraction: float  # pixels nearer than the 16-bit code reaches (PNG formats)
    out_root: Path


def export_depth(checkpoint: str | Path, data_root: str | Path, fmt: str, out_root: str | Path | None = None,
                 split: str = "train", size: tuple[int, int] | None = None, scale: float | None = None,
                 median_depth_m: float = DEFAULT_MEDIAN_DEPTH_M, max_valid_depth: float | None = None,
                 device: str = "auto", progress: bool = True) -> ExportSummary:
    """Predict depth for every image of a tree and write it in ``fmt`` (see the module docstring)."""
    if fmt not in EXPORT_FORMATS:
        raise CordasegError(f"--format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    if scale is not None and not scale > 0:
        raise CordasegError(f"--scale: {scale} must be positive")
    torch_device = resolve_device(device)
    net, cfg, metric = load_depth_checkpoint(checkpoint, torch_device)
    size = tuple(size) if size is not None else tuple(cfg.data.size)
    jobs = export_jobs(data_root, fmt, out_root, split)
    if scale is None:
        if metric:
            scale = 1.0
        else:
            medians = [np.median(predict_depth_m(net, load_rgb(job.image, None)[0], size, torch_device))
                       for job in jobs[:CALIBRATION_FRAMES]]
            scale = median_depth_m / float(np.median(medians))
    near = formats.INVERSE_DEPTH_SCALE / 257.0 - formats.INVERSE_DEPTH_OFFSET  # code 65535
    saturated, pixels = 0, 0
    for job in tqdm(jobs, desc=f"exporting {fmt}", unit="frame", disable=not progress):
        depth_m = scale * predict_depth_m(net, load_rgb(job.image, None)[0], size, torch_device)
        valid = None if max_valid_depth is None else depth_m <= max_valid_depth
        write_depth_file(job.output, depth_m, fmt, valid)
        saturated += int((depth_m < near).sum())
        pixels += depth_m.size
    out = Path(out_root) if out_root is not None else Path(data_root)
    return ExportSummary(len(jobs), float(scale), metric, saturated / max(pixels, 1) if fmt != "stereo-mat" else 0.0,
                         out)


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
