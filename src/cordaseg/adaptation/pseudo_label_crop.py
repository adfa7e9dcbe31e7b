"""Pseudo-label row crop (Hoyer et al., "DAFormer", CVPR 2022: ``pseudo_weight_ignore_top`` /
``pseudo_weight_ignore_bottom`` in its ``mmseg/models/uda/dacs.py``).

Cityscapes frames have rectification artefacts along the top and the ego car along the bottom;
DAFormer does not trust pseudo-labels there. At its 512x512 crops of the half-resolution frame
(the full crop height), the target pixel weight is 0 in the top 15 and the bottom 120 rows::

    keep[r] = 0 if r < top or r >= H - bottom else 1          rows r of the crop, (H,)
    w_target = w_conf_target * keep                            (B, H, W)
    w_mixed  = mask * 1 + (1 - mask) * w_target                source pixels keep weight 1

Because the crop spans the frame's full height, those rows are the frame's own; for other crops
the rows are those of the crop, as in DAFormer.
"""

from __future__ import annotations

import torch


def row_keep(height: int, top: int, bottom: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(H,) float: 0 in the ``top`` first and ``bottom`` last rows, 1 elsewhere."""
    rows = torch.arange(height, device=device)
    return ((rows >= top) & (rows < height - bottom)).to(torch.float32)


def crop_target_weight(weight: torch.Tensor, mask: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
    """(B, H, W) pixel weight with the target pixels (``mask`` 0) of the cropped rows set to 0."""
    keep = row_keep(weight.shape[-2], top, bottom, weight.device).to(weight.dtype)[:, None]  # (H, 1)
    pasted = mask.to(weight.dtype)
    return weight * (pasted + (1 - pasted) * keep)


def target_pseudo_weight(fraction: torch.Tensor, shape: tuple[int, int, int], top: int, bottom: int) -> torch.Tensor:
    """(B, H, W) weight of the unmixed target's pseudo-labels: the confidence fraction, 0 in the cropped rows."""
    keep = row_keep(shape[-2], top, bottom, fraction.device)[:, None]  # (H, 1)
    return (fraction.to(torch.float32) * keep).expand(shape)
