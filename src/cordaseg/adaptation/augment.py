"""Strong augmentation of the mixed image (docs/method.md, "Training step", step 4), batched with per-image parameters.

The colour jitter follows kornia's ``ColorJiggle`` (the behaviour of the kornia 0.4.1
``ColorJitter`` the reference used): on the de-normalised image scaled to [0, 1], still in BGR
order, the input is clamped to [0, 1]; brightness (additive, ``factor - 1``), contrast
(multiplicative), saturation (HSV saturation scale) and hue (shift by ``factor`` turns) are applied
in a random order with kornia's ``adjust_*`` primitives; the result is clamped again. kornia's
module classes draw from the global RNG and share one order over a batch, so this module takes
every parameter from :class:`~cordaseg.adaptation.draws.StepDraws` instead, one order per image
as in the reference (which augmented image by image).

Vectorising a per-image order: at each of the four positions of the order, every image takes
one step. The batch goes through a fused multiply-add (brightness or contrast, with neutral
factors for the images that take the other one), kornia's saturation step and kornia's hue step,
and each image keeps the result its order asks for. The outputs equal kornia's ``ColorJiggle``
run image by image bit for bit; that matters because the clamps create flat regions whose exact
ties decide the max-pool gradient routing of the network downstream. The Gaussian blur uses
per-image kernels in one separable convolution.
"""

from __future__ import annotations

import math

import torch
from kornia.enhance import adjust_hue, adjust_saturation
from kornia.filters import filter2d_separable, get_gaussian_kernel1d

from cordaseg.adaptation.config import AugmentationConfig
from cordaseg.adaptation.draws import StepDraws

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
"""Indices of the colour steps in ``StepDraws.jitter_order`` (kornia's numbering)."""


def blur_kernel_size(side: int, fraction: float = 0.1) -> int:
    """Odd kernel side for an image side: ceil(fraction * side), minus one if even (51 for 512)."""
    size = math.ceil(fraction * side)
    return max(size - 1 if size % 2 == 0 else size, 1)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)


def color_jiggle(image01: torch.Tensor, draws: StepDraws) -> torch.Tensor:
    """ColorJiggle on (B, 3, H, W) values in [0, 1], every image with its own factors and order.

    Applied to every image of the batch; the gate is the caller's.
    """
    image = image01.clamp(0.0, 1.0)
    brightness_shift = _per_image(draws.brightness, image) - 1.0  # (B, 1, 1, 1)
    contrast = _per_image(draws.contrast, image)
    saturation = draws.saturation.to(device=image.device, dtype=image.dtype)  # (B,)
    hue_radians = draws.hue.to(device=image.device, dtype=image.dtype) * (2 * math.pi)
    order = draws.jitter_order.to(image.device)
    for position in range(4):
        step = order[:, position].view(-1, 1, 1, 1)  # (B, 1, 1, 1): the step each image takes here
        # Brightness and contrast share one multiply-add: an image doing brightness multiplies by
        # exactly 1, one doing contrast adds exactly 0, so each gets kornia's result bit for bit.
        scale = torch.where(step == CONTRAST, contrast, torch.ones_like(contrast))
        shift = torch.where(step == BRIGHTNESS, brightness_shift, torch.zeros_like(brightness_shift))
        linear = (image * scale + shift).clamp(0.0, 1.0)
        saturated = adjust_saturation(image, saturation)
        hue_shifted = adjust_hue(image, hue_radians)
        image = torch.where(step <= CONTRAST, linear, torch.where(step == SATURATION, saturated, hue_shifted))
    return image.clamp(0.0, 1.0)


def gaussian_blur(image: torch.Tensor, sigma: torch.Tensor, kernel_size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) blurred with a per-image isotropic Gaussian, reflect borders; sigma (B,)."""
    sigma = sigma.to(device=image.device, dtype=image.dtype).view(-1, 1)  # (B, 1)
    kernel_y = get_gaussian_kernel1d(kernel_size[0], sigma)  # (B, ky)
    kernel_x = get_gaussian_kernel1d(kernel_size[1], sigma)  # (B, kx)
    return filter2d_separable(image, kernel_x, kernel_y, border_type="reflect")


def strong_augment(
    image: torch.Tensor, draws: StepDraws, aug: AugmentationConfig, mean_bgr: tuple[float, float, float]
) -> torch.Tensor:
    """Jitter (gated per image) then blur (gated per image) a normalised (B, 3, H, W) BGR batch.

    Images whose gate is off are returned unchanged, bit for bit.
    """
    mean = torch.tensor(mean_bgr, dtype=image.dtype).view(1, 3, 1, 1).to(image.device, non_blocking=True)
    jittered = color_jiggle((image + mean) / 255.0, draws) * 255.0 - mean
    jitter_gate = draws.jitter_gate.to(image.device).view(-1, 1, 1, 1)
    image = torch.where(jitter_gate, jittered, image)
    # The blur is linear with a normalised kernel and reflect borders, so blurring the normalised
    # image equals blurring the de-normalised one and shifting back.
    kernel = (
        blur_kernel_size(image.shape[-2], aug.blur_kernel_fraction),
        blur_kernel_size(image.shape[-1], aug.blur_kernel_fraction),
    )
    blurred = gaussian_blur(image, draws.blur_sigma, kernel)
    blur_gate = draws.blur_gate.to(image.device).view(-1, 1, 1, 1)
    return torch.where(blur_gate, blurred, image)
