"""Self-supervised depth losses (docs/method.md, "Self-supervised depth"; Monodepth2 section 3).

- :func:`ssim`: structural similarity on 3x3 windows (reflection padded), per pixel;
- :func:`photometric_error`: ``0.85 * (1 - SSIM) / 2 + 0.15 * |a - b|``, averaged over channels;
- :func:`min_reprojection`: per-pixel minimum over source views with auto-masking (a pixel
  counts only where some warped source explains it better than every unwarped source);
- :func:`smoothness`: edge-aware smoothness of the mean-normalised disparity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
SSIM_WEIGHT = 0.85


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [0, 1] -> (B, C, H, W) SSIM over the 3x3 window of each pixel."""
    a = F.pad(a, (1, 1, 1, 1), mode="reflect")
    b = F.pad(b, (1, 1, 1, 1), mode="reflect")
    mu_a = F.avg_pool2d(a, 3, 1)
    mu_b = F.avg_pool2d(b, 3, 1)
    var_a = F.avg_pool2d(a * a, 3, 1) - mu_a**2
    var_b = F.avg_pool2d(b * b, 3, 1) - mu_b**2
    cov = F.avg_pool2d(a * b, 3, 1) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    denominator = (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return numerator / denominator


def photometric_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) pair -> (B, 1, H, W) error ``0.85 * (1 - SSIM) / 2 + 0.15 * L1``."""
    l1 = (prediction - target).abs().mean(1, keepdim=True)
    dissimilarity = ((1 - ssim(prediction, target)) / 2).clamp(0, 1).mean(1, keepdim=True)
    return SSIM_WEIGHT * dissimilarity + (1 - SSIM_WEIGHT) * l1


def min_reprojection(reprojection: torch.Tensor, identity: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel minimum reprojection error with optional auto-masking.

    ``reprojection``: (B, S, H, W) errors of the S warped source views; ``identity``: (B, S', H, W)
    errors of the unwarped source views, or None for no auto-masking. Returns the per-pixel loss
    (B, H, W) and the auto-mask (B, H, W) (True where the warped minimum is strictly lower, the
    pixels that train the network; elsewhere the loss is the identity error, which has no gradient).
    """
    best = reprojection.min(dim=1).values  # (B, H, W)
    if identity is None:
        return best, torch.ones_like(best, dtype=torch.bool)
    static = identity.min(dim=1).values
    mask = best < static
    return torch.where(mask, best, static), mask


def smoothness(disparity: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Edge-aware smoothness: mean of ``|dx d*| e^{-|dx I|} + |dy d*| e^{-|dy I|}`` with
    ``d* = d / mean(d)`` per image. ``disparity`` (B, 1, H, W), ``image`` (B, 3, H, W)."""
    d = disparity / (disparity.mean(dim=(2, 3), keepdim=True) + 1e-7)
    dx = (d[..., :, :-1] - d[..., :, 1:]).abs()
    dy = (d[..., :-1, :] - d[..., 1:, :]).abs()
    ix = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(1, keepdim=True)
    iy = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True)
    return (dx * torch.exp(-ix)).mean() + (dy * torch.exp(-iy)).mean()
