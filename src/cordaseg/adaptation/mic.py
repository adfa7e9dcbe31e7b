"""Masked image consistency (Hoyer et al., "MIC: Masked Image Consistency for Context-Enhanced
Domain Adaptation", CVPR 2023; ``MaskingConsistencyModule`` and ``BlockMaskGenerator`` in its
``seg/mmseg/models/uda``), the ``separatetrgaug`` mode its GTA5 -> Cityscapes runs use.

The student sees the target image with most of its patches blanked out and must still predict
the EMA teacher's pseudo-labels of the whole, unmasked image, which it can only do from the
context that remains::

    u      ~ U(0, 1)                          (B, 1, gh, gw), gh = round(H / patch), gw = round(W / patch)
    keep   = [u > ratio]                      a patch stays visible with probability 1 - ratio (0.3)
    M      = nearest-upsample(keep, (H, W))   (B, 1, H, W): each patch x patch block all 0 or all 1
    x_mask = M * augment(x_tgt)               0 = the mean colour of the normalised image
    L_MIC  = mean over all pixels of w_tgt * CE(S(x_mask), y_tgt)       (and the same for S_init)

``y_tgt`` is the teacher's pseudo-label of the unaugmented, unmasked target (the one the mixed
image uses) and ``w_tgt`` its pixel weight: the confidence fraction, with the pseudo-label row
crop applied (:mod:`cordaseg.adaptation.pseudo_label_crop`); the depth-based weight of CorDA is
not used here. ``augment`` is the step's strong augmentation (colour jitter and blur, with
``adaptation.augmentation``) with draws of its own; ``adaptation.mic.augment: false`` skips it.
The total gains ``adaptation.mic.weight * L_MIC`` (MIC: 1). For CorDA's network the initial
semantic head is supervised as well, as in the mixed-image loss.

Randomness: after the step's own draws (:mod:`cordaseg.adaptation.draws`), the generator gives
first ``u`` (one ``torch.rand`` of shape (B, 1, gh, gw)), then, with ``augment``, a full
:class:`~cordaseg.adaptation.draws.StepDraws` for the masked image. Nothing reads a global RNG,
so a resumed run masks exactly as the uninterrupted one. A side shorter than half a patch still
gets one patch row or column (MIC's ``round`` would give none).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cordaseg.adaptation.augment import strong_augment
from cordaseg.adaptation.config import AdaptationConfig
from cordaseg.adaptation.draws import StepDraws, draw_step_randomness
from cordaseg.adaptation.losses import weighted_cross_entropy
from cordaseg.data.labels import IGNORE_INDEX
from cordaseg.data.normalization import CAFFE_MEAN_BGR


@dataclass
class MicDraws:
    """The random numbers of the masked image of one iteration."""

    keep: torch.Tensor  # (B, 1, gh, gw) bool: the patches that stay visible
    augmentation: StepDraws | None  # the masked image's jitter and blur; None without augment

    def to(self, device: torch.device | str) -> MicDraws:
        augmentation = None if self.augmentation is None else self.augmentation.to(device)
        return MicDraws(self.keep.to(device, non_blocking=True), augmentation)


def patch_grid(height: int, width: int, patch: int) -> tuple[int, int]:
    """(gh, gw) = (round(H / patch), round(W / patch)), each at least 1."""
    return max(1, round(height / patch)), max(1, round(width / patch))


def draw_mic(batch_size: int, height: int, width: int, cfg: AdaptationConfig,
             generator: torch.Generator) -> MicDraws:
    """Draw the patch mask (then the augmentation) of the masked image, in the module docstring's order."""
    grid = patch_grid(height, width, cfg.mic.patch)
    u = torch.rand((batch_size, 1, *grid), generator=generator, device=generator.device)
    augmentation = None
    if cfg.mic.augment:
        augmentation = draw_step_randomness(batch_size, cfg.augmentation, generator, cfg.augment_decision)
    return MicDraws(keep=u > cfg.mic.ratio, augmentation=augmentation)


def patch_mask(keep: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, gh, gw) bool -> (B, 1, H, W) float: nearest upsampling, 1 where the image stays visible."""
    return F.interpolate(keep.to(torch.float32), size=size, mode="nearest")


def masked_image(image: torch.Tensor, draws: MicDraws, cfg: AdaptationConfig,
                 mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR) -> torch.Tensor:
    """The (B, 3, H, W) target normalised with ``mean_bgr``, augmented (unless ``mic.augment`` is off)
    and patch-masked."""
    with torch.autocast(device_type=image.device.type, enabled=False):
        if draws.augmentation is not None:
            image = strong_augment(image, draws.augmentation, cfg.augmentation, mean_bgr)
        return image * patch_mask(draws.keep, tuple(image.shape[-2:])).to(image.dtype)


def masked_image_consistency(
    predict: Callable[[torch.Tensor], object],
    target_image: torch.Tensor,
    pseudo_label: torch.Tensor,
    pseudo_weight: torch.Tensor,
    draws: MicDraws,
    cfg: AdaptationConfig,
    mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """L_MIC (unweighted), its named parts and the masked image.

    ``predict`` maps an image batch to the student's predictions upsampled to the crop (fields
    ``semantic`` and ``semantic_initial``, logits (B, C, H, W)); ``pseudo_label`` (B, H, W) long and
    ``pseudo_weight`` (B, H, W) are the teacher's label and its weight on the unmasked target.
    """
    image = masked_image(target_image, draws, cfg, mean_bgr)
    prediction = predict(image)
    with torch.autocast(device_type=target_image.device.type, enabled=False):
        terms = {"mic_ce": weighted_cross_entropy(prediction.semantic, pseudo_label, pseudo_weight,
                                                  IGNORE_INDEX)}
        if getattr(prediction, "semantic_initial", None) is not None:
            terms["mic_ce_initial"] = weighted_cross_entropy(prediction.semantic_initial, pseudo_label,
                                                             pseudo_weight, IGNORE_INDEX)
        total = sum(terms.values())
    return total, terms, image
