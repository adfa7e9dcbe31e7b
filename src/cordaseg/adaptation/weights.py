"""Pixel weights of the mixed-image loss (spec section 3.6): the confidence weight of DACS and
CorDA's depth-based adaptation difficulty.

Everything stays on the device: the confidence fraction is a 0-d tensor, never a Python float.
"""

from __future__ import annotations

import torch

from cordaseg.adaptation.classmix import mix


def confidence_fraction(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fraction of ALL pixels of the batch whose top softmax probability is >= threshold (0-d tensor)."""
    return (confidence >= threshold).to(torch.float32).mean()


def confidence_weight(mask: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """(B, H, W) weight: 1 on pasted source pixels, the confidence fraction on target pixels."""
    return mix(mask, torch.ones_like(mask), fraction.to(mask.dtype).expand_as(mask))


def depth_weight(
    depth_source: torch.Tensor,
    depth_target: torch.Tensor,
    mixed_depth: torch.Tensor,
    floor: float = 1e-3,
    invalid_depth: float = 1.0,
) -> torch.Tensor:
    """Adaptation difficulty from the disagreement of the two depth decoders, (B, H, W), no gradient.

    diff = |D_src - D|; s = relu(1 - diff / d_m) + floor; w = clip(s + [d_m == invalid], 0, 1):
    pixels where the decoders disagree by as much as the depth itself get weight ``floor``;
    invalid depth gets weight 1.
    """
    with torch.no_grad():
        diff = (depth_source - depth_target).abs()
        score = torch.relu(1.0 - diff / mixed_depth) + floor
        invalid = (mixed_depth == invalid_depth).to(score.dtype)
        return (score + invalid).clamp(0.0, 1.0)


def pixel_weight(conf_weight: torch.Tensor, depth_w: torch.Tensor | None) -> torch.Tensor:
    """w = w_conf * w_depth / mean(w_depth) (mean over the whole batch); w_conf alone without depth."""
    if depth_w is None:
        return conf_weight
    return conf_weight * depth_w / depth_w.mean()
