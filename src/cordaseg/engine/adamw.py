"""AdamW as DAFormer and MIC train with it (Hoyer et al., "DAFormer", CVPR 2022: its optimiser
settings and per-group learning-rate multipliers).

DAFormer's optimiser is ``torch.optim.AdamW(lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)``
built by mmcv with ``custom_keys``: ``head`` at ``lr_mult=10``, ``norm`` and ``pos_block`` at
``decay_mult=0``. mmcv applies the first matching key of the longest-first list (``pos_block``,
``head``, ``norm``), so the decoder trains at 10x with weight decay and only the encoder's layer
norms lose their decay. Here the groups are those of :func:`cordaseg.models.corda.param_groups`
with ``multiplicity="once"``: ``backbone`` at 1x, ``backbone_norm`` (the encoder's layer norms,
with ``optim.no_decay_norms``) at 1x with weight decay 0, and ``heads`` at ``optim.head_lr_mult``
x. Each carries ``lr_mult`` (the schedule sets ``lr = lr_i * lr_mult``), ``name`` and
``multiplicity`` 1; the groups without a ``weight_decay`` key take ``optim.weight_decay``.

The state dict is PyTorch's AdamW state (``step``, ``exp_avg``, ``exp_avg_sq`` per tensor) and
resumes exactly through ``load_state_dict``.
"""

from __future__ import annotations

import torch
from torch import nn

from cordaseg.models.corda import param_groups


def build_adamw(model: nn.Module, lr: float, head_lr_mult: float, weight_decay: float,
                betas: tuple[float, float], eps: float, no_decay_norms: bool = False,
                flags: dict[str, bool | None] | None = None) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over the 1x backbone / ``head_lr_mult`` x head groups (module
    docstring); ``flags``: its ``fused`` / ``foreach`` arguments."""
    groups = param_groups(model, lr, head_lr_mult, "once", no_decay_norms=no_decay_norms)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                             **(flags or {}))
