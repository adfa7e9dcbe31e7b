"""Image normalisation of the reference (docs/data-formats.md, "Images"): RGB -> BGR, subtract the caffe mean,
no scaling (values stay on the 0..255 scale)."""

from __future__ import annotations

import numpy as np
import torch

CAFFE_MEAN_BGR: tuple[float, float, float] = (104.00698793, 116.66876762, 122.67891434)


def normalize_rgb(rgb: np.ndarray, mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 BGR minus mean."""
    bgr = np.ascontiguousarray(rgb[..., ::-1], dtype=np.float32)
    bgr -= np.asarray(mean_bgr, dtype=np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1))


def denormalize(image: torch.Tensor, mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR) -> torch.Tensor:
    """(B, 3, H, W) normalised BGR -> BGR on the 0..255 scale (same layout)."""
    mean = torch.tensor(mean_bgr, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return image + mean


def to_display_rgb(image: torch.Tensor, mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) uint8 RGB for pictures."""
    bgr = denormalize(image.detach().float().cpu()[None], mean_bgr)[0]
    rgb = bgr.flip(0).clamp(0, 255).round().to(torch.uint8)
    return rgb.permute(1, 2, 0).numpy()
