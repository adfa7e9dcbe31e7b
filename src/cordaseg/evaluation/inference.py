"""Test-time inference shared by ``evaluate`` and ``predict`` (docs/method.md, "Evaluation", and beyond).

The paper's protocol is one forward pass on the resized image, with each head's output upsampled
bilinearly (``align_corners=True``, :func:`cordaseg.models.output.upsample`, the upsampling of the
training step too) straight to the size it is scored at.
Optional, off by default: sliding-window inference (overlapping crops, outputs averaged where
they overlap) and multi-scale + horizontal-flip test-time augmentation (the outputs of every
pass are brought back to the input size and averaged: logits for the semantic head, values
for the depth heads). Everything here works on a *model callable*
``image (B, 3, H, W) -> {head name: (B, K, h, w)}``, so it can be tested without a network.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from cordaseg.config import ConfigError
from cordaseg.models.output import DEPTH_NAMES, SEMANTIC, upsample

HeadOutputs = dict[str, torch.Tensor]
ModelFn = Callable[[torch.Tensor], HeadOutputs]



@dataclass
class InferenceConfig:
    """How logits are produced from an image at test time."""

    precision: Literal["fp32", "bf16"] = "fp32"
    """Autocast dtype of the forward pass; upsampling and averaging always run in float32."""
    scales: tuple[float, ...] = (1.0,)
    """Multi-scale TTA: the input is resized by each factor; (1.0,) = the paper's single scale."""
    flip: bool = False
    """Also run on the horizontally flipped input and average (TTA)."""
    sliding_window: bool = False
    """Run on overlapping crops of ``window`` instead of the whole (scaled) input."""
    window: tuple[int, int] = (512, 512)
    """Crop size (W, H) for sliding-window inference."""
    stride: tuple[int, int] = (341, 341)
    """Step (W, H) between crops; at most ``window`` so that crops cover every pixel."""

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ConfigError(f"scales: every factor must be > 0, got {self.scales!r}")
        if min(self.window) < 1 or min(self.stride) < 1:
            raise ConfigError(f"window {self.window!r} and stride {self.stride!r} must be positive")
        if self.stride[0] > self.window[0] or self.stride[1] > self.window[1]:
            raise ConfigError(f"stride {self.stride!r} is larger than window {self.window!r}: pixels would be skipped")

    @property
    def is_plain(self) -> bool:
        """True for the paper's protocol: one whole-image pass at scale 1, no flip."""
        return tuple(self.scales) == (1.0,) and not self.flip and not self.sliding_window


def model_callable(model: nn.Module, precision: str = "fp32", heads: Iterable[str] | None = None) -> ModelFn:
    """Wrap a CordaNet into a model callable returning float32 outputs of the heads it has.

    ``heads`` limits the outputs (default: the semantic head and every depth head).
    """
    wanted = (SEMANTIC, *DEPTH_NAMES) if heads is None else tuple(heads)
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision: {precision!r} is not one of 'fp32', 'bf16'")

    @torch.no_grad()
    def run(image: torch.Tensor) -> HeadOutputs:
        if precision == "bf16":
            autocast = torch.autocast(device_type=image.device.type, dtype=torch.bfloat16)
        else:
            autocast = contextlib.nullcontext()
        with autocast:
            output = model(image)
        return {name: getattr(output, name).float() for name in wanted if getattr(output, name, None) is not None}

    return run


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering ``[0, length)``; the last window is aligned to the end."""
    if length <= window:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(count)})


def sliding_window(fn: ModelFn, image: torch.Tensor, window: tuple[int, int], stride: tuple[int, int]) -> HeadOutputs:
    """Run ``fn`` on overlapping crops of ``window`` (W, H) every ``stride`` (W, H); returns each
    head at the image size, averaged where crops overlap."""
    _, _, height, width = image.shape
    win_w, win_h = min(window[0], width), min(window[1], height)
    sums: HeadOutputs = {}
    counts = image.new_zeros(1, 1, height, width, dtype=torch.float32)
    for top in _window_starts(height, win_h, stride[1]):
        for left in _window_starts(width, win_w, stride[0]):
            crop = image[:, :, top : top + win_h, left : left + win_w]
            for name, value in fn(crop).items():
                value = upsample(value, (win_h, win_w))  # (B, K, win_h, win_w)
                if name not in sums:
                    sums[name] = value.new_zeros(value.shape[0], value.shape[1], height, width)
                sums[name][:, :, top : top + win_h, left : left + win_w] += value
            counts[:, :, top : top + win_h, left : left + win_w] += 1
    return {name: total / counts for name, total in sums.items()}


def infer(fn: ModelFn, image: torch.Tensor, config: InferenceConfig, out_size: tuple[int, int]) -> HeadOutputs:
    """Every head's output for ``image`` (B, 3, H, W), at ``out_size`` (height, width).

    Plain inference upsamples the network's 1/8-resolution outputs directly to ``out_size``
    (the paper's protocol). With TTA or sliding windows, each pass is first brought to the
    input size, the passes are averaged, and the average is resized to ``out_size``.
    """
    if config.is_plain:
        return {name: upsample(value, out_size) for name, value in fn(image).items()}
    in_size = tuple(image.shape[-2:])
    totals: HeadOutputs = {}
    passes = 0
    for scale in config.scales:
        if scale == 1.0:
            scaled = image
        else:
            scaled_size = (max(1, round(in_size[0] * scale)), max(1, round(in_size[1] * scale)))
            scaled = upsample(image, scaled_size)
        for flipped in (False, True) if config.flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            if config.sliding_window:
                outputs = sliding_window(fn, x, config.window, config.stride)
            else:
                outputs = fn(x)
            for name, value in outputs.items():
                value = upsample(value, in_size)  # (B, K, H, W)
                if flipped:
                    value = value.flip(-1)
                totals[name] = totals[name] + value if name in totals else value
            passes += 1
    return {name: upsample(total / passes, out_size) for name, total in totals.items()}
