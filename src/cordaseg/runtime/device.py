"""The one device resolver of the project: what ``--device`` and ``run.device`` mean."""

from __future__ import annotations

import torch

from cordaseg.config import ConfigError


def resolve_device(requested: str, local_rank: int = 0, key: str = "--device") -> torch.device:
    """``"auto"`` -> this rank's CUDA device if there is one, else the CPU; ``"cuda"`` -> this
    rank's CUDA device. A name that is not a device, or a CUDA device this machine lacks, is a
    ConfigError naming ``key`` (the option or config key the name came from)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{key}: {requested!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"{key}: {requested!r} is not supported here (auto, cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError(f"{key}: {requested!r} asks for a GPU, but {why}; use cpu (or auto)")
    index = local_rank if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ConfigError(f"{key}: {requested!r} asks for CUDA device {index}, but this machine has "
                          f"{torch.cuda.device_count()}")
    return torch.device("cuda", index)
