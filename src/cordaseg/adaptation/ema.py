"""Mean-teacher EMA (docs/method.md, "EMA"): the teacher's parameters follow the student's with
alpha_i = min(1 - 1/(i + 1), alpha_max), in one foreach lerp over all parameters. Buffers (batch-norm
running statistics) are not averaged: the teacher keeps its own, as in the reference.
"""

from __future__ import annotations

import torch
from torch import nn

from cordaseg.runtime.distributed import unwrap


def ema_alpha(iteration: int, alpha_max: float) -> float:
    """alpha_i = min(1 - 1 / (i + 1), alpha_max): 0 at i = 0 (the teacher becomes a copy of the student)."""
    return min(1.0 - 1.0 / (iteration + 1), alpha_max)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, iteration: int, alpha_max: float) -> float:
    """teacher = alpha * teacher + (1 - alpha) * student for every parameter; returns alpha.

    ``torch._foreach_lerp_`` updates all parameters with a handful of kernel launches instead of
    one Python-level update per tensor. Accepts DDP-wrapped models.
    """
    alpha = ema_alpha(iteration, alpha_max)
    teacher_params = [p.data for p in unwrap(teacher).parameters()]
    student_params = [p.data for p in unwrap(student).parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError(
            f"teacher has {len(teacher_params)} parameters, student {len(student_params)}: not the same network"
        )
    torch._foreach_lerp_(teacher_params, student_params, 1.0 - alpha)
    return alpha
