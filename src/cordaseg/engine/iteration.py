"""One training iteration as ``cordaseg train`` runs it (docs/method.md, "Training step"; the
poly schedule of "Optimiser and schedule", steps 2-8 through :func:`~cordaseg.adaptation.adaptation_step`, the SGD update
and the EMA teacher of step 9).

:func:`train_iteration` is everything the trainer does per iteration except loading the batch
and logging: set the learning rate, run the adaptation step under the configured autocast, zero
the gradients, backward, SGD step, EMA update. ``benchmarks/train_step.py`` calls the same
function, so it times exactly this code path. :func:`make_state`, :func:`build_optimizer` and
:func:`numerics` are the state, the optimiser and the process settings both use.

The iteration reads no tensor on the host: the loss and its terms stay 0-d device tensors until
the trainer's logging interval.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from cordaseg.adaptation import adaptation_step
from cordaseg.adaptation.ema import ema_update
from cordaseg.adaptation.step import StepOutput
from cordaseg.engine.adamw import build_adamw
from cordaseg.engine.config import TrainConfig
from cordaseg.engine.lr_schedule import scheduled_lr
from cordaseg.engine.optim import MultiplicitySGD
from cordaseg.models.corda import param_groups


@dataclass
class IterationState:
    """What one iteration updates: the networks and the optimiser, with the run's configuration."""

    model: nn.Module
    """The student as it is called: the network, or its DDP wrapper under torchrun."""
    teacher: nn.Module | None
    """The EMA teacher (None for source-only training)."""
    optimizer: torch.optim.Optimizer
    """:class:`~cordaseg.engine.optim.MultiplicitySGD` over :func:`~cordaseg.models.corda.param_groups`
    (each group has an ``lr_mult`` and a ``multiplicity``)."""
    cfg: TrainConfig
    """The run's configuration (optim schedule, adaptation step, precision)."""
    base_lr: float
    """Learning rate of the backbone group at iteration 0 (after ``optim.lr_scaling``)."""
    feature_reference: nn.Module | None = None
    """Frozen copy of the initial network for the feature distance (None when it is off)."""


def make_state(model: nn.Module, teacher: nn.Module | None, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
               base_lr: float, feature_reference: nn.Module | None = None) -> IterationState:
    """The iteration state; with ``run.compile`` the networks are called through ``torch.compile``.

    The compiled wrappers share their parameters and buffers with ``model`` and ``teacher``, so
    the optimiser, the EMA update, evaluation and checkpoints keep working on the originals.
    """
    if cfg.run.compile:
        model = torch.compile(model)
        teacher = torch.compile(teacher) if teacher is not None else None
    return IterationState(model, teacher, optimizer, cfg, base_lr, feature_reference)


@dataclass
class IterationOutput:
    """What one iteration gives back."""

    step: StepOutput
    """The adaptation step's loss, detached terms and visuals."""
    lr: float
    """The backbone learning rate used in this iteration."""


def sgd_flags(implementation: str, device: torch.device) -> dict[str, bool | None]:
    """``fused`` / ``foreach`` arguments of :class:`torch.optim.SGD` (and AdamW) for ``optim.implementation``."""
    if implementation == "auto":
        implementation = "fused" if device.type == "cuda" else "default"
    return {
        "fused": {"fused": True, "foreach": None, "for_loop": None, "default": None}[implementation],
        "foreach": {"fused": None, "foreach": True, "for_loop": False, "default": None}[implementation],
    }


def build_optimizer(model: nn.Module, cfg: TrainConfig, base_lr: float,
                    device: torch.device) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay over the 1x backbone / ``head_lr_mult`` x head groups,
    with the reference's parameter multiplicity unless ``optim.param_multiplicity`` is ``once``;
    or, with ``optim.name: adamw``, DAFormer's AdamW (:mod:`cordaseg.engine.adamw`)."""
    optim = cfg.optim
    if optim.name == "adamw":
        return build_adamw(model, base_lr, optim.head_lr_mult, optim.weight_decay, optim.betas, optim.eps,
                           optim.no_decay_norms, sgd_flags(optim.implementation, device))
    return MultiplicitySGD(
        param_groups(model, base_lr, cfg.optim.head_lr_mult, cfg.optim.param_multiplicity),
        lr=base_lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
        **sgd_flags(cfg.optim.implementation, device),
    )


def apply_sgd_flags(optimizer: torch.optim.Optimizer, cfg: TrainConfig, device: torch.device) -> None:
    """Set the configured kernels again after ``load_state_dict`` (which restores the saved ones)."""
    flags = sgd_flags(cfg.optim.implementation, device)
    for group in optimizer.param_groups:
        group.update(flags)


@contextlib.contextmanager
def numerics(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """Deterministic kernels, or cudnn.benchmark on CUDA; the process's settings come back after."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if cfg.run.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    # cudnn.benchmark picks the fastest convolution algorithm per shape once; every iteration has
    # the same shapes, so that search pays off after the first one.
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.run.deterministic
    torch.backends.cudnn.deterministic = cfg.run.deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``run.precision: bf16``, nothing for fp32."""
    if cfg.run.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_iteration(
    state: IterationState,
    batch: dict[str, torch.Tensor | None],
    iteration: int,
    generator: torch.Generator,
    *,
    with_visuals: bool = False,
    step: Callable[..., StepOutput] = adaptation_step,
) -> IterationOutput:
    """Iteration ``iteration`` (0-based) on a batch already on the device.

    ``batch``: the adaptation step's flat batch (``source_image``, ``source_label``,
    ``source_depth``, ``target_image``, ``target_depth``). ``generator`` supplies every random
    draw of the step. ``step`` is the adaptation step (replaceable in tests).
    """
    cfg = state.cfg
    lr = scheduled_lr(state.base_lr, iteration, cfg.optim)
    for group in state.optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    device = batch["source_image"].device
    extra = {} if state.feature_reference is None else {"feature_reference": state.feature_reference}
    with autocast(cfg, device):
        out = step(state.model, state.teacher, batch, cfg.adaptation, iteration, generator,
                   with_visuals=with_visuals, teacher_stream=cfg.run.teacher_stream,
                   mean_bgr=cfg.source.mean_bgr, **extra)
    state.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    state.optimizer.step()
    if state.teacher is not None:
        ema_update(state.teacher, state.model, iteration, cfg.adaptation.ema_alpha)
    return IterationOutput(step=out, lr=lr)
