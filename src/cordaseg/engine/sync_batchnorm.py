"""Batch normalisation with the statistics of the global batch, for DDP training on any device.

The reference trains with ``use_sync_batchnorm`` on several GPUs (DACS's ``trainUDA.py``, which
CorDA builds on): every batch-norm layer of the student and of the EMA teacher normalises with the
mean and variance of the whole batch over all devices. :class:`SyncBatchNorm2d` does that with
plain tensor operations and one autograd-aware all-reduce, so it runs with gloo on the CPU as
well as with NCCL on GPUs (``torch.nn.SyncBatchNorm`` needs CUDA). With ``world_size`` processes
of batch ``b``, forward, backward and the running statistics are those of one process with batch
``world_size * b``, up to rounding; ``tests/test_sync_batchnorm.py`` checks that with two gloo
processes.

:func:`convert_sync_batchnorm` swaps every ``nn.BatchNorm2d`` of a model for one, sharing its
parameters and buffers: the state-dict keys do not change, so checkpoints load either way.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn


def _all_reduce_sum_with_grad(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Sum of ``tensor`` over the ranks; its backward sums the incoming gradients over the ranks."""
    group = group if group is not None else dist.group.WORLD
    # torch.compiler.is_compiling is missing before PyTorch 2.3; there the eager collective is used.
    if getattr(torch.compiler, "is_compiling", lambda: False)():
        # The traceable collective (with an autograd formula in current PyTorch).
        from torch.distributed import _functional_collectives as funcol

        return funcol.all_reduce(tensor, "sum", group)
    with warnings.catch_warnings():
        # Deprecated in recent PyTorch in favour of the functional collective above, whose eager
        # autograd formula older releases (>= 2.1, which this package supports) do not have.
        warnings.simplefilter("ignore", FutureWarning)
        return dist_nn.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are those of the batch over all ranks.

    In ``train()`` mode inside a process group of more than one rank, each rank sums its
    activations, their squares and its element count per channel; one all-reduce gives the global
    mean and (biased) variance, which normalise the input, and the running statistics are updated
    with the unbiased variance over the global count, as ``nn.BatchNorm2d`` would on the whole
    batch. Gradients reach every rank's input through the all-reduce. In ``eval()`` mode, or
    without such a process group, it is exactly ``nn.BatchNorm2d``.

    A subclass of ``nn.BatchNorm2d``: same parameters, buffers and state-dict keys, and
    ``isinstance`` checks (the backbone's frozen-affine and frozen-statistics handling) still find it.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: dist.ProcessGroup | None = None,
                 device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group  # the ranks whose batches are pooled; None: all of them

    def _synchronised(self) -> bool:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return False
        return dist.get_world_size(self.process_group) > 1

    def _average_factor(self) -> float:
        """Weight of this batch in the running statistics (counts the batch, as nn.BatchNorm2d does)."""
        if self.num_batches_tracked is None:
            return 0.0 if self.momentum is None else self.momentum
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative average
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._synchronised():
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        # Low-precision activations (bf16 autocast) are normalised in float32, and the per-channel
        # sums accumulate in float64: the variance E[x^2] - E[x]^2 subtracts two close numbers.
        values = x.to(torch.promote_types(x.dtype, torch.float32))
        dims = (0, 2, 3)
        local = torch.cat([
            values.sum(dims, dtype=torch.float64),
            (values * values).sum(dims, dtype=torch.float64),
            values.new_full((1,), values.numel() // channels, dtype=torch.float64),
        ])  # (2C + 1,): sum, sum of squares, count
        total = _all_reduce_sum_with_grad(local, self.process_group)
        count = total[2 * channels]
        mean = total[:channels] / count.clamp_min(1)  # (C,)
        var = (total[channels:2 * channels] / count.clamp_min(1) - mean * mean).clamp_min(0)  # biased, (C,)

        if self.training and self.track_running_stats:
            factor = self._average_factor()
            with torch.no_grad():
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)

        scale = torch.rsqrt(var + self.eps).to(values.dtype)  # (C,)
        if self.weight is not None:
            scale = scale * self.weight
        out = (values - mean.to(values.dtype)[:, None, None]) * scale[:, None, None]  # (B, C, H, W)
        if self.bias is not None:
            out = out + self.bias[:, None, None]
        return out.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, process_group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replace every plain ``nn.BatchNorm2d`` in ``module`` by a :class:`SyncBatchNorm2d`.

    The new layers share the old ones' parameters (with their ``requires_grad``) and buffers, and
    take their ``eps``, ``momentum``, ``affine``, ``track_running_stats`` and train/eval mode.
    Children are replaced in place; the return value is ``module``, or its replacement when
    ``module`` itself is a batch-norm layer. Subclasses of ``nn.BatchNorm2d`` (including
    :class:`SyncBatchNorm2d`) are left as they are.
    """
    if type(module) is nn.BatchNorm2d:
        replacement = SyncBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats, process_group=process_group, device="meta")
        if module.affine:
            replacement.weight = module.weight
            replacement.bias = module.bias
        replacement.running_mean = module.running_mean
        replacement.running_var = module.running_var
        replacement.num_batches_tracked = module.num_batches_tracked
        replacement.train(module.training)
        return replacement
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, process_group)
        if converted is not child:
            module.add_module(name, converted)
    return module
