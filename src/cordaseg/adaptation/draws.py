"""Every random number of one adaptation iteration (docs/method.md, "Training step", step 4:
ClassMix and strong augmentation), drawn up front from one ``torch.Generator`` in a fixed, documented order.

Drawing everything first keeps the step a pure function of (models, batch, iteration, generator),
lets a test replay the same draws in a plain per-image implementation, and keeps the draws on the
generator's device, so that nothing waits for the host.

Order of the draws (each ``torch.rand`` on the generator, B = batch size):

1. ``class_scores``   (B, 256): a uniform score per label value; ClassMix pastes the ceil(n/2)
   present classes with the lowest scores, i.e. a uniformly random subset without replacement.
2. ``jitter_gate``    (B,): u < jitter_p applies the colour jitter to image b. With
   ``decision="per_batch"`` (the reference) one u is drawn and shared by the batch.
3. ``brightness``, ``contrast``, ``saturation``, ``hue`` (B,) each: factors, u mapped linearly
   onto [1 - b, 1 + b] (hue: [-h, h]).
4. ``jitter_order``   (B, 4): argsort of 4 uniforms per image, a random permutation of
   (brightness, contrast, saturation, hue), as kornia's ColorJiggle draws per call.
5. ``blur_gate``      (B,): u < blur_p applies the Gaussian blur to image b (one shared u with
   ``decision="per_batch"``).
6. ``blur_sigma``     (B,): sigma, u mapped onto [sigma_min, sigma_max].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from cordaseg.adaptation.config import AugmentationConfig

NUM_LABEL_VALUES = 256
"""Label values are scored as bytes: train IDs 0..C-1 plus the ignore value."""


@dataclass
class StepDraws:
    """The random numbers of one iteration, one row per image of the batch."""

    class_scores: torch.Tensor  # (B, 256) float
    jitter_gate: torch.Tensor  # (B,) bool
    brightness: torch.Tensor  # (B,) float, factor around 1
    contrast: torch.Tensor  # (B,) float, factor around 1
    saturation: torch.Tensor  # (B,) float, factor around 1
    hue: torch.Tensor  # (B,) float, turns of the hue circle around 0
    jitter_order: torch.Tensor  # (B, 4) long, a permutation of 0..3 per image
    blur_gate: torch.Tensor  # (B,) bool
    blur_sigma: torch.Tensor  # (B,) float

    def to(self, device: torch.device | str) -> StepDraws:
        """A copy on ``device`` (non-blocking: the draws are small and nothing reads them on the host)."""
        moved = {name: value.to(device, non_blocking=True) for name, value in vars(self).items()}
        return StepDraws(**moved)


def _uniform(low: float, high: float, u: torch.Tensor) -> torch.Tensor:
    return low + (high - low) * u


def draw_step_randomness(batch_size: int, aug: AugmentationConfig, generator: torch.Generator,
                         decision: Literal["per_batch", "per_image"] = "per_image") -> StepDraws:
    """Draw all random numbers of one iteration, in the order of the module docstring.

    ``decision``: draw the jitter and blur gates once for the batch or once per image. The
    tensors live on ``generator.device``.
    """
    device = generator.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=device)

    if decision not in ("per_batch", "per_image"):
        raise ValueError(f"augmentation decision must be 'per_batch' or 'per_image', got {decision!r}")

    def gate(p: float) -> torch.Tensor:
        if decision == "per_batch":
            return (rand(1) < p).expand(b)  # (B,): one decision shared by the batch
        return rand(b) < p

    b = batch_size
    class_scores = rand(b, NUM_LABEL_VALUES)
    jitter_gate = gate(aug.jitter_p)
    brightness = _uniform(1.0 - aug.brightness, 1.0 + aug.brightness, rand(b))
    contrast = _uniform(1.0 - aug.contrast, 1.0 + aug.contrast, rand(b))
    saturation = _uniform(1.0 - aug.saturation, 1.0 + aug.saturation, rand(b))
    hue = _uniform(-aug.hue, aug.hue, rand(b))
    jitter_order = rand(b, 4).argsort(dim=1)
    blur_gate = gate(aug.blur_p)
    blur_sigma = _uniform(aug.blur_sigma_min, aug.blur_sigma_max, rand(b))
    return StepDraws(
        class_scores=class_scores,
        jitter_gate=jitter_gate,
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
        hue=hue,
        jitter_order=jitter_order,
        blur_gate=blur_gate,
        blur_sigma=blur_sigma,
    )
