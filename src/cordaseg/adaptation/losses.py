"""Losses of the adaptation step (docs/method.md, "Losses"): cross-entropy over labelled pixels, the
pixel-weighted cross-entropy of the mixed image, and the berHu (reverse Huber) depth loss.

All reductions are written so that an empty selection gives 0, not NaN, and without boolean
indexing (which would need the host to know the number of selected pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cordaseg.data.formats import INVALID_DEPTH
from cordaseg.models.output import at_least_float32


def cross_entropy(logits: torch.Tensor, label: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean CE over pixels whose label is not ``ignore_index``; (B, C, H, W) logits, (B, H, W) label."""
    per_pixel = F.cross_entropy(at_least_float32(logits), label, ignore_index=ignore_index, reduction="none")  # (B, H, W)
    labelled = (label != ignore_index).sum().clamp(min=1)
    return per_pixel.sum() / labelled


def weighted_cross_entropy(
    logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Mean over ALL pixels of weight * CE; ignored pixels contribute 0 but count in the mean."""
    per_pixel = F.cross_entropy(at_least_float32(logits), label, ignore_index=ignore_index, reduction="none")  # (B, H, W)
    return (weight * per_pixel).mean()


def berhu(
    prediction: torch.Tensor, target: torch.Tensor, threshold: float = 0.2, invalid_depth: float = INVALID_DEPTH
) -> torch.Tensor:
    """Reverse Huber loss over valid pixels (target != invalid_depth); prediction and target (B, H, W).

    e = |pred - target|; c = threshold * max(e) over the batch's valid pixels (no gradient);
    loss = mean(e if e <= c else (e^2 + c^2) / (2c)).
    """
    prediction = at_least_float32(prediction)
    valid = target != invalid_depth
    error = torch.where(valid, (prediction - target).abs(), torch.zeros_like(prediction))
    c = threshold * error.detach().amax()
    # Both branches of torch.where are evaluated: keep the unused one finite where c == 0 (then
    # every error is 0 and the L1 branch is taken), or its NaN gradient would leak through.
    c_safe = c.clamp(min=torch.finfo(error.dtype).tiny)
    per_pixel = torch.where(error <= c, error, (error * error + c * c) / (2 * c_safe))
    per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    return per_pixel.sum() / valid.sum().clamp(min=1)
