"""Prediction on image files, with the evaluation protocol of docs/method.md, "Evaluation".

Each image is resized to the inference size (1024x512 by default, like Cityscapes val), run
through the model (optionally with sliding windows / multi-scale + flip TTA), and the outputs
are upsampled bilinearly (``align_corners=True``) back to the size of the file. The written
files, each under its own sub-folder of the output folder and named like the input
(folders keep their relative layout, e.g. Cityscapes ``city/`` folders):

- ``color/``: the segmentation in the Cityscapes palette (RGB PNG);
- ``depth/``: the target depth head colour-mapped (magma; brighter = larger inverse depth = nearer);
- ``overlay/``: the palette blended over the image;
- ``labelIds/`` (on request): 8-bit Cityscapes label IDs, the format of the official evaluation
  scripts and the benchmark server (one file per frame in its own folder, as they require);
- ``logits/`` (on request): the averaged semantic logits (C, h, w) float32 ``.npy`` at the
  inference size (before the final upsampling).

The segmentation is the argmax of the logits upsampled to the file size, computed in horizontal
strips (:func:`upsampled_argmax`): the full-size logits of a large image (19 x H x W floats, 4.9 GB
for 8000x8000) never exist at once.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from cordaseg.config import ConfigError
from cordaseg.data import formats, transforms
from cordaseg.data.labels import TRAIN_TO_CITYSCAPES_ID, colorize
from cordaseg.data.normalization import CAFFE_MEAN_BGR, normalize_rgb
from cordaseg.errors import DataError
from cordaseg.evaluation.inference import InferenceConfig, infer, model_callable
from cordaseg.evaluation.report import colorize_depth, overlay
from cordaseg.models.output import SEMANTIC, upsample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class PredictConfig:
    """What ``predict`` computes and writes."""

    input_size: tuple[int, int] | None = (1024, 512)
    """(W, H) the image is resized to for the network (the paper's 1024x512); None = as read."""
    resample: Literal["bilinear", "bicubic"] = "bilinear"
    """Interpolation of that resize (bilinear, like the Cityscapes val loader)."""
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    """Precision, TTA and sliding-window settings."""
    write_color: bool = True
    """Write ``color/``: the palette segmentation."""
    write_depth: bool = True
    """Write ``depth/``: the colour-mapped target depth head (models with depth only)."""
    write_overlay: bool = True
    """Write ``overlay/``: the segmentation blended over the image."""
    write_label_ids: bool = False
    """Write ``labelIds/``: Cityscapes label IDs for the official scripts and benchmark."""
    write_logits: bool = False
    """Write ``logits/``: raw averaged logits (C, h, w) as float32 ``.npy``."""
    overlay_alpha: float = 0.5
    """Weight of the palette colours in the overlay."""
    mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR
    """Mean subtracted from the BGR image: the normalisation the model was trained with
    (``source.mean_bgr`` of its training config; docs/data-formats.md, "Images")."""
    strip_rows: int = 256
    """Output rows upsampled and reduced to labels at a time (bounds the memory of large images)."""

    def __post_init__(self) -> None:
        if self.strip_rows < 1:
            raise ConfigError(f"strip_rows: {self.strip_rows} must be >= 1")
        if self.input_size is not None and min(self.input_size) < 1:
            raise ConfigError(f"input_size: {self.input_size} must be positive (W, H)")
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ConfigError(f"overlay_alpha: {self.overlay_alpha} must be in [0, 1]")


@dataclass
class Prediction:
    """Outputs for one image, at the size of its file."""

    train_ids: np.ndarray
    """(H, W) uint8 predicted train IDs."""
    depth: np.ndarray | None
    """(H, W) float32 target depth head, None for models without depth."""
    logits: np.ndarray
    """(C, h, w) float32 semantic logits at the inference size."""


def expand_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """Files, folders (searched recursively) and glob patterns -> sorted (file, output stem) pairs.

    The output stem is the file name without suffix, under its path relative to a given
    folder. Raises :class:`DataError` for an input that matches no image, or for two inputs
    that would write the same output.
    """
    pairs: list[tuple[Path, Path]] = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            pairs += [(p, p.relative_to(path).with_suffix("")) for p in found]
        elif path.is_file():
            found = [path]
            pairs.append((path, Path(path.stem)))
        elif glob.has_magic(str(entry)):
            found = sorted(Path(p) for p in glob.glob(str(entry), recursive=True)
                           if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
            pairs += [(p, Path(p.stem)) for p in found]
        else:
            raise DataError(f"{entry}: no such file or folder")
        if not found:
            raise DataError(f"{entry}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    seen: dict[Path, Path] = {}
    for source, stem in pairs:
        if stem in seen and seen[stem] != source:
            raise DataError(f"{source} and {seen[stem]} would write the same output '{stem}'; "
                            "pass their common folder instead")
        seen[stem] = source
    unique = {source: stem for source, stem in pairs}
    return sorted(unique.items(), key=lambda pair: str(pair[1]))


def prepare_image(image_bgr: np.ndarray, config: PredictConfig) -> torch.Tensor:
    """(H, W, 3) uint8 BGR -> (1, 3, h, w) normalised network input (the val loader's steps)."""
    if config.input_size is not None:
        image_bgr = transforms.resize(image_bgr, config.input_size, config.resample)
    return torch.from_numpy(normalize_rgb(image_bgr[..., ::-1], config.mean_bgr))[None]


def upsampled_argmax(logits: torch.Tensor, size: tuple[int, int], strip_rows: int = 256) -> torch.Tensor:
    """argmax over classes of ``logits`` (1, C, h, w) upsampled bilinearly (``align_corners=True``)
    to ``size`` (H, W), as (H, W) uint8, ``strip_rows`` output rows at a time.

    Each strip interpolates the width of the source rows it needs with the same kernel as a
    whole-image upsampling, then blends the two source rows of each output row with the same
    weights; values can differ from the whole-image kernel's in the last bit (operation order),
    so labels agree except where two classes tie to within float rounding.
    """
    in_h = logits.shape[-2]
    out_h, out_w = size
    labels = torch.empty((out_h, out_w), dtype=torch.uint8, device=logits.device)
    # The source row of output row y is y * (in_h - 1) / (out_h - 1), in float32 as the kernel has it.
    scale = torch.tensor((in_h - 1) / (out_h - 1) if out_h > 1 else 0.0, dtype=torch.float32)
    for top in range(0, out_h, strip_rows):
        rows = torch.arange(top, min(out_h, top + strip_rows), dtype=torch.float32) * scale
        first = rows.floor().long().clamp(max=in_h - 1)
        second = (first + 1).clamp(max=in_h - 1)
        weight = (rows - first.float()).clamp(0.0, 1.0).to(logits.device)[:, None]  # (rows, 1)
        low, high = int(first.min()), int(second.max())
        # (1, C, rows needed, out_w): only the width is interpolated here.
        source = F.interpolate(logits[:, :, low:high + 1].float(), size=(high - low + 1, out_w),
                               mode="bilinear", align_corners=True)[0]
        first, second = (first - low).to(logits.device), (second - low).to(logits.device)
        strip = source[:, first] * (1.0 - weight) + source[:, second] * weight  # (C, rows, out_w)
        labels[top:top + len(rows)] = strip.argmax(0).to(torch.uint8)
    return labels


@torch.no_grad()
def predict_image(model: nn.Module, image_bgr: np.ndarray, config: PredictConfig,
                  device: torch.device | str = "cpu") -> Prediction:
    """Segmentation (and depth) of one (H, W, 3) uint8 BGR image at its own size."""
    run = model_callable(model, config.inference.precision)
    image = prepare_image(image_bgr, config).to(device)  # (1, 3, h, w)
    in_size = tuple(image.shape[-2:])
    out_size = tuple(image_bgr.shape[:2])
    if config.inference.is_plain:
        # the paper's protocol: 1/8-resolution outputs upsampled straight to the file size
        outputs = run(image)
        logits = upsample(outputs[SEMANTIC], in_size) if config.write_logits else outputs[SEMANTIC]
    else:
        outputs = infer(run, image, config.inference, in_size)
        logits = outputs[SEMANTIC]
    depth = outputs.get("depth")
    return Prediction(
        train_ids=upsampled_argmax(outputs[SEMANTIC], out_size, config.strip_rows).cpu().numpy(),
        depth=None if depth is None else upsample(depth, out_size)[0, 0].cpu().numpy(),
        logits=logits[0].cpu().numpy(),
    )


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_prediction(out_dir: Path, stem: Path, image_bgr: np.ndarray, prediction: Prediction,
                     config: PredictConfig) -> list[Path]:
    """Write the requested files of one prediction; returns their paths."""
    written = []
    color = colorize(prediction.train_ids)  # (H, W, 3) RGB
    if config.write_color:
        written.append(out_dir / "color" / f"{stem}.png")
        _save_png(written[-1], color)
    if config.write_depth and prediction.depth is not None:
        written.append(out_dir / "depth" / f"{stem}.png")
        _save_png(written[-1], colorize_depth(prediction.depth))
    if config.write_overlay:
        written.append(out_dir / "overlay" / f"{stem}.png")
        _save_png(written[-1], overlay(image_bgr[..., ::-1], color, config.overlay_alpha))
    if config.write_label_ids:
        written.append(out_dir / "labelIds" / f"{stem}.png")
        formats.write_gray_label_png(written[-1], TRAIN_TO_CITYSCAPES_ID[prediction.train_ids])
    if config.write_logits:
        written.append(out_dir / "logits" / f"{stem}.npy")
        written[-1].parent.mkdir(parents=True, exist_ok=True)
        np.save(written[-1], prediction.logits.astype(np.float32))
    return written


def predict_files(model: nn.Module, inputs: Sequence[str | Path], out_dir: str | Path, config: PredictConfig,
                  *, device: torch.device | str = "cpu", progress: bool = True) -> list[Path]:
    """Predict every image of ``inputs`` (files, folders, globs) into ``out_dir``; returns the
    written files. The model's train/eval mode is restored after."""
    pairs = expand_inputs(inputs)
    out_dir = Path(out_dir)
    written: list[Path] = []
    was_training = model.training
    model.eval()
    try:
        for source, stem in tqdm(pairs, desc="predict", disable=not progress, leave=False):
            image_bgr = formats.read_image_bgr(source)
            prediction = predict_image(model, image_bgr, config, device)
            written += write_prediction(out_dir, stem, image_bgr, prediction, config)
    finally:
        model.train(was_training)
    return written
