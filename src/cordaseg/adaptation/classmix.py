"""ClassMix (docs/method.md, "Training step", step 4), vectorised over the batch.

For each source/target pair k: take the label values present in the source label (the ignore
value counts as a class, as in the reference), choose ceil(n/2) of them at random without
replacement, and paste the source pixels of those classes onto the target. The choice is made on
the device from per-value scores (:mod:`cordaseg.adaptation.draws`), with no per-image Python
loop and no host-device sync.
"""

from __future__ import annotations

import torch

from cordaseg.adaptation.draws import NUM_LABEL_VALUES


def class_presence(label: torch.Tensor, ignore_index: int, ignore_as_class: bool) -> torch.Tensor:
    """(B, H, W) long labels with values in 0..255 -> (B, 256) bool: which values occur in each image."""
    batch = label.shape[0]
    flat = label.reshape(batch, -1)  # (B, H*W)
    present = torch.zeros(batch, NUM_LABEL_VALUES, dtype=torch.bool, device=label.device)
    present.scatter_(1, flat, True)
    if not ignore_as_class:
        present[:, ignore_index] = False
    return present


def choose_classes(present: torch.Tensor, class_scores: torch.Tensor) -> torch.Tensor:
    """(B, 256) presence and uniform scores -> (B, 256) bool: the ceil(n/2) present values with lowest score."""
    scores = class_scores.masked_fill(~present, 2.0)  # absent values sort last (scores are < 1)
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, 256): position of each value in the sorted order
    n_present = present.sum(dim=1, keepdim=True)  # (B, 1)
    n_chosen = (n_present + 1) // 2  # ceil(n / 2)
    return present & (rank < n_chosen)


def classmix_mask(
    source_label: torch.Tensor, class_scores: torch.Tensor, ignore_index: int, ignore_as_class: bool = True
) -> torch.Tensor:
    """(B, H, W) source labels -> (B, H, W) float mask, 1 where the source pixel is pasted."""
    present = class_presence(source_label, ignore_index, ignore_as_class)
    chosen = choose_classes(present, class_scores)  # (B, 256)
    batch = source_label.shape[0]
    mask = chosen.gather(1, source_label.reshape(batch, -1))  # (B, H*W)
    return mask.reshape(source_label.shape).to(torch.float32)


def mix(mask: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mask * source + (1 - mask) * target, with the (B, H, W) mask broadcast over channels.

    Float tensors are blended arithmetically as in the reference; integer tensors (labels) are
    selected, which gives the same values without a round trip through float.
    """
    if mask.dim() < source.dim():
        mask = mask.unsqueeze(1)  # (B, 1, H, W)
    if source.is_floating_point():
        mask = mask.to(source.dtype)
        return mask * source + (1 - mask) * target
    return torch.where(mask.bool(), source, target)
