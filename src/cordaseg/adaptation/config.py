"""Configuration of the adaptation step (spec section 3): method, pseudo-labels, weights, ClassMix,
strong augmentation and the EMA teacher.

The defaults are the paper's GTA5 -> Cityscapes recipe. The SYNTHIA recipe differs only by
``initial_head_until: 0``; DACS and source-only are ``method: dacs`` / ``method: source_only``;
the ablation "no depth-based weighting" is ``depth_weighting: false``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cordaseg.config import ConfigError
from cordaseg.data.labels import IGNORE_INDEX
from cordaseg.data.normalization import CAFFE_MEAN_BGR


@dataclass
class AugmentationConfig:
    """Strong augmentation of the mixed image (spec section 3.4; kornia ColorJiggle semantics)."""

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


@dataclass
class AdaptationConfig:
    """One adaptation iteration (spec section 3), as :func:`cordaseg.adaptation.adaptation_step` runs it."""

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
    ignore_index: int = IGNORE_INDEX
    """Label value that marks unlabelled pixels; any label >= the number of classes is treated the same."""
    invalid_depth: float = 1.0
    """Depth value that marks invalid pixels (the loaders' convention, spec section 5)."""
    mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR
    """Normalisation mean (BGR, 0..255 scale) that the jitter removes and restores."""
    ema_alpha: float = 0.999
    """Largest EMA coefficient of the teacher; alpha_i = min(1 - 1 / (i + 1), ema_alpha)."""
    merged_student_pass: bool = False
    """Fast, non-reference option: one student pass over source and mixed images together.
    Batch-norm statistics are then shared by both halves, which changes the training dynamics."""
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    """Strong augmentation of the mixed image."""
    augment_decision: Literal["per_batch", "per_image"] = "per_batch"
    """Whether the jitter and blur apply / don't-apply decisions are drawn once per iteration and
    shared by the batch ('per_batch', the reference) or drawn per mixed image ('per_image'). The
    jitter factors and the blur sigma are drawn per image either way."""

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
        if not 0 <= self.ignore_index <= 255:
            raise ConfigError(f"adaptation.ignore_index: {self.ignore_index} must lie in [0, 255]")
        if not 0.0 <= self.ema_alpha < 1.0:
            raise ConfigError(f"adaptation.ema_alpha: {self.ema_alpha} must lie in [0, 1)")

    @property
    def uses_depth(self) -> bool:
        """Whether depth losses (and, if the model allows, depth weighting) are part of the step."""
        return self.method == "corda"

    @property
    def uses_target(self) -> bool:
        """Whether the step needs target images and a teacher."""
        return self.method != "source_only"
