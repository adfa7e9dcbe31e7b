"""Pixel weights of the mixed-image loss (docs/method.md, "Weights"): the confidence weight of DACS and
CorDA's depth-based adaptation difficulty.

Everything stays on the device: the confidence fraction is a 0-d tensor, never a Python float.
"""

from __future__ import annotations

from typing import Literal

import torch

from cordaseg.adaptation.classmix import mix
from cordaseg.data.formats import INVALID_DEPTH


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
    invalid_depth: float = INVALID_DEPTH,
    form: Literal["reference_cross_batch", "per_image"] = "per_image",
) -> torch.Tensor:
    """Adaptation difficulty from the disagreement of the two depth decoders, (B, H, W), no gradient.

    ``per_image`` (the paper): diff = |D_src - D|; s = relu(1 - diff / d_m) + floor;
    w = clip(s + [d_m == invalid], 0, 1): pixels where the decoders disagree by as much as the
    depth itself get weight ``floor``; invalid depth gets weight 1.

    ``reference_cross_batch`` (what the published models were trained with): the reference's
    predictions are (B, 1, H, W) and its depth target (B, H, W), so the formula broadcasts to
    dw[i, j] = clip(relu(1 - |D_src_i - D_i| / d_m_j) + floor + [d_m_j == invalid], 0, 1) over
    every pair (i, j) of the batch, and its loss weights image j's cross-entropy by dw[i, j] for
    every i. The mean over i, ``dw[:, j].mean(0)``, is returned: it gives the same loss and the
    same mean(dw) (see docs/reference-behaviour.md). For a batch of one both forms are equal.
    Under DDP the batch is the per-process batch.
    """
    with torch.no_grad():
        diff = (depth_source - depth_target).abs()  # (B, H, W): image i
        depth = mixed_depth  # (B, H, W): image j
        if form == "reference_cross_batch":
            diff, depth = diff.unsqueeze(1), mixed_depth.unsqueeze(0)  # (B_i, 1, H, W), (1, B_j, H, W)
        elif form != "per_image":
            raise ValueError(f"depth weight form must be 'reference_cross_batch' or 'per_image', got {form!r}")
        score = torch.relu(1.0 - diff / depth) + floor
        invalid = (depth == invalid_depth).to(score.dtype)
        weight = (score + invalid).clamp(0.0, 1.0)  # (B, H, W), or (B_i, B_j, H, W) across the batch
        return weight.mean(dim=0) if form == "reference_cross_batch" else weight


def pixel_weight(conf_weight: torch.Tensor, depth_w: torch.Tensor | None) -> torch.Tensor:
    """w = w_conf * w_depth / mean(w_depth) (mean over the whole batch); w_conf alone without depth."""
    if depth_w is None:
        return conf_weight
    return conf_weight * depth_w / depth_w.mean()
