"""The adaptation step of CorDA (docs/method.md, "Training step"): ClassMix, strong augmentation, pixel weights,
losses, the EMA teacher and the learning-rate schedule."""

from cordaseg.adaptation.config import AdaptationConfig, AugmentationConfig
from cordaseg.adaptation.draws import StepDraws, draw_step_randomness
from cordaseg.adaptation.ema import ema_alpha, ema_update
from cordaseg.adaptation.schedules import poly_lr
from cordaseg.adaptation.step import StepOutput, adaptation_step

__all__ = [
    "AdaptationConfig",
    "AugmentationConfig",
    "StepDraws",
    "StepOutput",
    "adaptation_step",
    "draw_step_randomness",
    "ema_alpha",
    "ema_update",
    "poly_lr",
]
