"""Pictures of an evaluation: a confusion-matrix heat map, a per-class IoU bar
chart and sample panels (image | ground truth | prediction | depth | error map).

Drawn with PIL and OpenCV colour maps only, so the package needs no plotting library. Also the
colour helpers ``predict`` uses: the Cityscapes palette, a colour-mapped depth and an overlay.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cordaseg.data.labels import NUM_CLASSES, PALETTE, colorize
from cordaseg.evaluation.evaluate import EvalResult, EvalSample

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
# Error map colours: correct, wrong, not scored.
CORRECT_RGB = (40, 40, 40)
WRONG_RGB = (255, 40, 40)
IGNORED_RGB = (0, 0, 0)


def font() -> ImageFont.ImageFont:
    """The font of every label in the pictures: PIL's built-in one, so no font file is needed."""
    return ImageFont.load_default()


def _text_size(text: str) -> tuple[int, int]:
    left, top, right, bottom = font().getbbox(text)
    return right - left, bottom - top


def apply_colormap(values01: np.ndarray, colormap: int = cv2.COLORMAP_VIRIDIS) -> np.ndarray:
    """(H, W) floats in [0, 1] -> (H, W, 3) uint8 RGB through an OpenCV colour map."""
    grey = np.clip(np.nan_to_num(values01) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(grey, colormap)[..., ::-1].copy()


def colorize_depth(depth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(H, W) depth-head values -> (H, W, 3) uint8 RGB (magma), stretched between the 2nd and
    98th percentile of the valid values; larger values (nearer, for inverse depth) are brighter."""
    depth = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(depth) if valid is None else (valid & np.isfinite(depth))
    if not valid.any():
        return np.zeros((*depth.shape, 3), dtype=np.uint8)
    low, high = np.percentile(depth[valid], [2, 98])
    scaled = (depth - low) / max(float(high - low), 1e-6)
    rgb = apply_colormap(scaled, cv2.COLORMAP_MAGMA)
    rgb[~valid] = 0
    return rgb


def overlay(image_rgb: np.ndarray, color_rgb: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour segmentation over the image: (1 - alpha) * image + alpha * colours."""
    blended = (1.0 - alpha) * image_rgb.astype(np.float32) + alpha * color_rgb.astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def error_map(label: np.ndarray, prediction: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(H, W, 3) uint8: dark grey where correct, red where wrong, black where not scored."""
    out = np.empty((*label.shape, 3), dtype=np.uint8)
    scored = label < num_classes
    out[:] = IGNORED_RGB
    out[scored & (label == prediction)] = CORRECT_RGB
    out[scored & (label != prediction)] = WRONG_RGB
    return out


def _resize(rgb: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """(H, W, 3) -> size (width, height)."""
    if (rgb.shape[1], rgb.shape[0]) == size:
        return rgb
    return cv2.resize(rgb, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def sample_panel(sample: EvalSample, height: int = 256) -> Image.Image:
    """image | ground truth | prediction | depth | error map, side by side at ``height`` px."""
    label_h, label_w = sample.label.shape
    size = (max(1, round(label_w * height / label_h)), height)
    tiles = [
        ("image", _resize(sample.image, size, nearest=False)),
        ("ground truth", _resize(colorize(sample.label), size, nearest=True)),
        ("prediction", _resize(colorize(sample.prediction), size, nearest=True)),
    ]
    if sample.depth is not None:
        tiles.append(("depth", _resize(colorize_depth(sample.depth), size, nearest=False)))
    tiles.append(("error", _resize(error_map(sample.label, sample.prediction), size, nearest=True)))
    caption = 14
    panel = Image.new("RGB", (size[0] * len(tiles), height + caption), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    for i, (title, tile) in enumerate(tiles):
        panel.paste(Image.fromarray(tile), (i * size[0], caption))
        draw.text((i * size[0] + 3, 1), f"{title}" + (f" - {sample.name}" if i == 0 else ""), fill=TEXT, font=font())
    return panel


def heatmap_origin(class_names: Sequence[str]) -> tuple[int, int]:
    """(x, y) of the top-left cell of :func:`confusion_heatmap`: right of the row names, below the
    rotated column names and the title."""
    label_w = max(_text_size(n)[0] for n in class_names) + 8
    return label_w + 4, label_w + 20


def confusion_heatmap(confusion: np.ndarray, class_names: Sequence[str], cell: int = 22) -> Image.Image:
    """Row-normalised confusion matrix (each ground-truth row sums to 1) as a viridis heat map."""
    matrix = np.asarray(confusion, dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    count = matrix.shape[0]
    left, top = heatmap_origin(class_names)
    label_w = left - 4
    width, height = left + count * cell + 10, top + count * cell + 10
    image = Image.new("RGB", (width, height), BACKGROUND)
    cells = apply_colormap(normalised)  # (C, C, 3)
    cells = np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)
    image.paste(Image.fromarray(cells), (left, top))
    draw = ImageDraw.Draw(image)
    draw.text((2, 2), "rows: ground truth, columns: prediction (row-normalised)", fill=TEXT, font=font())
    for i, name in enumerate(class_names):
        text_w, text_h = _text_size(name)
        draw.text((left - text_w - 4, top + i * cell + (cell - text_h) // 2 - 1), name, fill=TEXT, font=font())
        # column names: draw horizontally on a strip, then rotate it upright
        strip = Image.new("RGB", (label_w, cell), BACKGROUND)
        ImageDraw.Draw(strip).text((label_w - text_w - 4, (cell - text_h) // 2 - 1), name, fill=TEXT, font=font())
        image.paste(strip.rotate(90, expand=True), (left + i * cell, top - label_w))
        value = normalised[i, i]
        if rows[i, 0] > 0:
            shade = (0, 0, 0) if value > 0.6 else (255, 255, 255)
            text = f"{value * 100:.0f}"
            tw, th = _text_size(text)
            draw.text((left + i * cell + (cell - tw) // 2, top + i * cell + (cell - th) // 2 - 1), text, fill=shade, font=font())
    return image


def iou_bar_chart(iou: np.ndarray, class_names: Sequence[str], miou: dict[int, float] | None = None,
                  bar_width: int = 300, bar_height: int = 16) -> Image.Image:
    """Horizontal bars of per-class IoU (percent), in each class's palette colour."""
    label_w = max(_text_size(n)[0] for n in class_names) + 8
    header = 18
    width = label_w + bar_width + 60
    height = header + len(class_names) * (bar_height + 4) + 6
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    title = "per-class IoU (%)"
    if miou:
        title += "   " + "  ".join(f"mIoU{k} {v:.1f}" for k, v in miou.items() if not math.isnan(v))
    draw.text((2, 2), title, fill=TEXT, font=font())
    for i, (name, value) in enumerate(zip(class_names, iou)):
        y = header + i * (bar_height + 4)
        text_w, _ = _text_size(name)
        draw.text((label_w - text_w - 4, y + 2), name, fill=TEXT, font=font())
        draw.rectangle([label_w, y, label_w + bar_width, y + bar_height], outline=(200, 200, 200))
        if math.isnan(value):
            draw.text((label_w + 4, y + 2), "n/a", fill=TEXT, font=font())
            continue
        colour = tuple(int(c) for c in PALETTE[i]) if i < len(PALETTE) else (90, 90, 90)
        length = round(bar_width * max(0.0, min(100.0, float(value))) / 100.0)
        if length > 0:
            draw.rectangle([label_w, y, label_w + length, y + bar_height], fill=colour, outline=(60, 60, 60))
        draw.text((label_w + bar_width + 6, y + 2), f"{value:.1f}", fill=TEXT, font=font())
    return image


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "sample"


def write_report(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """Write ``confusion_matrix.png``, ``class_iou.png`` and ``samples/NN_<name>.png``."""
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    written = []
    path = out_dir / "confusion_matrix.png"
    confusion_heatmap(result.confusion, result.class_names).save(path)
    written.append(path)
    path = out_dir / "class_iou.png"
    iou_bar_chart(result.iou, result.class_names, result.miou).save(path)
    written.append(path)
    for index, sample in enumerate(result.samples):
        path = out_dir / "samples" / f"{index:03d}_{_safe_name(sample.name)}.png"
        sample_panel(sample).save(path)
        written.append(path)
    return written

