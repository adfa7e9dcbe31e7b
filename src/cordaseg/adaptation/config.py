"""Configuration of the adaptation step (docs/method.md, "Training step"): method, pseudo-labels, weights, ClassMix,
strong augmentation and the EMA teacher.

The defaults are the paper's GTA5 -> Cityscapes recipe. The SYNTHIA recipe differs only by
``initial_head_until: 0``; DACS and source-only are ``method: dacs`` / ``method: source_only``;
the ablation "no depth-based weighting" is ``depth_weighting: false``. DAFormer's training
strategies (thing-class feature distance, pseudo-label row crop) and MIC's masked image
consistency are options here, off by default (README, "Choosing a recipe").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cordaseg.config import ConfigError


@dataclass
class AugmentationConfig:
    """Strong augmentation of the mixed image (docs/method.md, "Training step", step 4; kornia
    ColorJiggle semantics)."""

    jitter_p: float = 0.8
    """Probability of applying the colour jitter (per batch or per image: ``adaptation.augment_decision``)."""
    brightness: float = 0.25
    """Brightness factor drawn from U(1 - b, 1 + b); applied additively as ``factor - 1`` on [0, 1] values."""
    contrast: float = 0.25
    """Contrast factor drawn from U(1 - c, 1 + c); multiplies the [0, 1] values."""
    saturation: float = 0.25
    """Saturation factor drawn from U(1 - s, 1 + s); multiplies the HSV saturation."""
    hue: float = 0.25
    """Hue shift drawn from U(-h, h), in turns of the hue circle (at most 0.5)."""
    blur_p: float = 0.5
    """Probability of applying the Gaussian blur, after the jitter (per batch or per image, as the jitter)."""
    blur_sigma_min: float = 0.15
    """Lower bound of the blur's standard deviation, drawn uniformly per image."""
    blur_sigma_max: float = 1.15
    """Upper bound of the blur's standard deviation."""
    blur_kernel_fraction: float = 0.1
    """Kernel side as a fraction of the image side, rounded up, then down to an odd size (51 for 512)."""

    def __post_init__(self) -> None:
        for name in ("jitter_p", "blur_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"adaptation.augmentation.{name}: {value} is not a probability in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"adaptation.augmentation.{name}: {value} must lie in [0, 1]")
        if not 0.0 <= self.hue <= 0.5:
            raise ConfigError(f"adaptation.augmentation.hue: {self.hue} must lie in [0, 0.5]")
        if not 0.0 < self.blur_sigma_min <= self.blur_sigma_max:
            raise ConfigError(
                "adaptation.augmentation.blur_sigma_min/blur_sigma_max: need 0 < min <= max, got "
                f"{self.blur_sigma_min}, {self.blur_sigma_max}"
            )
        if not 0.0 < self.blur_kernel_fraction <= 1.0:
            raise ConfigError(
                f"adaptation.augmentation.blur_kernel_fraction: {self.blur_kernel_fraction} must lie in (0, 1]"
            )


THING_CLASSES: tuple[int, ...] = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)
"""Cityscapes train IDs of the classes DAFormer's feature distance is restricted to: traffic light,
traffic sign, person, rider, car, truck, bus, train, motorcycle, bicycle."""


@dataclass
class MicConfig:
    """Masked image consistency (Hoyer et al., "MIC", CVPR 2023; :mod:`cordaseg.adaptation.mic`)."""

    enabled: bool = False
    """Add the masked-target loss: the student on a patch-masked target image against the teacher's
    pseudo-labels of the unmasked image."""
    patch: int = 64
    """Side of the square mask patches in pixels (MIC: 64 at full resolution; 32 for DAFormer's
    half-resolution 512x512 crops, the setting of its DAFormer-based GTA5 -> Cityscapes runs)."""
    ratio: float = 0.7
    """Probability that a patch is masked (set to 0); a patch is kept with probability 1 - ratio."""
    weight: float = 1.0
    """Weight of the masked-image loss in the total (MIC: 1)."""
    augment: bool = True
    """Colour-jitter and blur the target image (``adaptation.augmentation``) before masking it, as
    MIC's ``separatetrgaug`` mode."""

    def __post_init__(self) -> None:
        if self.patch < 1:
            raise ConfigError(f"adaptation.mic.patch: {self.patch} must be >= 1")
        if not 0.0 <= self.ratio <= 1.0:
            raise ConfigError(f"adaptation.mic.ratio: {self.ratio} must lie in [0, 1]")
        if self.weight < 0:
            raise ConfigError(f"adaptation.mic.weight: {self.weight} must be >= 0")


@dataclass
class AdaptationConfig:
    """One adaptation iteration (docs/method.md, "Training step"), as :func:`cordaseg.adaptation.adaptation_step` runs it."""

    method: Literal["corda", "dacs", "source_only"] = "corda"
    """corda: the full recipe; dacs: the same loop without any depth term; source_only: source CE only."""
    initial_head_until: int = 25001
    """Pseudo-labels come from the teacher's initial semantic head while iteration < this (GTA: 25001, SYNTHIA: 0)."""
    confidence_threshold: float = 0.968
    """The confidence weight is the fraction of target pixels whose top softmax probability is at least this."""
    depth_weighting: bool = True
    """Weight pseudo-labels by the depth discrepancy of the two depth decoders (off: ablation "no depth weighting")."""
    depth_weight: Literal["reference_cross_batch", "per_image"] = "reference_cross_batch"
    """Form of the depth-based weight: 'reference_cross_batch' (the reference's broadcast over
    every pair of images of the per-process batch, with which the published models were
    trained) or 'per_image' (the paper's formula). Equal for a batch of one; see
    docs/reference-behaviour.md."""
    depth_weight_floor: float = 1e-3
    """Added to the depth-based weight before clipping, so no pixel gets exactly zero weight."""
    source_depth_weight: float = 0.01
    """Weight of each berHu term of the source loss."""
    target_depth_weight: float = 0.001
    """Weight of each berHu term of the mixed-image loss."""
    berhu_threshold: float = 0.2
    """berHu switches from L1 to scaled L2 above this fraction of the largest error in the batch."""
    classmix_ignore_as_class: bool = True
    """ClassMix counts the ignore value as a class that can be pasted (the reference's behaviour)."""
    ema_alpha: float = 0.999
    """Largest EMA coefficient of the mean teacher; alpha_i = min(1 - 1 / (i + 1), ema_alpha). The
    engine applies the update after every optimiser step (:func:`cordaseg.adaptation.ema.ema_update`)."""
    merged_student_pass: bool = False
    """Fast, non-reference option: one student pass over source and mixed images together.
    Batch-norm statistics are then shared by both halves, which changes the training dynamics."""
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    """Strong augmentation of the mixed image."""
    augment_decision: Literal["per_batch", "per_image"] = "per_batch"
    """Whether the jitter and blur apply / don't-apply decisions are drawn once per iteration and
    shared by the batch ('per_batch', the reference) or drawn per mixed image ('per_image'). The
    jitter factors and the blur sigma are drawn per image either way."""
    feature_distance_weight: float = 0.0
    """Weight of DAFormer's thing-class ImageNet feature distance in the source loss (DAFormer:
    0.005; 0 = off). Needs a network with ``encode(x)``; see :mod:`cordaseg.adaptation.feature_distance`."""
    feature_distance_classes: tuple[int, ...] = THING_CLASSES
    """Train IDs whose source pixels the feature distance covers (DAFormer: the Cityscapes thing classes)."""
    feature_distance_min_share: float = 0.75
    """A feature cell counts as class c when c covers at least this share of its label pixels (DAFormer: 0.75)."""
    pseudo_label_ignore_top: int = 0
    """Pixel weight 0 for the target pixels of the mixed image in this many top rows (DAFormer: 15
    for 512x512 Cityscapes crops)."""
    pseudo_label_ignore_bottom: int = 0
    """Pixel weight 0 for the target pixels in this many bottom rows (DAFormer: 120, the ego car)."""
    mic: MicConfig = field(default_factory=MicConfig)
    """Masked image consistency (MIC); off by default."""

    def __post_init__(self) -> None:
        if self.initial_head_until < 0:
            raise ConfigError(f"adaptation.initial_head_until: {self.initial_head_until} must be >= 0")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ConfigError(
                f"adaptation.confidence_threshold: {self.confidence_threshold} must lie in [0, 1]"
            )
        for name in ("source_depth_weight", "target_depth_weight", "depth_weight_floor"):
            if getattr(self, name) < 0:
                raise ConfigError(f"adaptation.{name}: {getattr(self, name)} must be >= 0")
        if not 0.0 < self.berhu_threshold <= 1.0:
            raise ConfigError(f"adaptation.berhu_threshold: {self.berhu_threshold} must lie in (0, 1]")
        if not 0.0 <= self.ema_alpha < 1.0:
            raise ConfigError(f"adaptation.ema_alpha: {self.ema_alpha} must lie in [0, 1)")
        if self.feature_distance_weight < 0:
            raise ConfigError(f"adaptation.feature_distance_weight: {self.feature_distance_weight} must be >= 0")
        if not 0.5 < self.feature_distance_min_share <= 1.0:
            # Above one half, at most one class can reach the share, so a cell has one class.
            raise ConfigError(
                f"adaptation.feature_distance_min_share: {self.feature_distance_min_share} must lie in (0.5, 1]"
            )
        for name in ("pseudo_label_ignore_top", "pseudo_label_ignore_bottom"):
            if getattr(self, name) < 0:
                raise ConfigError(f"adaptation.{name}: {getattr(self, name)} must be >= 0")
        if self.mic.enabled and self.method == "source_only":
            raise ConfigError("adaptation.mic.enabled: MIC needs the teacher's target pseudo-labels, which "
                              "method 'source_only' does not make")

    @property
    def uses_depth(self) -> bool:
        """Whether depth losses (and, if the model allows, depth weighting) are part of the step."""
        return self.method == "corda"

    @property
    def uses_target(self) -> bool:
        """Whether the step needs target images and a teacher."""
        return self.method != "source_only"
