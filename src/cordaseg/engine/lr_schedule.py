"""The learning rate of iteration i: the poly schedule of the CorDA recipe, optionally preceded by
DAFormer's linear warm-up (Hoyer et al., "DAFormer", CVPR 2022: 1,500 warm-up iterations from a
ratio of 1e-6, then poly with power 1.0 over 40k iterations).

With T = ``optim.iterations``, p = ``optim.poly_power``, W = ``optim.warmup_iterations`` and
r = ``optim.warmup_ratio``, iteration i (0-based) trains with::

    poly_i = lr * (1 - i / T) ** p                      (0 from i = T on)
    lr_i   = poly_i * (1 - (1 - i / W) * (1 - r))       for i < W
    lr_i   = poly_i                                     for i >= W (and always when W = 0)

which is mmcv's ``PolyLrUpdaterHook`` with ``warmup='linear'`` and ``min_lr=0``, the schedule
DAFormer and MIC train with: the warm-up factor rises linearly from r at i = 0 towards 1 and
scales the poly value of the same iteration (not the base rate). Each parameter group then
trains at ``lr_i * group["lr_mult"]`` (heads at 10x).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cordaseg.adaptation.schedules import poly_lr

if TYPE_CHECKING:
    from cordaseg.engine.config import OptimConfig


def warmup_factor(iteration: int, warmup_iterations: int, warmup_ratio: float) -> float:
    """1 - (1 - i / W) * (1 - r) while i < W, else 1 (also for W = 0)."""
    if iteration >= warmup_iterations:
        return 1.0
    return 1.0 - (1.0 - iteration / warmup_iterations) * (1.0 - warmup_ratio)


def scheduled_lr(base_lr: float, iteration: int, optim: OptimConfig) -> float:
    """The backbone learning rate of ``iteration`` (the formula of the module docstring).

    Without a warm-up this is exactly :func:`~cordaseg.adaptation.schedules.poly_lr`.
    """
    lr = poly_lr(base_lr, iteration, optim.iterations, optim.poly_power)
    if optim.warmup_iterations == 0:
        return lr
    return lr * warmup_factor(iteration, optim.warmup_iterations, optim.warmup_ratio)
