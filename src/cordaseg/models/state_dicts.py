"""Checks shared by every weight import: a state dict fills a model exactly, or the refusal names
the keys (:mod:`cordaseg.models.convert`, :mod:`cordaseg.models.convert_mmseg`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cordaseg.errors import CheckpointError


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix that DataParallel / DDP add to every key."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def check_keys(out: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], unused: list[str],
               what: str) -> None:
    """Refuse, naming the keys, a state that leaves a ``target`` key unfilled, has ``unused`` keys,
    or a shape that differs from the target's."""
    out = {k: v for k, v in out.items() if k in target}
    missing = [k for k in target if k not in out]
    wrong = [
        f"{k} {tuple(out[k].shape)} != {tuple(target[k].shape)}"
        for k in out
        if tuple(out[k].shape) != tuple(target[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model key(s) not filled: {', '.join(missing[:5])}")
    if unused:
        problems.append(f"{len(unused)} key(s) not used: {', '.join(unused[:5])}")
    if wrong:
        problems.append(f"shape mismatch: {'; '.join(wrong[:5])}")
    if problems:
        raise CheckpointError(f"{what} does not fit the model: " + " | ".join(problems))
