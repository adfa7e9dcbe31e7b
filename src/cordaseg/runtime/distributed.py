"""Multi-GPU and multi-node work through ``torch.distributed`` and ``torchrun``.

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init` reads them and starts a process group (NCCL on GPUs, gloo on CPU). Without them the
run is a single process and nothing here touches ``torch.distributed``. Only the student is
wrapped in DDP; the EMA teacher is updated from the (already synchronised) student parameters, so
it stays identical on every rank without any communication.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cordaseg.runtime.device import resolve_device


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job."""

    rank: int = 0
    """Global rank, 0..world_size-1; rank 0 logs and writes checkpoints."""
    local_rank: int = 0
    """Rank on this node: the CUDA device index this process uses."""
    world_size: int = 1
    """Number of processes in the job."""
    device: torch.device = torch.device("cpu")
    """The device this process trains on."""

    @property
    def is_main(self) -> bool:
        """True on the process that logs, evaluates into files and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when a process group is running (world_size > 1)."""
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are present."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(requested_device: str = "auto", key: str = "--device") -> DistributedContext:
    """Start the process group when launched by torchrun; return this process's context.
    ``key`` names where ``requested_device`` came from, for the error of a bad name."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistributedContext(device=resolve_device(requested_device, key=key))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ["WORLD_SIZE"])
    device = resolve_device(requested_device, local_rank, key=key)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def shutdown() -> None:
    """Destroy the process group if one is running."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_student(student: nn.Module, ctx: DistributedContext) -> nn.Module:
    """DDP around the student only (the teacher never needs gradients or communication)."""
    if not ctx.enabled:
        return student
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # Some parameters never reach the loss: the reference's two-branch ASPP keeps weights for its
    # unused 3rd and 4th branches, and source-only training ignores the depth heads.
    return nn.parallel.DistributedDataParallel(student, device_ids=device_ids, find_unused_parameters=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DDP, DataParallel and ``torch.compile`` wrappers (or the module itself)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's wrapper
            model = model._orig_mod
        else:
            return model


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the running process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` in place over all processes of the running process group (a no-op without
    one); returns it."""
    if rank_and_world_size()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_flag(flag: bool, ctx: DistributedContext) -> bool:
    """True if ``flag`` is true on any rank (so every rank takes the same branch)."""
    if not ctx.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(ctx: DistributedContext) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if ctx.enabled:
        dist.barrier()
